"""A real ZooKeeper server for the ZooKeeper backend's tests, and the fixtures they share."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio
import pytest
from kazoo.client import KazooClient  # type: ignore[import-untyped]

from coordination import Capability, Coordinator, HeldLock, Lock
from coordination._url import parse_url
from coordination.abc import Kind
from coordination.testing import CoordinationFixtures, Harness
from coordination.testing.holder import HolderProcess
from coordination.testing.plugin import share_server
from coordination.testing.servers import ServerProcess, ZooKeeperProcess, cache_dir, find_java
from coordination_zookeeper import ZooKeeperBackend
from coordination_zookeeper._client import NoNode, ZooKeeperClient
from coordination_zookeeper._session import ZooKeeperSession, queue_order

from . import curator_peer

T = TypeVar("T")

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


async def expire(coord: Coordinator, scaled: Callable[[float], float], session_id: str | None = None) -> None:
    """End ``coord``'s lock session from outside; return once its client knows it expired.
    ``scaled``: the test's fixture (or a harness's ``t``), for the waits."""
    await expire_client(backend_session(coord, session_id).client, scaled)


async def expire_client(client: ZooKeeperClient, scaled: Callable[[float], float]) -> None:
    """End ``client``'s ZooKeeper session from outside; return once the client saw it end."""
    await client.expire_from_outside(scaled(3))


def watches_by_session(server: ZooKeeperProcess, timeout: float) -> dict[str, set[str]]:
    """The server's watch table (``wchc``): session id -> watched paths."""
    table: dict[str, set[str]] = {}
    session = ""
    for line in server.four_letter_word("wchc", timeout).splitlines():
        if line.startswith("0x"):
            session = line.strip()
            table[session] = set()
        elif line.strip():
            table[session].add(line.strip())
    return table


class ZooKeeperFixtures(CoordinationFixtures):
    """The conformance and fault suites' fixtures on the real server above."""

    # ZooKeeper has no call to end another client's session; a coordinator can end its own
    # (coord.expire_session attaches to it from a second connection and closes it).
    fixture_capabilities = frozenset({Capability.EXPIRE_SESSION})

    @pytest.fixture
    def coordination_url(self, zookeeper_server: ZooKeeperProcess) -> str:
        return zookeeper_server.url

    @pytest.fixture
    def server(self, zookeeper_server: ZooKeeperProcess) -> ZooKeeperProcess:
        return zookeeper_server

    async def expire_session(self, harness: Harness, coord: Coordinator, session_id: str) -> None:
        await coord.expire_session(session_id)

    def new_server(self, harness: Harness) -> ServerProcess:
        return ZooKeeperProcess(tick_time_ms=TICK_MS, start_timeout=harness.t(60))

    async def watches(self, harness: Harness, coord: Coordinator) -> int:
        """The watches the server holds, data and child watches (``mntr``'s
        ``zk_watch_count``; ``wchc`` lists data watches only)."""
        assert isinstance(harness.server, ZooKeeperProcess)
        report = await anyio.to_thread.run_sync(harness.server.four_letter_word, "mntr", harness.t(5))
        counts = dict(line.split("\t", 1) for line in report.splitlines() if "\t" in line)
        return int(counts["zk_watch_count"])

    async def remove_owner(self, harness: Harness, kind: Kind, name: str) -> bool:
        """Delete the first contender node under the name with kazoo, as an operator would."""
        assert isinstance(harness.server, ZooKeeperProcess)
        server = harness.server
        parent = f"/{parse_url(harness.url).namespace}/{name}"

        def delete() -> bool:
            with started_kazoo(server, harness.t(15)) as client:
                nodes = queue_order(client.get_children(parent))
                if nodes:
                    client.delete(f"{parent}/{nodes[0]}")
                return bool(nodes)

        return await anyio.to_thread.run_sync(delete)

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


# -- peers: kazoo (threads) and Curator (a Java process) -----------------------------------------


@pytest.fixture
def kazoo(zookeeper_server: ZooKeeperProcess, scaled: Callable[[float], float]) -> Iterator[KazooClient]:
    with started_kazoo(zookeeper_server, scaled(15)) as client:
        yield client


@contextlib.contextmanager
def started_kazoo(server: ZooKeeperProcess, start_timeout: float) -> Iterator[KazooClient]:
    """A kazoo client of ``server``, started (within ``start_timeout``), stopped at the end."""
    client = KazooClient(hosts=server.address, timeout=5.0)
    client.start(timeout=start_timeout)
    try:
        yield client
    finally:
        client.stop()
        client.close()


async def in_thread(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await anyio.to_thread.run_sync(partial(func, *args, **kwargs))


async def within(seconds: float, awaitable: Awaitable[T], what: str) -> T:
    """``awaitable``'s result, or the test fails after ``seconds`` (give them scaled)."""
    with anyio.move_on_after(seconds):
        return await awaitable
    pytest.fail(f"{what} did not happen within {seconds:g}s")


async def until_contenders(
    kazoo: KazooClient, path: str, count: int, scaled: Callable[[float], float]
) -> None:
    async def poll() -> None:
        while len(await in_thread(kazoo.get_children, path)) != count:  # noqa: ASYNC110 - polls the server
            await anyio.sleep(0.02)

    await within(scaled(5), poll(), f"{count} contenders under {path}")


def znode(zk_url: str, name: str) -> str:
    """The znode of lock or election ``name`` under ``zk_url``'s namespace (what a peer uses)."""
    return "/" + zk_url.split("/", 3)[3] + "/" + name


async def acquire_once_released(
    lock: Lock,
    kazoo: KazooClient,
    path: str,
    release: Callable[[], Awaitable[object]],
    scaled: Callable[[float], float],
    peer: str,
) -> HeldLock:
    """``lock.acquire()`` while ``peer`` holds ``path``: it must wait (queued behind, not
    holding) until ``release()`` lets it in; the lock it then holds."""
    got: list[HeldLock] = []

    async def acquire() -> None:
        got.append(await lock.acquire())

    async with anyio.create_task_group() as tg:
        tg.start_soon(acquire)
        await until_contenders(kazoo, path, 2, scaled)
        assert not got, f"the SDK must wait while {peer} holds"
        await release()
    (held,) = got
    return held


@pytest.fixture(scope="session")
def curator_command() -> list[str]:
    """How to run the Curator peer (tests/zookeeper/curator): ``$COORDINATION_CURATOR_PEER``
    (the folder the install script printed), else built into the cache now. A peer that
    cannot be built fails the tests, never skips them."""
    given = os.environ.get("COORDINATION_CURATOR_PEER")
    folder = Path(given) if given else curator_peer.build(cache_dir())
    return curator_peer.command(folder, find_java())


class CuratorPeer(Protocol):
    def __call__(
        self, path: str, recipe: str, *options: str, label: str = "curator"
    ) -> contextlib.AbstractAsyncContextManager[HolderProcess]: ...


@pytest.fixture
def curator(zookeeper_server: ZooKeeperProcess, curator_command: list[str]) -> CuratorPeer:
    """``async with curator(path, "mutex" | "selector" | "latch", *options) as peer``: a
    Curator client in its own JVM holding that recipe on ``path`` (a znode path, without
    the URL), reporting in the holder protocol (see tests/zookeeper/curator)."""

    @contextlib.asynccontextmanager
    async def peer(
        path: str, recipe: str, *options: str, label: str = "curator"
    ) -> AsyncIterator[HolderProcess]:
        command = [*curator_command, zookeeper_server.address, path, "--recipe", recipe, *options]
        async with HolderProcess.run(command, label=label, commands="--commands" in options) as process:
            yield process

    return peer


async def curator_participants(
    curator_command: list[str], zookeeper_server: ZooKeeperProcess, path: str, recipe: str, timeout: float
) -> list[tuple[bool, str]]:
    """Who Curator counts on ``path``, in its order: (is owner, participant id) as the
    ``getParticipants()`` of a LeaderSelector or LeaderLatch return them, or for a mutex its
    ``getParticipantNodes()`` with their data as the id."""
    command = [*curator_command, zookeeper_server.address, path, "--recipe", recipe, "--query"]
    with anyio.fail_after(timeout):
        result = await anyio.run_process(command, check=True)
    found = []
    for line in result.stdout.decode().splitlines():
        if line.startswith("participant "):
            _, leader, participant = line.split(" ", 2)
            found.append((leader == "1", participant))
    return found
