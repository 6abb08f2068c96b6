"""What the etcd backend promises beyond the conformance suite, on real etcd 3.4 and 3.5."""

from __future__ import annotations

import itertools
import time
from asyncio import all_tasks as asyncio_tasks
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

import coordination
from coordination import InvalidURL, Leader, OperationTimeout, SessionState, Unavailable, Versioned
from coordination.testing.proxy import FaultProxy
from coordination.testing.servers import EtcdProcess, free_port
from coordination_etcd import EtcdBackend
from coordination_etcd._client import EtcdClient, KeepAliveStream, WatchStream, range_request

from ._helpers import client_of, sessions, wait_for_keys

asyncio = pytest.mark.asyncio


def _increasing(values: Sequence[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


class Changes:
    """Wait for a condition that tests' instrumentation makes true, within scaled seconds."""

    def __init__(self, scaled: Callable[[float], float]) -> None:
        self._scaled = scaled
        self._event = anyio.Event()

    def changed(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def until(self, condition: Callable[[], bool], seconds: float = 10) -> None:
        with anyio.fail_after(self._scaled(seconds)):
            while not condition():
                await self._event.wait()


# -- locks: the queue ----------------------------------------------------------------------


def _wakeups(coords: Sequence[coordination.Coordinator]) -> int:
    """The wake-ups counted by the coordinators' backends (``Backend.wakeups``), summed."""
    return sum(coord._engine.backend.wakeups or 0 for coord in coords)


@asyncio
async def test_release_wakes_only_the_next_waiter(
    etcd_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch, scaled: Callable[[float], float]
) -> None:
    """Each waiter watches exactly the key created just before its own, and is woken once:
    its backend counts no wake-up while the lock is held and one per release in all."""
    watched: dict[int, list[bytes]] = defaultdict(list)  # id(client) -> keys watched
    changes = Changes(scaled)
    original_watch = EtcdClient.watch

    @asynccontextmanager
    async def recording_watch(self: EtcdClient, key: bytes, **kw: Any) -> AsyncIterator[WatchStream]:
        async with original_watch(self, key, **kw) as stream:
            watched[id(self)].append(key)
            changes.changed()
            yield stream

    monkeypatch.setattr(EtcdClient, "watch", recording_watch)

    async with sessions(etcd_url, 5) as (holder, *waiters):
        held = await holder.lock("sw").acquire()
        order: list[int] = []
        tokens: list[int] = []
        leave = [anyio.Event() for _ in waiters]

        async def wait(i: int, coord: coordination.Coordinator) -> None:
            got = await coord.lock("sw").acquire()
            order.append(i)
            tokens.append(got.token)
            changes.changed()
            await leave[i].wait()
            await got.release()

        async with anyio.create_task_group() as tg:
            for i, coord in enumerate(waiters):
                tg.start_soon(wait, i, coord)
                watching = watched[id(client_of(coord))]
                await changes.until(lambda: len(watching) == 1)  # noqa: B023 - queued, watching
            keys = [f"{namespace}/sw/{c.session_id}".encode() for c in [holder, *waiters]]
            assert [watched[id(client_of(c))] for c in waiters] == [[k] for k in keys[:-1]]
            await anyio.sleep(scaled(0.5))  # idle: a waiter that polled would have woken
            assert _wakeups(waiters) == 0, "a waiter woke while nothing changed"
            await held.release()
            for turn in range(len(waiters)):
                await changes.until(lambda: len(order) == turn + 1)  # noqa: B023
                # A round trip on each waiter's client: any watch response etcd sent before
                # its reply has arrived, and the wait it woke has counted it.
                for coord in waiters:
                    await client_of(coord).range(range_request(b"/"))
                assert _wakeups(waiters) == turn + 1, "a release may wake only the next waiter"
                leave[order[-1]].set()
        assert order == [0, 1, 2, 3], "waiters acquire in the order they queued (FAIR)"
        assert _increasing([held.token, *tokens])
        for coord in waiters:  # one watch each, one wake-up each: no herd
            assert len(watched[id(client_of(coord))]) == 1
            assert coord._engine.backend.wakeups == 1


@asyncio
async def test_tasks_of_one_session_exclude_each_other(
    etcd_url: str, scaled: Callable[[float], float]
) -> None:
    """Tasks sharing a coordinator take turns on one lock; every turn has a new token."""
    inside = 0
    tokens: list[int] = []
    async with sessions(etcd_url, 1) as (coord,):

        async def worker() -> None:
            nonlocal inside
            for _ in range(10):
                async with coord.lock("shared") as held:
                    inside += 1
                    assert inside == 1
                    tokens.append(held.token)
                    await anyio.lowlevel.checkpoint()
                    inside -= 1

        with anyio.fail_after(scaled(20)):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(worker)
    assert len(tokens) == 30
    assert _increasing(tokens)


@asyncio
async def test_keys_that_are_not_contenders_never_block(etcd_url: str, namespace: str) -> None:
    """Under ``jobs/``, the lock ``jobs/nightly`` and the config ``jobs/x`` are not contenders
    of the lock ``jobs``: neither holds it nor stands in its queue."""
    async with sessions(etcd_url, 3) as (a, b, c):
        await a.config("jobs/x").set(b"config, not a contender")
        nested = await b.lock("jobs/nightly").acquire()
        assert await a.election("jobs").leader() is None
        held = await a.lock("jobs").try_acquire()
        assert held is not None, "a nested lock or a config key blocked the lock"
        # A waiter's predecessor is the holder, not the nested keys created after it.
        more = [await b.lock(f"jobs/n{i}").acquire() for i in range(3)]
        got: list[int] = []
        async with anyio.create_task_group() as tg:

            async def wait() -> None:
                waiter = await c.lock("jobs").acquire()
                got.append(waiter.token)
                await waiter.release()

            tg.start_soon(wait)
            await wait_for_keys(client_of(a), f"{namespace}/jobs/".encode(), 7)
            await held.release()
        assert got
        assert got[0] > held.token
        for lock in [nested, *more]:
            await lock.release()


@asyncio
async def test_one_keepalive_stream_per_session(
    etcd_url: str, monkeypatch: pytest.MonkeyPatch, scaled: Callable[[float], float]
) -> None:
    streams = 0
    renewals = 0
    changes = Changes(scaled)
    original_stream = EtcdClient.keepalive_stream
    original_round_trip = KeepAliveStream.round_trip

    def counting_stream(self: EtcdClient) -> KeepAliveStream:
        nonlocal streams
        streams += 1
        return original_stream(self)

    async def counting_round_trip(self: KeepAliveStream, lease_id: int) -> int:
        nonlocal renewals
        ttl = await original_round_trip(self, lease_id)
        renewals += 1
        changes.changed()
        return ttl

    monkeypatch.setattr(EtcdClient, "keepalive_stream", counting_stream)
    monkeypatch.setattr(KeepAliveStream, "round_trip", counting_round_trip)
    async with sessions(etcd_url, 1, ttl=1.5) as (coord,):
        session = coord.session_id
        await changes.until(lambda: renewals >= 4)
        assert coord.session_id == session
        assert coord.state is SessionState.CONNECTED
    assert streams == 1


@asyncio
async def test_closing_leaves_no_lease_key_or_task(
    etcd_server: EtcdProcess, etcd_url: str, namespace: str, scaled: Callable[[float], float]
) -> None:
    before = set(asyncio_tasks())
    async with sessions(etcd_url, 1) as (coord,):
        lease = coord.session_id
        assert lease is not None
        await coord.lock("a").acquire()
        await coord.election("b").campaign(b"x")
        async with anyio.create_task_group() as tg:
            watching = [anyio.Event(), anyio.Event()]
            tg.start_soon(_drain, coord.config("c").watch(), watching[0])
            tg.start_soon(_drain, coord.election("b").observe(), watching[1])
            with anyio.fail_after(scaled(5)):
                for event in watching:
                    await event.wait()
            tg.cancel_scope.cancel()
        assert lease in etcd_server.etcdctl("lease", "list").stdout
    assert lease not in etcd_server.etcdctl("lease", "list").stdout
    assert etcd_server.etcdctl("get", "--prefix", namespace, "--keys-only").stdout.strip() == ""
    assert set(asyncio_tasks()) == before


async def _drain(items: AsyncIterator[Any], first: anyio.Event) -> None:
    async for _ in items:
        first.set()


# -- watches: resume and compaction ---------------------------------------------------------


def cut_off(proxy: FaultProxy) -> None:
    """Drop the client's connections and refuse new ones until ``proxy.heal()``."""
    proxy.refuse()
    proxy.reset()


async def _watch_into(seen: list[Any], changes: Changes, items: AsyncIterator[Any]) -> None:
    async for item in items:
        seen.append(item)
        changes.changed()


@asyncio
async def test_watch_resumes_after_a_broken_stream(
    etcd_server: EtcdProcess, namespace: str, scaled: Callable[[float], float]
) -> None:
    """Writes made while the watcher is cut off all arrive, in order, once it is back."""
    async with (
        FaultProxy(etcd_server.host, etcd_server.port) as proxy,
        sessions(etcd_server.url + f"/{namespace}", 1) as (writer,),
        sessions(f"etcd://{proxy.address}/{namespace}", 1, ttl=20) as (reader,),
    ):
        cfg = writer.config("resumed")
        v0 = await cfg.set(b"0")
        seen: list[Versioned | None] = []
        changes = Changes(scaled)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_into, seen, changes, reader.config("resumed").watch())
            await changes.until(lambda: len(seen) == 1)
            cut_off(proxy)
            versions = [await cfg.set(str(i).encode()) for i in (1, 2, 3)]
            proxy.heal()
            await changes.until(lambda: len(seen) == 4, 15)
            tg.cancel_scope.cancel()
        assert seen == [
            Versioned(b"0", v0),
            *(Versioned(str(i).encode(), v) for i, v in zip((1, 2, 3), versions, strict=True)),
        ]


@asyncio
async def test_compaction_while_the_watcher_is_behind(
    etcd_server: EtcdProcess, namespace: str, scaled: Callable[[float], float]
) -> None:
    """If the revisions a watcher missed were compacted, it reads again and goes on from the latest."""
    async with (
        FaultProxy(etcd_server.host, etcd_server.port) as proxy,
        sessions(etcd_server.url + f"/{namespace}", 1) as (writer,),
        sessions(f"etcd://{proxy.address}/{namespace}", 1, ttl=20) as (reader,),
    ):
        cfg = writer.config("compacted")
        v0 = await cfg.set(b"0")
        seen: list[Versioned | None] = []
        changes = Changes(scaled)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_into, seen, changes, reader.config("compacted").watch())
            await changes.until(lambda: len(seen) == 1)
            cut_off(proxy)
            versions = [await cfg.set(str(i).encode()) for i in (1, 2, 3)]
            etcd_server.etcdctl("compact", str(versions[-1]))
            proxy.heal()
            await changes.until(lambda: len(seen) == 2, 15)
            after = await cfg.set(b"4")
            await changes.until(lambda: len(seen) == 3)
            tg.cancel_scope.cancel()
        # 1 and 2 were compacted away: the watch re-read the key (3), then went on (4).
        assert seen == [Versioned(b"0", v0), Versioned(b"3", versions[-1]), Versioned(b"4", after)]


@asyncio
async def test_observe_after_compaction_while_behind(
    etcd_server: EtcdProcess, namespace: str, scaled: Callable[[float], float]
) -> None:
    async with (
        FaultProxy(etcd_server.host, etcd_server.port) as proxy,
        sessions(etcd_server.url + f"/{namespace}", 2) as (a, b),
        sessions(f"etcd://{proxy.address}/{namespace}", 1, ttl=20) as (observer,),
    ):
        leading = await a.election("obs").campaign(b"a1")
        seen: list[Leader | None] = []
        changes = Changes(scaled)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_into, seen, changes, observer.election("obs").observe())
            await changes.until(lambda: len(seen) == 1)
            cut_off(proxy)
            await leading.proclaim(b"a2")
            await leading.resign()
            b_leads = await b.election("obs").campaign(b"b1")
            await b_leads.proclaim(b"b2")
            latest = await client_of(a).range(range_request(namespace.encode()))
            etcd_server.etcdctl("compact", str(latest.header.revision))
            proxy.heal()
            await changes.until(lambda: seen[-1] == Leader(b"b2", b_leads.token), 15)
            tg.cancel_scope.cancel()
        assert seen == [Leader(b"a1", leading.token), Leader(b"b2", b_leads.token)]


# -- sessions -------------------------------------------------------------------------------


@asyncio
async def test_session_survives_an_etcd_restart(
    etcd_server: EtcdProcess, etcd_url: str, scaled: Callable[[float], float]
) -> None:
    """etcd keeps leases across a restart: while it is down the session is SUSPENDED, then
    CONNECTED again with the same lease, the lock still held."""
    async with sessions(etcd_url, 1, ttl=10) as (coord,):
        held = await coord.lock("restart").acquire()
        session = coord.session_id
        states: list[SessionState] = []
        changes = Changes(scaled)

        async def follow() -> None:
            async for state in coord.states():
                states.append(state)
                changes.changed()

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            try:
                await anyio.to_thread.run_sync(etcd_server.stop)
                await changes.until(lambda: SessionState.SUSPENDED in states, 15)
            finally:
                await anyio.to_thread.run_sync(etcd_server.start)
            await changes.until(lambda: states[-1] is SessionState.CONNECTED, 15)
            tg.cancel_scope.cancel()
        assert SessionState.LOST not in states
        assert coord.session_id == session
        assert held.held
        await held.release()


@asyncio
async def test_lost_reply_to_the_create_leaves_no_key(etcd_server: EtcdProcess, namespace: str) -> None:
    """The create transaction is applied but its reply is lost: the key is deleted again, so
    it cannot block anyone for the rest of the session."""
    async with (
        FaultProxy(etcd_server.host, etcd_server.port) as proxy,
        sessions(etcd_server.url + f"/{namespace}", 1) as (other,),
        sessions(f"etcd://{proxy.address}/{namespace}", 1, ttl=20) as (coord,),
    ):
        proxy.drop_next_reply()
        with pytest.raises((Unavailable, OperationTimeout)):
            await coord.lock("lost").try_acquire()
        assert coord.session_id is not None
        mine = f"{namespace}/lost/{coord.session_id}".encode()
        assert not (await client_of(other).range(range_request(mine))).kvs
        held = await other.lock("lost").try_acquire()
        assert held is not None
        await held.release()
        again = await coord.lock("lost").try_acquire()
        assert again is not None
        assert again.token > held.token
        await again.release()


@asyncio
async def test_a_cut_off_holder_knows_it_lost_before_another_acquires(
    etcd_server: EtcdProcess, namespace: str, scaled: Callable[[float], float]
) -> None:
    """Cut a holder off etcd: its local deadline (from the send time of the last acknowledged
    keepalive, minus a margin) passes before etcd expires the lease and hands the lock on."""
    async with (
        FaultProxy(etcd_server.host, etcd_server.port) as proxy,
        sessions(etcd_server.url + f"/{namespace}", 1) as (other,),
        sessions(f"etcd://{proxy.address}/{namespace}", 1, ttl=2) as (coord,),
    ):
        held = await coord.lock("cut").acquire()
        lost_at: list[float] = []
        async with anyio.create_task_group() as tg:

            async def watch_loss() -> None:
                await held.wait_lost()
                lost_at.append(time.monotonic())

            tg.start_soon(watch_loss)
            proxy.blackhole()
            taken = await other.lock("cut").acquire(timeout=scaled(10))
            taken_at = time.monotonic()
            proxy.heal()
        assert held.lost
        assert lost_at[0] < taken_at, "the lock was taken over before the holder knew it lost"
        assert taken.token > held.token
        await taken.release()


# -- connecting -----------------------------------------------------------------------------


@asyncio
async def test_several_hosts_skip_a_dead_one(
    etcd_server: EtcdProcess, namespace: str, scaled: Callable[[float], float]
) -> None:
    url = f"etcd://127.0.0.1:{free_port()},{etcd_server.host}:{etcd_server.port}/{namespace}"
    async with sessions(url, 1) as (coord,):
        held = await coord.lock("multi").acquire(timeout=scaled(5))
        await held.release()
        assert await coord.config("multi").set(b"x") > 0


@asyncio
async def test_unreachable_is_unavailable() -> None:
    """gRPC errors leave the backend as coordination errors, the original kept as __cause__."""
    with pytest.raises(Unavailable) as info:
        async with coordination.connect(f"etcd://127.0.0.1:{free_port()}", ttl=3, timeout=5):
            pass
    assert type(info.value.__cause__).__module__.startswith("grpc")


def test_options_are_checked_before_any_io(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidURL, match="'cert_file' and 'key_file'"):
        coordination.connect("etcd://h/ns?cert_file=/c.pem")
    with (
        pytest.warns(DeprecationWarning, match="'cert' is now called 'cert_file'"),
        pytest.raises(InvalidURL, match="'cert_file' and 'key_file'"),
    ):
        coordination.connect("etcd://h/ns?cert=/c.pem")
    with pytest.warns(DeprecationWarning, match="cacert"), pytest.raises(InvalidURL, match="are one option"):
        coordination.connect("etcd://h/ns?ca_file=/a.pem&cacert=/b.pem")
    with pytest.warns(DeprecationWarning, match="is now called '(ca|cert|key)_file'"):
        old_names = coordination.connect("etcd://h/ns?cacert=/a.pem&cert=/c.pem&key=/k.pem")
    assert {k: old_names._engine.backend.settings[k] for k in ("ca_file", "cert_file", "key_file")} == {
        "ca_file": "/a.pem",
        "cert_file": "/c.pem",
        "key_file": "/k.pem",
    }
    assert "cacert" not in old_names._engine.backend.settings
    with pytest.raises(InvalidURL, match="password"):
        coordination.connect("etcd://h/ns", password="secret")
    monkeypatch.setenv("ETCDCTL_USER", "alice:from-env")
    backend = coordination.connect("etcd://h/ns")._engine.backend
    assert isinstance(backend, EtcdBackend)
    assert (backend._user, backend._password) == ("alice", "from-env")
    backend = coordination.connect("etcd://bob:pw@h/ns")._engine.backend
    assert isinstance(backend, EtcdBackend)
    assert (backend._user, backend._password) == ("bob", "pw")
    assert "pw" not in repr(coordination.connect("etcd://bob:pw@h/ns"))


@asyncio
async def test_watches_and_waiters_go_on_across_failovers(
    etcd_server: EtcdProcess, namespace: str, scaled: Callable[[float], float]
) -> None:
    """A failover replaces the channel (two in a row close the first): an idle watch, an idle
    observe and a waiting acquire on the old channel go on, on the new one, and end with no
    error of their own."""
    async with (
        FaultProxy(etcd_server.host, etcd_server.port) as first,
        FaultProxy(etcd_server.host, etcd_server.port) as second,
        sessions(etcd_server.url + f"/{namespace}", 1) as (other,),
        sessions(f"etcd://{first.address},{second.address}/{namespace}", 1, ttl=20) as (moving,),
    ):
        cfg = other.config("moved")
        v0 = await cfg.set(b"0")
        held = await other.lock("moved").acquire()
        seen: list[Versioned | None] = []
        leaders: list[Leader | None] = []
        got: list[coordination.HeldLock] = []
        changes = Changes(scaled)

        async def observe() -> None:
            async for leader in moving.election("moved-e").observe():
                leaders.append(leader)
                changes.changed()

        async def wait() -> None:
            got.append(await moving.lock("moved").acquire())
            changes.changed()

        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_into, seen, changes, moving.config("moved").watch())
            tg.start_soon(observe)
            tg.start_soon(wait)
            await changes.until(lambda: len(seen) == 1 and len(leaders) == 1)
            await wait_for_keys(client_of(other), f"{namespace}/moved/".encode(), 2)  # the waiter is queued
            backend = moving._engine.backend
            for _ in range(2):  # the second replacement closes the first channel
                await backend.failover("a test moves the client on")
            v1 = await cfg.set(b"1")
            leadership = await other.election("moved-e").campaign(b"e")
            await held.release()
            await changes.until(lambda: len(seen) == 2 and len(leaders) == 2 and len(got) == 1, 15)
            tg.cancel_scope.cancel()
        assert seen == [Versioned(b"0", v0), Versioned(b"1", v1)]
        assert leaders == [None, Leader(b"e", leadership.token)]
        assert got[0].token > held.token
        await got[0].release()
        await leadership.resign()
