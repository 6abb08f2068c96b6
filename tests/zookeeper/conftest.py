"""A real ZooKeeper server for the ZooKeeper backend's tests, and the fixtures they share."""

from __future__ import annotations

import contextlib
import struct
import uuid
from collections.abc import Callable, Collection, Iterator
from typing import Any

import anyio
import pytest
from aiozk import protocol  # type: ignore[import-untyped]

from coordination import Capability, Coordinator
from coordination.testing import CoordinationFixtures, Harness
from coordination.testing.plugin import share_server
from coordination.testing.servers import ServerProcess, ZooKeeperProcess
from coordination_zookeeper import ZooKeeperBackend
from coordination_zookeeper._client import NoNode, ZooKeeperClient
from coordination_zookeeper._session import ZooKeeperSession

TICK_MS = 100  # short ticks: sessions of a few hundred milliseconds are allowed, expiry is prompt


@pytest.fixture(scope="session")
def zookeeper_server(
    request: pytest.FixtureRequest, session_scaled: Callable[[float], float]
) -> Iterator[ZooKeeperProcess]:
    """One standalone ZooKeeper for the whole run. A missing server fails the run, never skips it.
    Shared: brought back if a test leaves it dead, and that test fails."""
    with ZooKeeperProcess(tick_time_ms=TICK_MS, start_timeout=session_scaled(60)) as server:
        yield share_server(request, server)


def backend_session(coord: Coordinator, session_id: str | None = None) -> ZooKeeperSession:
    """The backend session behind ``coord`` (its current one, or the one with ``session_id``)."""
    backend = coord._engine.backend
    assert isinstance(backend, ZooKeeperBackend)
    session_id = session_id or coord.session_id
    assert session_id is not None
    return backend._sessions[session_id]


async def close_session_from_outside(
    host: str, port: int, session_id: int, password: bytes, scaled: Callable[[float], float]
) -> None:
    """The classic way to expire a session: attach to it from a second connection, then close it.

    Both requests go out in one write, so the server has the close queued before the victim
    (whose connection it drops on our attach) can reconnect and take the session back.
    """

    def frame(payload: bytes) -> bytes:
        return struct.pack("!i", len(payload)) + payload

    attach = protocol.ConnectRequest(
        protocol_version=0,
        last_seen_zxid=0,
        timeout=10_000,
        session_id=session_id,
        password=password,
        read_only=False,
    )
    close = protocol.CloseRequest()
    async with await anyio.connect_tcp(host, port) as stream:
        await stream.send(frame(attach.serialize()) + frame(close.serialize(1)))
        with anyio.move_on_after(scaled(3)):  # the server hangs up once the session is closed
            try:
                while await stream.receive():
                    pass
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass


async def expire(coord: Coordinator, scaled: Callable[[float], float], session_id: str | None = None) -> None:
    """End ``coord``'s lock session from outside; return once its client knows it expired.
    ``scaled``: the test's fixture (or a harness's ``t``), for the waits."""
    session = backend_session(coord, session_id)
    await expire_client(session.client, scaled)


async def expire_client(client: ZooKeeperClient, scaled: Callable[[float], float]) -> None:
    """End ``client``'s ZooKeeper session from outside; return once the client saw it end."""
    host, port = client.conn.host, client.conn.port
    sid, password = client.session_id, client.password
    assert sid is not None

    def ended() -> bool:
        # Expired, replaced (renew=True), or closed by the coordinator after it lost the session.
        return client.expired or client.session_id != sid or client.closing

    # Should the victim still win the race and take its session back, repeat (as kazoo's own
    # test harness does).
    for _ in range(5):
        await close_session_from_outside(host, port, sid, password, scaled)
        with anyio.move_on_after(scaled(3)):
            while not ended():
                await client.changed()
            return
    raise AssertionError(f"could not expire ZooKeeper session 0x{sid:x}")


class ZooKeeperFixtures(CoordinationFixtures):
    """The conformance and fault suites' fixtures on the real server above."""

    # ZooKeeper has no call to end another client's session; this fixture attaches to the
    # session from a second connection and closes it (see expire_client).
    fixture_capabilities = frozenset({Capability.EXPIRE_SESSION})

    @pytest.fixture
    def coordination_url(self, zookeeper_server: ZooKeeperProcess) -> str:
        return zookeeper_server.url

    @pytest.fixture
    def server(self, zookeeper_server: ZooKeeperProcess) -> ZooKeeperProcess:
        return zookeeper_server

    async def expire_session(self, harness: Harness, coord: Coordinator, session_id: str) -> None:
        await expire(coord, harness.t, session_id)

    def new_server(self, harness: Harness) -> ServerProcess:
        return ZooKeeperProcess(tick_time_ms=TICK_MS, start_timeout=harness.t(60))

    async def leftovers(self, harness: Harness, session_ids: Collection[str] = ()) -> list[str]:
        """Ephemeral znodes under the namespace (contenders), and sessions the server still keeps."""
        found = []
        async with harness.session() as coord:
            backend = coord._engine.backend
            assert isinstance(backend, ZooKeeperBackend)
            pending = ["/" + coord.namespace]
            while pending:
                path = pending.pop()
                stat = await backend.client.exists(path)
                if stat is None:
                    continue
                if stat.ephemeral_owner:
                    found.append(f"znode {path} (session 0x{stat.ephemeral_owner:x})")
                with contextlib.suppress(NoNode):
                    pending += [f"{path}/{child}" for child in await backend.client.children(path)]
        if session_ids:
            assert isinstance(harness.server, ZooKeeperProcess)
            dump = await anyio.to_thread.run_sync(harness.server.four_letter_word, "dump", harness.t(5))
            found += [f"session {session_id}" for session_id in session_ids if session_id in dump]
        return found


@pytest.fixture
def zk_url(zookeeper_server: ZooKeeperProcess) -> str:
    """The server's URL with a fresh namespace, for the backend's own tests."""
    return f"{zookeeper_server.url}/test-{uuid.uuid4().hex[:12]}"


def options(**overrides: Any) -> dict[str, Any]:
    return {"ttl": 3.0, "timeout": 5.0, **overrides}
