"""What the ZooKeeper backend promises beyond the conformance suite, on a real server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, aclosing
from typing import Any, TypeVar

import anyio
import pytest
from aiozk import protocol  # type: ignore[import-untyped]

import coordination
from coordination import (
    Capability,
    Coordinator,
    InvalidURL,
    SessionState,
    Unavailable,
    Versioned,
)
from coordination.testing.proxy import FaultProxy
from coordination.testing.servers import ZooKeeperProcess, free_port
from coordination_zookeeper import ZooKeeperBackend
from coordination_zookeeper._session import node_prefix, queue_order

from .conftest import TICK_MS, backend_session, expire, expire_client, options, watches_by_session, within

T = TypeVar("T")


async def until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    """Poll a condition on the server until it holds (for server state no event reports)."""

    async def poll() -> None:
        while not await check():  # noqa: ASYNC110 - no event reports this server state
            await anyio.sleep(0.02)

    await within(seconds, poll(), what)


def namespace(url: str) -> str:
    return url.split("/", 3)[3]


def reads(coord: Coordinator) -> Any:
    backend = coord._engine.backend
    assert isinstance(backend, ZooKeeperBackend)
    return backend.client


def wakeups(coords: list[Coordinator]) -> int:
    """The wake-ups counted by the coordinators' backends (``Backend.wakeups``), summed."""
    return sum(coord._engine.backend.wakeups or 0 for coord in coords)


# -- the contender queue ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_release_wakes_only_the_next_waiter(
    zookeeper_server: ZooKeeperProcess,
    zk_url: str,
    monkeypatch: pytest.MonkeyPatch,
    scaled: Callable[[float], float],
) -> None:
    """Each waiter watches only the node ahead of it: a release wakes one waiter, not all.
    Its backend counts that wake-up (``Backend.wakeups``): none while the lock is held, one
    per release in all."""
    assert Capability.SINGLE_WAKEUP in ZooKeeperBackend.capabilities
    parent = f"/{namespace(zk_url)}/herd"
    n = 4
    async with AsyncExitStack() as stack:
        holder = await stack.enter_async_context(coordination.connect(zk_url, **options()))
        waiters = [
            await stack.enter_async_context(coordination.connect(zk_url, **options(ttl=30))) for _ in range(n)
        ]
        held = await holder.lock("herd").acquire()
        acquired = [anyio.Event() for _ in range(n)]
        leave = [anyio.Event() for _ in range(n)]

        async def wait(i: int) -> None:
            async with waiters[i].lock("herd"):
                acquired[i].set()
                await leave[i].wait()

        queued = 1

        async def all_queued() -> bool:
            return len(await reads(holder).children(parent)) == queued

        async with anyio.create_task_group() as tg:
            for i in range(n):  # one at a time, so that the queue order is known
                tg.start_soon(wait, i)
                queued += 1
                await until(all_queued, scaled(5), f"waiter {i} queued")
            nodes = queue_order(await reads(holder).children(parent))

            def all_watching() -> bool:
                table = watches_by_session(zookeeper_server, scaled(5))
                return all(table.get(w.session_id or "") for w in waiters)

            async def watching() -> bool:
                return all_watching()

            await until(watching, scaled(5), "every waiter watching")
            table = watches_by_session(zookeeper_server, scaled(5))
            for i, waiter in enumerate(waiters):
                watched = table[waiter.session_id or ""]
                assert watched == {f"{parent}/{nodes[i]}"}, "each waiter watches only its predecessor"
            assert not any(parent in paths for paths in table.values()), "nobody watches the queue itself"
            await anyio.sleep(scaled(0.5))  # idle: a waiter that polled would have woken
            assert wakeups(waiters) == 0, "a waiter woke while nothing changed"

            # Count the requests each waiter sends from here on (but keepalives, on "/").
            requests_sent = [0] * n
            for i, waiter in enumerate(waiters):
                client = backend_session(waiter).client
                send = client._send_now

                def counting(*requests: Any, _send: Any = send, _i: int = i) -> Any:
                    requests_sent[_i] += sum(getattr(r, "path", "/") != "/" for r in requests)
                    return _send(*requests)

                monkeypatch.setattr(client, "_send_now", counting)

            await held.release()
            await within(scaled(5), acquired[0].wait(), "the next waiter acquiring")
            # A round trip on each waiter's connection: any watch event the server sent it
            # arrived before this reply, and the wait it woke has run and sent its requests.
            for waiter in waiters:
                await backend_session(waiter).client.exists("/")
            assert requests_sent[0] >= 1
            assert requests_sent[1:] == [0] * (n - 1), "a release must wake only the next waiter"
            assert [waiter._engine.backend.wakeups for waiter in waiters] == [1] + [0] * (n - 1)
            for i in range(n):
                leave[i].set()
                if i + 1 < n:
                    await within(scaled(5), acquired[i + 1].wait(), f"waiter {i + 1} acquiring")
                    for waiter in waiters:  # as above: any other wake-up has been counted
                        await backend_session(waiter).client.exists("/")
                    assert wakeups(waiters) == i + 2, "each release wakes only the next waiter"
        assert [waiter._engine.backend.wakeups for waiter in waiters] == [1] * n


def test_every_known_naming_is_a_contender_in_sequence_order() -> None:
    """kazoo's and Curator's nodes count alike, ordered by the sequence ZooKeeper appended;
    other children (a kazoo read lock's, anything else) are not contenders."""
    children = [
        "_c_4f1c2a3e-9d1b-4f4e-8a55-0e6c1a2b3c4d-latch-0000000004",
        "0f3a" * 8 + "__lock__0000000003",
        "_c_8e2d0c1b-1a2b-4c3d-9e8f-7a6b5c4d3e2f-lock-0000000001",
        "ab" * 16 + "__rlock__0000000000",
        "config",
        "ff" * 16 + "__lock__0000000002",
    ]
    assert [child[-10:] for child in queue_order(children)] == [
        "0000000001",
        "0000000002",
        "0000000003",
        "0000000004",
    ]
    assert node_prefix("kazoo", "lock").endswith("__lock__")
    assert node_prefix("curator", "election").startswith("_c_")
    assert node_prefix("curator", "election").endswith("-lock-"), "LeaderSelector's nodes are a mutex's"
    assert node_prefix("latch", "election").endswith("-latch-")
    assert node_prefix("latch", "lock").endswith("-lock-"), (
        "a LeaderLatch is no lock: locks as Curator's mutex"
    )
    assert node_prefix("curator", "lock") != node_prefix("curator", "lock"), "each node its own uuid"
    made = "_c_" + node_prefix("curator", "lock")[3:] + "0000000007"
    assert queue_order([made]) == [made]


def test_naming_option_is_checked_before_any_io() -> None:
    with pytest.raises(InvalidURL, match="naming"):
        coordination.connect("zookeeper://127.0.0.1:1/ns?naming=Curator")


async def assert_one_adopted_node(coord: Coordinator, held: Any, parent: str, mark: str = "__lock__") -> None:
    children = await reads(coord).children(parent)
    assert len(children) == 1, f"an orphan was left: {children}"
    assert children[0].endswith(f"{mark}0000000001"), "the create whose reply was lost makes the node"
    _, stat = await reads(coord).get(f"{parent}/{children[0]}")
    assert held.token == stat.czxid
    assert f"0x{stat.ephemeral_owner:x}" == coord.session_id
    await held.release()
    assert await reads(coord).children(parent) == []


@pytest.mark.asyncio
@pytest.mark.parametrize(("naming", "mark"), [("kazoo", "__lock__"), ("curator", "-lock-")])
async def test_lost_create_reply_leaves_no_orphan(
    zookeeper_server: ZooKeeperProcess, zk_url: str, scaled: Callable[[float], float], naming: str, mark: str
) -> None:
    """The server makes the contender node, and its reply is lost with the connection: the
    client finds the node by its uuid prefix after reconnecting and adopts it (in either
    naming)."""
    parent = f"/{namespace(zk_url)}/orphan"
    async with FaultProxy(zookeeper_server.host, zookeeper_server.port) as proxy:
        url = f"zookeeper://{proxy.address}/{namespace(zk_url)}"
        # A long TTL: no keepalive or heartbeat reply can come before the create's.
        async with coordination.connect(url, ttl=30.0, timeout=5.0, naming=naming) as coord:
            warm = await coord.lock("orphan").acquire()  # the parent exists; the next sequence is 1
            await warm.release()
            connections = proxy.connections
            proxy.drop_next_reply()
            held = await within(scaled(10), coord.lock("orphan").acquire(), "acquiring after a lost reply")
            assert proxy.connections == connections + 1, "the reply was lost with its connection"
            await assert_one_adopted_node(coord, held, parent, mark)


@pytest.mark.asyncio
async def test_create_lost_before_the_server_leaves_no_orphan(
    zk_url: str, monkeypatch: pytest.MonkeyPatch, scaled: Callable[[float], float]
) -> None:
    """The connection dies with the create still unsent: the client finds no node by its
    prefix after reconnecting, and creates it once."""
    parent = f"/{namespace(zk_url)}/unsent"
    async with coordination.connect(zk_url, **options()) as coord:
        warm = await coord.lock("unsent").acquire()
        await warm.release()
        client = backend_session(coord).client
        write = client._write
        dropped: list[Any] = []

        def drop_before_sending(requests: Any) -> Any:
            requests = list(requests)
            if not dropped and any(isinstance(r, protocol.Create2Request) and r.flags & 1 for r in requests):
                dropped.append(requests)
                client._drop(client.conn)  # what is written now fails with the connection
            return write(requests)

        monkeypatch.setattr(client, "_write", drop_before_sending)
        held = await within(scaled(10), coord.lock("unsent").acquire(), "acquiring after a lost create")
        assert dropped, "the fault was not injected"
        await assert_one_adopted_node(coord, held, parent)


@pytest.mark.asyncio
async def test_cancel_while_creating_leaves_no_orphan(
    zookeeper_server: ZooKeeperProcess, zk_url: str, scaled: Callable[[float], float]
) -> None:
    """Cancelled after the server made the node but before its reply arrived: no node stays."""
    parent = f"/{namespace(zk_url)}/cancelled"
    async with (
        FaultProxy(zookeeper_server.host, zookeeper_server.port) as proxy,
        coordination.connect(f"zookeeper://{proxy.address}/{namespace(zk_url)}", ttl=30.0) as coord,
        coordination.connect(zk_url, **options()) as other,
    ):

        async def created() -> bool:
            try:
                return len(await reads(other).children(parent)) == 1
            except Exception:  # the parent does not exist yet
                return False

        async with anyio.create_task_group() as tg:
            proxy.blackhole("downstream")  # requests arrive, replies wait in the proxy
            tg.start_soon(coord.lock("cancelled").acquire)
            await until(created, scaled(5), "the create reaching the server")
            tg.cancel_scope.cancel()
            proxy.heal()  # the clean-up of the cancelled acquire needs its replies
        assert await reads(other).children(parent) == [], "the cancelled contender's node was left behind"
        held = await within(scaled(2), coord.lock("cancelled").try_acquire(), "try_acquire")
        assert held is not None
        await held.release()


# -- sessions ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_negotiated_timeout_is_the_ttl(zookeeper_server: ZooKeeperProcess, zk_url: str) -> None:
    """The server clamps the session timeout; the session's TTL is what it granted."""
    async with coordination.connect(zk_url, ttl=100.0) as big, coordination.connect(zk_url, ttl=0.1) as small:
        assert backend_session(big).ttl == zookeeper_server.max_session_timeout_ms / 1000
        assert backend_session(small).ttl == 2 * TICK_MS / 1000
    async with coordination.connect(zk_url + "?session_timeout=4&ttl=9") as coord:
        assert backend_session(coord).ttl == 4.0


@pytest.mark.asyncio
async def test_disconnect_is_suspended_then_resumed_with_the_lock_kept(
    zookeeper_server: ZooKeeperProcess, zk_url: str, scaled: Callable[[float], float]
) -> None:
    async with FaultProxy(zookeeper_server.host, zookeeper_server.port) as proxy:
        url = f"zookeeper://{proxy.address}/{namespace(zk_url)}"
        async with (
            # A long TTL: no keepalive is due, so only noticing the closed connection itself
            # makes the session SUSPENDED in time.
            coordination.connect(url, ttl=30.0, timeout=5.0) as a,
            coordination.connect(zk_url, **options()) as b,
        ):
            held = await a.lock("partition").acquire()
            session = a.session_id
            async with aclosing(a.states()) as states:
                assert await anext(states) is SessionState.CONNECTED
                proxy.refuse()
                proxy.reset()
                assert await within(scaled(1), anext(states), "SUSPENDED") is SessionState.SUSPENDED
                assert held.held, "a disconnect alone does not lose the lock"
                assert await b.lock("partition").try_acquire() is None
                proxy.heal()
                assert await within(scaled(3), anext(states), "CONNECTED again") is SessionState.CONNECTED
            assert a.session_id == session, "the same ZooKeeper session resumed"
            assert held.held
            await held.release()
            again = await within(scaled(2), b.lock("partition").try_acquire(), "try_acquire")
            assert again is not None
            assert again.token > held.token
            await again.release()


@pytest.mark.asyncio
async def test_stalled_connection_is_replaced_while_the_session_lives(
    zookeeper_server: ZooKeeperProcess, zk_url: str, scaled: Callable[[float], float]
) -> None:
    """The server the client talks to stops answering (its connection stays open, no reset):
    the keepalive notices, and the client moves to another server of the ensemble (here a
    second path to the same server) while the session, and the lock on it, live."""
    host, port = zookeeper_server.host, zookeeper_server.port
    async with FaultProxy(host, port) as first, FaultProxy(host, port) as second:
        url = f"zookeeper://{first.address},{second.address}/{namespace(zk_url)}"
        async with coordination.connect(url, ttl=6.0, timeout=5.0) as a:
            held = await a.lock("stall").acquire()
            session = a.session_id
            client = backend_session(a).client
            stalled, other = (first, second) if client.conn.port == first.port else (second, first)
            async with aclosing(a.states()) as states:
                assert await anext(states) is SessionState.CONNECTED
                stalled.blackhole()
                assert await within(scaled(4), anext(states), "SUSPENDED") is SessionState.SUSPENDED
                assert await within(scaled(3), anext(states), "CONNECTED again") is SessionState.CONNECTED
            assert client.conn.port == other.port
            assert a.session_id == session
            assert held.held
            await held.release()


@pytest.mark.asyncio
async def test_long_disconnect_is_lost_locally_before_the_server_hands_over(
    zookeeper_server: ZooKeeperProcess, zk_url: str, scaled: Callable[[float], float]
) -> None:
    ttl = 3.0
    async with FaultProxy(zookeeper_server.host, zookeeper_server.port) as proxy:
        url = f"zookeeper://{proxy.address}/{namespace(zk_url)}"
        parent = f"/{namespace(zk_url)}/handover"
        async with (
            coordination.connect(url, ttl=ttl, timeout=5.0) as a,
            coordination.connect(zk_url, **options()) as b,
        ):
            held = await a.lock("handover").acquire()
            old_session = a.session_id
            times: dict[str, float] = {}

            async def b_waits() -> None:
                taken = await b.lock("handover").acquire()
                times["b acquired"] = time.monotonic()
                assert taken.token > held.token
                await taken.release()

            async def a_loses() -> None:
                await held.wait_lost()
                times["a lost"] = time.monotonic()

            async def queued() -> bool:
                return len(await reads(b).children(parent)) == 2

            async with anyio.create_task_group() as tg:
                tg.start_soon(b_waits)
                tg.start_soon(a_loses)
                await until(queued, scaled(5), "b queued")
                proxy.refuse()
                proxy.reset()
                cut = time.monotonic()
            assert held.lost
            assert times["a lost"] < times["b acquired"], "the holder must know it lost the lock first"
            assert times["a lost"] - cut <= scaled(ttl), "LOST at the local deadline"
            assert times["b acquired"] - cut >= ttl * 2 / 3, "the server hands over at the session timeout"
            # Reachable again: a new session, opened by the coordinator itself.
            proxy.heal()

            async def new_session() -> bool:
                return a.state is SessionState.CONNECTED and a.session_id not in (None, old_session)

            await until(new_session, scaled(10), "a new session")
            again = await within(scaled(5), a.lock("handover").acquire(), "acquiring on the new session")
            await again.release()


@pytest.mark.asyncio
async def test_watch_delivers_a_change_made_while_disconnected(
    zookeeper_server: ZooKeeperProcess, zk_url: str, scaled: Callable[[float], float]
) -> None:
    async with FaultProxy(zookeeper_server.host, zookeeper_server.port) as proxy:
        url = f"zookeeper://{proxy.address}/{namespace(zk_url)}"
        async with (
            coordination.connect(url, **options()) as watcher,
            coordination.connect(zk_url, **options()) as writer,
        ):
            cfg = writer.config("while-away")
            v1 = await cfg.set(b"1")
            seen: list[Versioned | None] = []
            changed = anyio.Event()

            async def watch() -> None:
                nonlocal changed
                async for item in watcher.config("while-away").watch():
                    seen.append(item)
                    changed.set()

            async def until_seen(expected: Versioned) -> None:
                nonlocal changed
                while not seen or seen[-1] != expected:
                    changed = anyio.Event()
                    await changed.wait()

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await within(scaled(5), until_seen(Versioned(b"1", v1)), "the first item")
                client = reads(watcher)
                proxy.refuse()
                proxy.reset()
                while client.connected:
                    await within(scaled(3), client.changed(), "the watcher noticing the cut")
                await cfg.set(b"2")
                v3 = await cfg.set(b"3")
                proxy.heal()
                await within(scaled(5), until_seen(Versioned(b"3", v3)), "the change made while disconnected")
                tg.cancel_scope.cancel()
            assert [item.value for item in seen if item is not None][-1] == b"3"
            assert seen[0] == Versioned(b"1", v1)


@pytest.mark.asyncio
async def test_watch_and_observe_survive_expiry_of_the_reads_session(
    zk_url: str, scaled: Callable[[float], float]
) -> None:
    """Config and reads use their own session; when it expires a new one replaces it and the
    watches carry on, catching up with what changed meanwhile."""
    async with (
        coordination.connect(zk_url, **options()) as watcher,
        coordination.connect(zk_url, **options()) as writer,
    ):
        cfg = writer.config("renewed")
        v1 = await cfg.set(b"1")
        values: list[Versioned | None] = []
        leaders: list[Any] = []
        changed = anyio.Event()

        async def watch() -> None:
            nonlocal changed
            async for item in watcher.config("renewed").watch():
                values.append(item)
                changed.set()

        async def observe() -> None:
            nonlocal changed
            async for leader in watcher.election("renewed").observe():
                leaders.append(leader)
                changed.set()

        async def until_seen(check: Callable[[], bool], what: str) -> None:
            async def wait() -> None:
                nonlocal changed
                while not check():
                    changed = anyio.Event()
                    await changed.wait()

            await within(scaled(5), wait(), what)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            tg.start_soon(observe)
            await until_seen(lambda: bool(values) and bool(leaders), "the first items")
            client = reads(watcher)
            old = client.session_id
            await expire_client(client, scaled)
            leadership = await writer.election("renewed").campaign(b"w")
            v2 = await cfg.set(b"2")
            await until_seen(lambda: values[-1] == Versioned(b"2", v2), "the watch after the expiry")
            await until_seen(lambda: leaders[-1] is not None, "observe() after the expiry")
            assert client.session_id not in (None, old)
            assert leaders[-1].value == b"w"
            await leadership.resign()
            tg.cancel_scope.cancel()
        assert values[0] == Versioned(b"1", v1)


@pytest.mark.asyncio
async def test_close_leaves_no_task_session_or_node(
    zookeeper_server: ZooKeeperProcess, zk_url: str, scaled: Callable[[float], float]
) -> None:
    before = asyncio.all_tasks()
    parent = f"/{namespace(zk_url)}"
    async with coordination.connect(zk_url, **options()) as coord:
        held = await coord.lock("left/lock").acquire()
        leadership = await coord.election("left/election").campaign(b"x")
        started = anyio.Event()

        async def watching() -> None:
            async for _ in coord.config("left/config").watch():
                started.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watching)
            await within(scaled(5), started.wait(), "the watch")
            tg.cancel_scope.cancel()
        ids = {coord.session_id, reads(coord).session_hex}
    assert held.lost
    assert leadership.lost
    assert asyncio.all_tasks() - before == set(), "closing must leave no task behind"
    dump = zookeeper_server.four_letter_word("dump", scaled(5))
    for session_id in ids:
        assert session_id not in dump, f"session {session_id} is still open on the server"
    async with coordination.connect(zk_url, **options()) as other:
        assert await reads(other).children(f"{parent}/left/lock") == []
        assert await other.election("left/election").leader() is None


@pytest.mark.asyncio
async def test_expired_session_is_replaced(zk_url: str, scaled: Callable[[float], float]) -> None:
    async with coordination.connect(zk_url, **options()) as coord:
        old = coord.session_id
        held = await coord.lock("expired").acquire()
        await expire(coord, scaled)
        await within(scaled(5), held.wait_lost(), "the loss")

        async def replaced() -> bool:
            return coord.state is SessionState.CONNECTED and coord.session_id not in (None, old)

        await until(replaced, scaled(5), "a new session")
        again = await within(scaled(5), coord.lock("expired").acquire(), "acquiring again")
        assert again.token > held.token
        await again.release()


# -- server restarts ------------------------------------------------------


@pytest.mark.asyncio
async def test_lock_survives_a_server_restart_shorter_than_the_session_timeout(
    scaled: Callable[[float], float],
) -> None:
    with ZooKeeperProcess(tick_time_ms=TICK_MS, start_timeout=scaled(60)) as server:
        url = f"{server.url}/restart"
        async with coordination.connect(url, ttl=15.0, timeout=5.0) as a:
            held = await a.lock("restart").acquire()
            session = a.session_id
            async with aclosing(a.states()) as states:
                assert await anext(states) is SessionState.CONNECTED
                await anyio.to_thread.run_sync(server.restart)
                assert await within(scaled(5), anext(states), "SUSPENDED") is SessionState.SUSPENDED
                assert await within(scaled(10), anext(states), "CONNECTED") is SessionState.CONNECTED
            assert a.session_id == session
            assert held.held
            async with coordination.connect(url, ttl=3.0) as b:
                assert await b.lock("restart").try_acquire() is None
            await held.release()


# -- config layout -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_nested_names_read_as_absent_parents(zk_url: str) -> None:
    """A znode made only as the parent of another name has no value; deleting a value whose
    znode has children keeps the children."""
    async with coordination.connect(zk_url, **options()) as coord:
        child = await coord.config("a/b").set(b"child")
        assert await coord.config("a").get() is None
        assert await coord.config("a").delete() is False
        assert await coord.config("a").compare_and_set(b"parent", None) is True
        parent = await coord.config("a").get()
        assert parent is not None
        assert parent.value == b"parent"
        assert await coord.config("a").delete() is True
        assert await coord.config("a").get() is None
        assert await coord.config("a/b").get() == Versioned(b"child", child)
        held = await coord.lock("a/b/c").acquire()  # a lock's znode is not a value
        assert await coord.config("a/b/c").get() is None
        await held.release()


@pytest.mark.asyncio
async def test_version_is_mzxid_and_token_is_czxid(zk_url: str) -> None:
    parent = f"/{namespace(zk_url)}"
    async with coordination.connect(zk_url, **options()) as coord:
        version = await coord.config("v").set(b"x")
        _, stat = await reads(coord).get(f"{parent}/v")
        assert version == stat.mzxid
        held = await coord.lock("t").acquire()
        (node,) = await reads(coord).children(f"{parent}/t")
        _, stat = await reads(coord).get(f"{parent}/t/{node}")
        assert held.token == stat.czxid
        assert (await reads(coord).get(f"{parent}/t/{node}"))[0] == coord.identity.encode()
        await held.release()


# -- URLs and options ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_zk_scheme_and_default_port(zookeeper_server: ZooKeeperProcess) -> None:
    async with coordination.connect(f"zk://{zookeeper_server.address}/alias", **options()) as coord:
        assert coord.backend == "zookeeper"
        assert coord.capabilities == ZooKeeperBackend.capabilities
    coord = coordination.connect("zookeeper://zk1,zk2:2182/ns")
    backend = coord._engine.backend
    assert isinstance(backend, ZooKeeperBackend)
    assert backend._hosts == [("zk1", 2181), ("zk2", 2182)]


@pytest.mark.parametrize(
    "url",
    [
        "zookeeper://:secret@127.0.0.1:2181",
        "zookeeper://u:secret@h?acl=bogus",
        "zookeeper:///ns",
        "zookeeper://h?session_timeout=0",
    ],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(InvalidURL) as info:
        coordination.connect(url)
    assert "secret" not in str(info.value)


@pytest.mark.asyncio
async def test_unreachable_server_is_unavailable(scaled: Callable[[float], float]) -> None:
    start = time.monotonic()
    with pytest.raises(Unavailable):
        async with coordination.connect(f"zookeeper://127.0.0.1:{free_port()}", timeout=1.0):
            pass
    # A refused connection is tried again (the server may be starting) until the timeout.
    assert 0.5 <= time.monotonic() - start < scaled(3)


def test_client_errors_are_mapped_once_at_the_client_layer() -> None:
    """Every error reply becomes a public error in the client, most specific first; only the
    answers the recipes act on (NoNode, NodeExists, BadVersion, NotEmpty) stay aiozk's."""
    from aiozk import exc as zk_exc

    from coordination import CoordinationError, SessionExpired, Unavailable
    from coordination_zookeeper._client import ANSWERS, raise_public

    for error, public in (
        (zk_exc.ConnectionLoss(), Unavailable),
        (zk_exc.SessionExpired(), SessionExpired),
        (zk_exc.NoAuth(), CoordinationError),
        (ConnectionResetError(), Unavailable),
    ):
        with pytest.raises(public) as info:
            raise_public(error)
        assert info.value.__cause__ is error
    for answer in ANSWERS:
        with pytest.raises(answer):
            raise_public(answer())
    with pytest.raises(KeyError):
        raise_public(KeyError("not a client error: as it is"))


def test_an_aiozk_that_changed_the_internals_we_build_on_fails_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client layer subclasses aiozk's Session and Connection: the installed aiozk has all
    it overrides and uses, and one without (here: a renamed repair_loop, a Connection whose
    ``pending`` went) is refused at import with the names, not at the first reconnect."""
    from aiozk.connection import Connection
    from aiozk.session import Session

    from coordination_zookeeper import _client

    assert _client.aiozk_mismatches() == []
    _client.check_aiozk()
    monkeypatch.delattr(Session, "repair_loop")
    original = Connection.__init__

    def without_pending(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        del self.pending

    monkeypatch.setattr(Connection, "__init__", without_pending)
    assert _client.aiozk_mismatches() == ["Session.repair_loop", "Connection().pending"]
    with pytest.raises(ImportError, match=r"aiozk 0\.32's internals; aiozk .* lacks Session\.repair_loop"):
        _client.check_aiozk()
