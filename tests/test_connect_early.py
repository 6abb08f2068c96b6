"""connect() keeps trying a server that is still starting, on every backend, until its timeout.

A service and its server often start together (compose, a pod restart): the port is closed,
then open before the server answers, then serving. Each test calls ``connect()`` before the
server process exists, starts the server while ``connect()`` waits, and expects a working
coordinator; and against a port nobody ever opens, ``Unavailable`` once the timeout ran out.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import pytest

import coordination
from coordination import Unavailable
from coordination.testing.servers import (
    ConsulProcess,
    EtcdProcess,
    ServerProcess,
    ZooKeeperProcess,
    free_port,
)

asyncio = pytest.mark.asyncio

SERVERS: dict[str, Callable[[], ServerProcess]] = {
    "zookeeper": lambda: ZooKeeperProcess(tick_time_ms=100),
    "etcd3.4": lambda: EtcdProcess(version="3.4"),
    "etcd3.5": lambda: EtcdProcess(version="3.5"),
    "consul": lambda: ConsulProcess(session_ttl_min="1s"),
}
OPTIONS = {"consul": {"lock_delay": 3.0}}


@asyncio
@pytest.mark.parametrize("kind", list(SERVERS))
async def test_connect_waits_for_a_server_that_is_starting(
    kind: str, scaled: Callable[[float], float]
) -> None:
    server = SERVERS[kind]()  # its ports are chosen now; nothing listens on them yet
    server.start_timeout = scaled(server.start_timeout)
    # connect()'s timeout is how long it waits for the server to start: scaled like the start.
    options = {"ttl": 3.0, "timeout": scaled(60.0), **OPTIONS.get(kind.rstrip(".345"), {})}
    try:
        connected = anyio.Event()
        started_at: list[float] = []

        async def start_later() -> None:
            await anyio.sleep(0.3)  # connect() is refused meanwhile
            assert not connected.is_set()
            started_at.append(time.monotonic())
            await anyio.to_thread.run_sync(server.start)

        async with anyio.create_task_group() as tg:
            tg.start_soon(start_later)
            async with coordination.connect(f"{server.url}/early", **options) as coord:
                connected.set()
                assert started_at, "connected before the server was started"
                held = await coord.lock("ready").acquire(timeout=scaled(10))
                assert await coord.config("ready").set(b"yes") > 0
                await held.release()
    finally:
        server.close()


@asyncio
@pytest.mark.parametrize("scheme", ["zookeeper", "etcd", "consul"])
async def test_a_server_that_never_comes_is_unavailable_after_the_timeout(
    scheme: str, scaled: Callable[[float], float]
) -> None:
    options = {"ttl": 3.0, "timeout": 1.5, **OPTIONS.get(scheme, {})}
    start = time.monotonic()
    with pytest.raises(Unavailable) as info:
        async with coordination.connect(f"{scheme}://127.0.0.1:{free_port()}/never", **options):
            pass
    elapsed = time.monotonic() - start
    assert 1.0 <= elapsed <= scaled(4.0), f"gave up after {elapsed:.2f}s with a 1.5s timeout"
    assert info.value.__cause__ is not None, "the client's own error is kept as __cause__"
