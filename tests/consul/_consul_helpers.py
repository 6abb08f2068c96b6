"""Helpers of the Consul tests: raw HTTP reads that bypass the SDK, and ``consul lock`` runs."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from coordination.testing.servers import ConsulProcess, find_consul


def _get(url: str, timeout: float) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code), None


async def raw_kv(
    server: ConsulProcess, key: str, *, scaled: Callable[[float], float]
) -> dict[str, Any] | None:
    """The KV pair of ``key`` straight from the agent's HTTP API (consistent), or ``None``.
    ``scaled``: the test's fixture (the request's timeout is a scaled 10 s)."""
    url = f"{server.http_url}/v1/kv/{key}?consistent"
    status, body = await anyio.to_thread.run_sync(_get, url, scaled(10))
    if status == 404:
        return None
    assert status == 200, status
    pair: dict[str, Any] = body[0]
    pair["Value"] = base64.b64decode(pair["Value"]) if pair.get("Value") else b""
    return pair


async def raw_session(
    server: ConsulProcess, session_id: str, *, scaled: Callable[[float], float]
) -> dict[str, Any] | None:
    """The session ``session_id`` as the agent reports it, or ``None`` if it does not exist.
    ``scaled``: the test's fixture (the request's timeout is a scaled 10 s)."""
    url = f"{server.http_url}/v1/session/info/{session_id}"
    status, body = await anyio.to_thread.run_sync(_get, url, scaled(10))
    assert status == 200, status
    return body[0] if body else None


def pair_token(pair: dict[str, Any]) -> int:
    """The fencing token the SDK derives from a lock key (``CreateIndex + LockIndex - 1``)."""
    return int(pair["CreateIndex"]) + int(pair["LockIndex"]) - 1


class ConsulLockCLI:
    """``consul lock [options] PREFIX`` running a child that says LOCKED and waits for a line.

    ``async with`` starts it; :meth:`locked` waits for the child to run (the lock is held);
    :meth:`finish` lets the child exit, so that ``consul lock`` releases the lock and exits.
    ``scaled``: the test's fixture (at the end, ``consul lock`` gets a scaled 10 s to exit).
    """

    def __init__(
        self, env: dict[str, str], prefix: str, *options: str, scaled: Callable[[float], float]
    ) -> None:
        self.scaled = scaled
        self.env = env
        self.prefix = prefix
        self.options = options
        self.process: Process | None = None
        self._stdout: BufferedByteReceiveStream | None = None

    async def __aenter__(self) -> ConsulLockCLI:
        command = [
            str(find_consul()),
            "lock",
            "-shell=false",
            "-pass-stdin",
            *self.options,
            self.prefix,
            "sh",
            "-c",
            "echo LOCKED; read line; echo DONE",
        ]
        self.process = await anyio.open_process(command, env=self.env)
        assert self.process.stdout is not None
        self._stdout = BufferedByteReceiveStream(self.process.stdout)
        return self

    async def locked(self) -> None:
        """Wait until the child runs, i.e. ``consul lock`` holds the lock."""
        assert self._stdout is not None
        line = await self._stdout.receive_until(b"\n", 4096)
        assert line == b"LOCKED", line

    async def finish(self) -> int:
        """Let the child exit; ``consul lock`` releases (and deletes) the key. Its exit code."""
        assert self.process is not None
        assert self.process.stdin is not None
        await self.process.stdin.send(b"go\n")
        return await self.process.wait()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        process = self.process
        if process is None:
            return
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.terminate()  # consul lock stops its child and releases the lock
                with anyio.move_on_after(self.scaled(10)):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            await process.aclose()
