"""What the etcd backend's tests share: coordinators, keys to wait for, subprocess lines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from anyio.abc import ByteReceiveStream, Process

import coordination
from coordination import Coordinator
from coordination_etcd import EtcdBackend
from coordination_etcd._client import EtcdClient, range_request

OPTIONS: dict[str, Any] = {"ttl": 3.0, "timeout": 5.0}


@asynccontextmanager
async def sessions(url: str, n: int, **options: Any) -> AsyncIterator[list[Coordinator]]:
    """``n`` open coordinators on ``url``, each with its own session."""
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(coordination.connect(url, **{**OPTIONS, **options}))
            for _ in range(n)
        ]


def client_of(coord: Coordinator) -> EtcdClient:
    """The etcd client behind ``coord``."""
    backend = coord._engine.backend
    assert isinstance(backend, EtcdBackend)
    return backend.client


async def wait_for_keys(client: EtcdClient, prefix: bytes, count: int) -> list[bytes]:
    """Wait (on a watch) until at least ``count`` keys exist under ``prefix``; return them."""
    while True:
        reply = await client.range(range_request(prefix, prefix=True, order="first", keys_only=True))
        if len(reply.kvs) >= count:
            return [kv.key for kv in reply.kvs]
        async with client.watch(prefix, prefix=True, start_revision=reply.header.revision + 1) as events:
            await events.__anext__()


class Lines:
    """The output of a subprocess, a line at a time."""

    def __init__(self, stream: ByteReceiveStream | None) -> None:
        assert stream is not None
        self._stream = stream
        self._buffer = b""

    async def next(self) -> str:
        while b"\n" not in self._buffer:
            self._buffer += await self._stream.receive()
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()


async def stop(process: Process) -> int:
    """SIGTERM ``process`` (etcdctl unlocks or resigns then) and wait for it to exit."""
    if process.returncode is None:
        process.terminate()
    return await process.wait()
