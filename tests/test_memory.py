"""Memory-backend specifics and core mechanics the conformance suite cannot see from outside:
FIFO order, one wake-up per release, TTL expiry of an unrenewed session, the local loss
deadline coming before the server's, and a blocked event loop."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from functools import partial
from typing import Any, ClassVar

import anyio
import pytest
from _broken_memory import Variant

import coordination
from coordination import HeldLock, SessionState, Versioned
from coordination.abc import HISTORY_RESET, BackendSession, HistoryReset, Kind, Queued, ResumePoint
from coordination.memory import MemoryBackend, MemoryStore, _MemorySession

pytestmark = pytest.mark.asyncio


def _url(scheme: str = "memory") -> str:
    return f"{scheme}://t-{uuid.uuid4().hex[:8]}"


async def _until(check: Callable[[], bool], scaled: Callable[[float], float]) -> None:
    """Wait for a condition on in-process state, yielding to other tasks in between."""
    with anyio.fail_after(scaled(5)):
        while not check():  # noqa: ASYNC110 - the store's queues have no event of their own
            await anyio.sleep(0.001)


def _queue(coord: coordination.Coordinator, name: str) -> list[Any]:
    store: MemoryStore = coord.driver.store  # type: ignore[attr-defined]
    return store.queues.get(("lock", name), [])


async def test_waiters_acquire_in_fifo_order(scaled: Callable[[float], float]) -> None:
    url = _url()
    async with AsyncExitStack() as stack:
        holder = await stack.enter_async_context(coordination.connect(url))
        coords = [await stack.enter_async_context(coordination.connect(url)) for _ in range(5)]
        held = await holder.lock("fifo").acquire()
        order: list[int] = []

        async def wait(i: int) -> None:
            async with coords[i].lock("fifo"):
                order.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(wait, i)
                await _until(lambda i=i: len(_queue(holder, "fifo")) == i + 2, scaled)  # type: ignore[misc]
            await held.release()
        assert order == list(range(5))


def _wakeups(coords: list[coordination.Coordinator]) -> int:
    """The wake-ups counted by the waiters' backends (``Backend.wakeups``), summed."""
    return sum(coord.driver.wakeups or 0 for coord in coords)


async def test_a_release_wakes_exactly_one_waiter(scaled: Callable[[float], float]) -> None:
    """Four waiters, each in its own connection: none wakes while the lock is held, and
    each release wakes only the next one (SINGLE_WAKEUP), as ``Backend.wakeups`` counts."""
    url, n, ttl = _url(), 4, scaled(1)
    async with AsyncExitStack() as stack:
        holder = await stack.enter_async_context(coordination.connect(url, ttl=ttl))
        waiters = [await stack.enter_async_context(coordination.connect(url, ttl=ttl)) for _ in range(n)]
        assert [w.driver.wakeups for w in [holder, *waiters]] == [0] * (n + 1)
        held = await holder.lock("herd").acquire()
        got: list[tuple[int, HeldLock]] = []

        async def wait(i: int) -> None:
            got.append((i, await waiters[i].lock("herd").acquire()))

        async with anyio.create_task_group() as tg:
            for i in range(n):  # one at a time, so that the queue order is known
                tg.start_soon(wait, i)
                await _until(lambda i=i: len(_queue(holder, "herd")) == i + 2, scaled)  # type: ignore[misc]
            # Idle for longer than a TTL: a waiter that polled, or that woke at the TTL
            # deadline of a session ahead although it was renewed, would have counted.
            await anyio.sleep(1.5 * ttl)
            assert _wakeups(waiters) == 0, "a waiter woke while nothing changed"
            await held.release()
            for turn in range(n):
                await _until(lambda turn=turn: len(got) == turn + 1, scaled)  # type: ignore[misc]
                await anyio.sleep(scaled(0.05))  # time for any other woken waiter to show
                assert _wakeups(waiters) == turn + 1, "a release may wake only the next waiter"
                who, lock = got[turn]
                assert who == turn, "FIFO"
                await lock.release()
        assert [w.driver.wakeups for w in waiters] == [1] * n


class _Stalling(MemoryBackend):
    """A memory backend whose keepalives can be made to hang, like a blackholed link."""

    scheme = "stalling"
    stalled: anyio.Event | None = None

    async def open_session(self, ttl: float, monitor: Any) -> _MemorySession:
        backend = self
        session = await super().open_session(ttl, monitor)
        renew = session.keepalive

        async def keepalive() -> float:
            if backend.stalled is not None:
                await anyio.sleep_forever()
            return await renew()

        session.keepalive = keepalive  # type: ignore[method-assign]
        return session


@asynccontextmanager
async def _stalling_backend() -> AsyncIterator[type[_Stalling]]:
    coordination.register("stalling", _Stalling)
    try:
        yield _Stalling
    finally:
        coordination.unregister("stalling")
        _Stalling.stalled = None


async def test_local_deadline_passes_before_the_server_hands_the_lock_over(
    scaled: Callable[[float], float],
) -> None:
    name = f"t-{uuid.uuid4().hex[:8]}"
    async with (
        _stalling_backend() as backend,
        coordination.connect(f"stalling://{name}", ttl=1.0) as a,
        coordination.connect(f"memory://{name}", ttl=1.0) as b,
    ):
        held = await a.lock("deadline").acquire()
        states: list[tuple[SessionState, float]] = []
        times: dict[str, float] = {}
        b_acquired = anyio.Event()

        async def record() -> None:
            async for state in a.states():
                states.append((state, time.monotonic()))

        async def take() -> None:
            await b.lock("deadline").acquire()
            times["b acquired"] = time.monotonic()
            b_acquired.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(record)
            tg.start_soon(take)
            backend.stalled = anyio.Event()
            with anyio.fail_after(scaled(5)):
                await held.wait_lost()
            times["a lost"] = time.monotonic()
            backend.stalled = None
            with anyio.fail_after(scaled(5)):
                await b_acquired.wait()
            tg.cancel_scope.cancel()
        assert [s for s, _ in states][:3] == [
            SessionState.CONNECTED,
            SessionState.SUSPENDED,
            SessionState.LOST,
        ]
        assert times["a lost"] < times["b acquired"], "the holder must learn first"
        assert held.lost
        assert not held.held


class _Outage(MemoryBackend):
    """A memory backend whose server can be made unreachable: keepalives and new sessions fail."""

    scheme = "outage"
    down = False

    async def open_session(self, ttl: float, monitor: Any) -> _MemorySession:
        if _Outage.down:
            raise coordination.Unavailable("the server is down")
        session = await super().open_session(ttl, monitor)
        renew = session.keepalive

        async def keepalive() -> float:
            if _Outage.down:
                raise coordination.Unavailable("the server is down")
            return await renew()

        session.keepalive = keepalive  # type: ignore[method-assign]
        return session


async def test_a_waiting_acquire_outlasts_an_outage_longer_than_the_operation_timeout(
    scaled: Callable[[float], float],
) -> None:
    name = f"t-{uuid.uuid4().hex[:8]}"
    coordination.register("outage", _Outage)
    try:
        async with (
            coordination.connect(f"memory://{name}", ttl=5.0) as holder,
            coordination.connect(f"outage://{name}", ttl=0.5, timeout=0.2) as waiter,
        ):
            held = await holder.lock("outage").acquire()
            got: list[HeldLock] = []
            async with anyio.create_task_group() as tg:

                async def wait() -> None:
                    got.append(await waiter.lock("outage").acquire())

                tg.start_soon(wait)
                _Outage.down = True
                with anyio.fail_after(scaled(3)):
                    async for state in waiter.states():
                        if state is SessionState.LOST:
                            break
                await anyio.sleep(0.6)  # the outage lasts three operation timeouts
                _Outage.down = False
                await held.release()
                with anyio.fail_after(scaled(5)):
                    while not got:  # noqa: ASYNC110 - the waiting task sets no event
                        await anyio.sleep(0.01)
            assert got[0].held
            assert got[0].token > held.token
            await got[0].release()
    finally:
        _Outage.down = False
        coordination.unregister("outage")


class _ShieldedGrant(MemoryBackend):
    """A memory backend whose grant finishes even when its caller is cancelled meanwhile, as a
    backend does that must learn the outcome of a lock request (Consul's)."""

    scheme = "shielded"
    answer_after = 0.2
    """Seconds the answer to a lock request takes once granted (longer than the caller waits)."""

    async def open_session(self, ttl: float, monitor: Any) -> _MemorySession:
        session = await super().open_session(ttl, monitor)
        enqueue = session.enqueue

        async def shielded(kind: Kind, name: str, value: bytes) -> Queued[Any]:
            queued = await enqueue(kind, name, value)  # granted at once: the lock is free
            with anyio.CancelScope(shield=True):
                await anyio.sleep(_ShieldedGrant.answer_after)  # the answer is on its way
            return queued

        session.enqueue = shielded  # type: ignore[method-assign]
        return session


async def test_a_cancelled_acquire_never_returns_the_lock(scaled: Callable[[float], float]) -> None:
    name = f"t-{uuid.uuid4().hex[:8]}"
    coordination.register("shielded", _ShieldedGrant)
    # Both times scaled: the acquire is cancelled while the answer to its request is on its way.
    _ShieldedGrant.answer_after = scaled(0.2)
    try:
        async with (
            coordination.connect(f"shielded://{name}") as a,
            coordination.connect(f"memory://{name}") as b,
        ):
            got: list[HeldLock] = []
            with anyio.move_on_after(scaled(0.1)) as scope:
                got.append(await a.lock("cancelled").acquire())
            assert scope.cancelled_caught, "the acquire was cancelled, it must not return"
            assert got == []
            nxt = await b.lock("cancelled").try_acquire()
            assert nxt is not None, "the lock granted to a cancelled acquire was not released"
            await nxt.release()
    finally:
        _ShieldedGrant.answer_after = 0.2
        coordination.unregister("shielded")


class _SlowGrant(MemoryBackend):
    """A memory backend whose first session is granted late, as after an outage: the session
    starts with little of its local deadline left."""

    scheme = "slowgrant"
    slow = True

    async def open_session(self, ttl: float, monitor: Any) -> _MemorySession:
        if _SlowGrant.slow:
            _SlowGrant.slow = False
            await anyio.sleep(ttl * 0.75)  # the reply to the grant comes late
        return await super().open_session(ttl, monitor)


async def test_a_session_granted_late_is_renewed_before_its_deadline() -> None:
    coordination.register("slowgrant", _SlowGrant)
    _SlowGrant.slow = True
    try:
        async with coordination.connect(f"slowgrant://t-{uuid.uuid4().hex[:8]}", ttl=0.6) as a:
            session = a.session_id
            held = await a.lock("late-grant").acquire()
            # Measured from the request, the deadline is close: the first keepalive must not
            # wait a whole interval (a third of the TTL), or the session is lost for nothing.
            await anyio.sleep(0.6)
            assert a.session_id == session
            assert held.held, "a healthy session was lost: its first keepalive came too late"
            await held.release()
    finally:
        coordination.unregister("slowgrant")


async def test_unrenewed_session_expires_at_its_ttl(scaled: Callable[[float], float]) -> None:
    url = _url()
    async with coordination.connect(url, ttl=0.5) as a, coordination.connect(url, ttl=0.5) as b:
        store: MemoryStore = a.driver.store  # type: ignore[attr-defined]
        held = await a.lock("ttl").acquire()
        session_id = a.session_id
        a._engine._supervisor.cancel()  # type: ignore[union-attr]  # a's keepalives stop, as if its process froze
        start = time.monotonic()
        with anyio.fail_after(scaled(3)):
            taken = await b.lock("ttl").acquire()
        waited = time.monotonic() - start
        assert 0.3 < waited < scaled(1.5), waited
        assert taken.token > held.token
        assert session_id not in store.sessions
        assert held.lost, "the store told the session it expired"


async def test_blocked_event_loop_is_seen_at_once_by_held() -> None:
    async with coordination.connect(_url(), ttl=0.5) as a:
        held = await a.lock("blocked").acquire()
        assert held.held
        time.sleep(0.6)  # noqa: ASYNC251 - the point: the loop is blocked past the ttl
        assert not held.held, "a stale holder must see the loss before its next await"
        with pytest.raises(coordination.LockLost):
            await held.release()


async def test_a_body_started_on_an_expired_deadline_is_cancelled() -> None:
    async with coordination.connect(_url(), ttl=0.5) as a:
        lock = a.lock("late")
        held = await lock.acquire()
        time.sleep(0.6)  # noqa: ASYNC251
        ran = False

        async def body() -> None:
            nonlocal ran
            async with held:
                await anyio.lowlevel.checkpoint()
                ran = True

        with pytest.raises(coordination.LockLost):
            await body()
        assert not ran


async def test_store_is_shared_while_open_and_dropped_after() -> None:
    url = _url()
    async with coordination.connect(url) as a, coordination.connect(url) as b:
        await a.config("k").set(b"v")
        assert (await b.config("k").get()) is not None
    async with coordination.connect(url) as c:
        assert await c.config("k").get() is None


async def test_close_is_clean() -> None:
    url = _url()
    async with coordination.connect(url) as a:
        store: MemoryStore = a.driver.store  # type: ignore[attr-defined]
        async with coordination.connect(url) as b:
            await b.lock("x").acquire()
            await b.election("e").campaign(b"v")
            assert len(store.sessions) == 2
        assert list(store.sessions) == [a.session_id]
        assert store.queues == {}


class _Scripted(MemoryBackend):
    """A backend whose watch replays a script, as a server whose index went backwards."""

    scheme = "scripted"

    async def watch(  # type: ignore[override]
        self, key: str, resume: ResumePoint
    ) -> AsyncIterator[Versioned | HistoryReset | None]:
        for item in (Versioned(b"a", 5), Versioned(b"stale", 4), HISTORY_RESET, Versioned(b"restored", 2)):
            yield item
        await anyio.sleep_forever()


async def test_watch_drops_older_versions_until_the_backend_reports_a_history_reset() -> None:
    coordination.register("scripted", _Scripted)
    try:
        async with coordination.connect("scripted://h") as coord:
            seen = []
            async with aclosing(coord.config("k").watch()) as items:
                async for item in items:
                    seen.append(item)
                    if len(seen) == 2:
                        break
        assert seen == [Versioned(b"a", 5), Versioned(b"restored", 2)]
    finally:
        coordination.unregister("scripted")


class _Unreachable(MemoryBackend):
    scheme = "unreachable"

    async def open(self) -> None:
        raise coordination.Unavailable("no server at h:1")


async def test_a_failed_connect_raises_the_error_itself() -> None:
    coordination.register("unreachable", _Unreachable)
    try:
        with pytest.raises(coordination.Unavailable, match="no server"):
            async with coordination.connect("unreachable://h"):
                pass
    finally:
        coordination.unregister("unreachable")


class _TooLateGrant(MemoryBackend):
    """A memory backend whose first grant is answered so late that the session could not be
    renewed before its local deadline."""

    scheme = "toolate"
    late = 0

    async def open_session(self, ttl: float, monitor: Any) -> _MemorySession:
        session = await super().open_session(ttl, monitor)
        if _TooLateGrant.late:
            _TooLateGrant.late -= 1
            await anyio.sleep(ttl * 0.95)  # the reply to the grant comes past deadline - ttl/5
        return session


async def test_a_session_granted_after_its_deadline_is_not_installed() -> None:
    coordination.register("toolate", _TooLateGrant)
    _TooLateGrant.late = 1
    try:
        async with coordination.connect(f"toolate://t-{uuid.uuid4().hex[:8]}", ttl=0.5) as a:
            store: MemoryStore = a.driver.store  # type: ignore[attr-defined]
            # The late session was closed, never shown: the coordinator opened another.
            assert a.state is SessionState.CONNECTED
            assert a.session_id is not None
            assert list(store.sessions) == [a.session_id]
            held = await a.lock("late").acquire()
            await anyio.sleep(0.6)  # past the first session's TTL: the one installed lives on
            assert held.held
            await held.release()
    finally:
        coordination.unregister("toolate")


async def test_keepalive_retries_are_bounded_and_logged_once(
    caplog: pytest.LogCaptureFixture, scaled: Callable[[float], float]
) -> None:
    """Against a server that is down, keepalives are retried at most about ten times per TTL,
    and the failure is logged once per outage, not at every attempt."""
    coordination.register("outage", _Outage)
    ttl = 1.0
    try:
        async with coordination.connect(f"outage://t-{uuid.uuid4().hex[:8]}", ttl=ttl) as a:
            session = a._engine.session
            assert session is not None
            attempts: list[float] = []
            renew = session.bs.keepalive

            async def counted() -> float:
                attempts.append(time.monotonic())
                return await renew()

            session.bs.keepalive = counted  # type: ignore[method-assign]
            caplog.set_level("INFO", logger="coordination")
            _Outage.down = True
            with anyio.fail_after(scaled(3)):
                async for state in a.states():
                    if state is SessionState.LOST:
                        break
            _Outage.down = False
            failed = [r for r in caplog.records if "failed" in r.getMessage() and r.levelname == "INFO"]
            # The retries from the first failure to the local deadline (0.9 s): one a tenth of the TTL.
            assert 2 <= len(attempts) <= 12, f"{len(attempts)} keepalives in one outage"
            assert len(failed) == 1, [r.getMessage() for r in failed]
    finally:
        _Outage.down = False
        coordination.unregister("outage")


async def test_loss_and_timeout_errors_say_which_holding_and_why(scaled: Callable[[float], float]) -> None:
    url = _url()
    async with coordination.connect(url) as a, coordination.connect(url) as b:
        held = await a.lock("jobs/err").acquire()
        with pytest.raises(coordination.AcquireTimeout) as timed_out:
            await b.lock("jobs/err").acquire(timeout=scaled(0.05))
        assert (timed_out.value.name, timed_out.value.timeout) == ("jobs/err", scaled(0.05))
        session_id = a.session_id
        assert session_id is not None
        await b.expire_session(session_id)
        with anyio.fail_after(scaled(5)):
            await held.wait_lost()
        with pytest.raises(coordination.LockLost) as lost:
            await held.release()
        assert (lost.value.name, lost.value.token) == ("jobs/err", held.token)
        assert "expired" in str(lost.value.reason)
        again = await a.lock("jobs/err").acquire()
        await again.release()
        with pytest.raises(coordination.NotHeld) as released:
            await again.release()
        assert (released.value.name, released.value.token, released.value.reason) == (
            "jobs/err",
            again.token,
            "released",
        )


async def test_the_coordinator_offers_users_no_engine_methods() -> None:
    """acquire/withdraw/call/stream/check_open live on the engine, not on the user's object."""
    async with coordination.connect(_url()) as coord:
        public = {name for name in dir(coord) if not name.startswith("_")}
        assert public == {
            "backend",
            "capabilities",
            "config",
            "counter",
            "deadline",
            "driver",
            "election",
            "expire_session",
            "group",
            "identity",
            "lock",
            "namespace",
            "rwlock",
            "semaphore",
            "session_id",
            "state",
            "states",
            "ttl",
        }


async def test_expire_session_is_refused_by_a_backend_that_cannot() -> None:
    """The default Backend.expire_session refuses by name, before any I/O."""

    class NoExpiry(MemoryBackend):
        scheme = "noexpiry"
        capabilities = MemoryBackend.capabilities - {coordination.Capability.EXPIRE_SESSION}
        expire_session = coordination.abc.Backend.expire_session

    coordination.register("noexpiry", NoExpiry)
    try:
        async with coordination.connect(f"noexpiry://t-{uuid.uuid4().hex[:8]}") as coord:
            with pytest.raises(coordination.Unsupported, match="noexpiry backend cannot expire"):
                await coord.expire_session("anything")
    finally:
        coordination.unregister("noexpiry")


class _Flaky(MemoryBackend):
    """A backend whose watch breaks after every item, noting the resume point it was given."""

    scheme = "flaky"
    seen: list[tuple[int, object]]

    async def watch(  # type: ignore[override]
        self, key: str, resume: ResumePoint
    ) -> AsyncIterator[Versioned | HistoryReset | None]:
        self.seen.append((id(resume), resume.position))
        version = (resume.position or 0) + 1
        resume.position = version
        yield Versioned(b"v", version)
        raise coordination.Unavailable("the stream broke")


async def test_the_core_restarts_a_broken_stream_from_its_resume_point(
    scaled: Callable[[float], float],
) -> None:
    """One retry layer: the core restarts the backend's stream with the same ResumePoint, which
    carries where the last run left off; once the coordinator closes, no restart."""
    coordination.register("flaky", _Flaky)
    try:
        async with coordination.connect(f"flaky://t-{uuid.uuid4().hex[:8]}") as coord:
            backend = coord.driver
            assert isinstance(backend, _Flaky)
            backend.seen = []
            versions = []
            # A restart that starts over yields version 1 again, which the core drops: bounded.
            with anyio.move_on_after(scaled(5)):
                async with aclosing(coord.config("k").watch()) as items:
                    async for item in items:
                        assert item is not None
                        versions.append(item.version)
                        if len(versions) == 3:
                            break
        assert versions == [1, 2, 3], "a restart did not resume where the last run left off"
        assert [position for _, position in backend.seen] == [None, 1, 2]
        assert len({identity for identity, _ in backend.seen}) == 1, "a new ResumePoint per restart"
    finally:
        coordination.unregister("flaky")


async def test_a_join_the_backend_refuses_raises_and_leaves_the_coordinator_working(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backend without groups (the default hooks) makes join() raise Unsupported at once;
    the member's task ends without ending the coordinator, which goes on working."""
    monkeypatch.setattr(_MemorySession, "join", BackendSession.join)
    async with coordination.connect(f"memory://{uuid.uuid4().hex}") as coord:
        with anyio.fail_after(5), pytest.raises(coordination.Unsupported, match="no group membership"):
            await coord.group("g").join(b"x")
        held = await coord.lock("still-works").acquire(timeout=5)
        await held.release()
        assert coord.state is SessionState.CONNECTED


class _CountingGuards(_MemorySession):
    """Counts the guarded writes that reach the backend."""

    async def guarded_set(self, contender: Any, key: str, value: bytes) -> int:
        _guarded_calls.append(key)
        return await super().guarded_set(contender, key, value)

    async def guarded_compare_and_set(
        self, contender: Any, key: str, value: bytes, expected: int | None
    ) -> bool:
        _guarded_calls.append(key)
        return await super().guarded_compare_and_set(contender, key, value, expected)

    async def guarded_delete(self, contender: Any, key: str) -> bool:
        _guarded_calls.append(key)
        return await super().guarded_delete(contender, key)


_guarded_calls: list[str] = []


class _CountingGuardsBackend(Variant):
    session_class = _CountingGuards


class _NoGuards(MemoryBackend):
    capabilities = MemoryBackend.capabilities - {coordination.Capability.GUARDED_WRITES}


async def test_a_released_or_lost_guard_raises_before_any_io() -> None:
    """NotHeld for a released guard, the loss error for one known lost (its deadline passed),
    and Unsupported where the backend lacks GUARDED_WRITES: none reaches the backend."""
    coordination.register("counting", _CountingGuardsBackend)
    coordination.register("noguards", _NoGuards)
    _guarded_calls.clear()
    try:
        async with coordination.connect(_url("counting"), ttl=0.5) as coord:
            config = coord.config("c")
            held = await coord.lock("l").acquire()
            await config.set(b"v", guard=held)
            assert _guarded_calls == ["c"]
            await held.release()
            for attempt in (config.set(b"x", guard=held), config.compare_and_set(b"x", None, guard=held)):
                with pytest.raises(coordination.NotHeld):
                    await attempt
            with pytest.raises(coordination.NotHeld):
                await config.delete(guard=held)
            lost = await coord.lock("m").acquire()
            time.sleep(0.6)  # noqa: ASYNC251 - the loop blocked past the local deadline
            with pytest.raises(coordination.LockLost) as raised:
                await config.set(b"x", guard=lost)
            assert raised.value.__cause__ is None  # known lost here, not refused by the server
            assert _guarded_calls == ["c"], "a guard known not to hold reached the backend"
            assert (await config.get() or Versioned(b"", 0)).value == b"v"
        async with coordination.connect(_url("noguards")) as coord:
            held = await coord.lock("l").acquire()
            with pytest.raises(coordination.Unsupported, match="cannot guard writes"):
                await coord.config("c").set(b"x", guard=held)
    finally:
        coordination.unregister("counting")
        coordination.unregister("noguards")


def _refuse(what: str) -> None:
    _Refusing.calls.append(what)
    if what in _Refusing.refused:
        raise coordination.PermissionDenied(f"the ACL of {what!r} forbids it for user 'u'")


class _RefusingSession(_MemorySession):
    async def enqueue(self, kind: Kind, name: str, value: bytes) -> Queued[Any]:
        _refuse("enqueue")
        return await super().enqueue(kind, name, value)


class _Refusing(Variant):
    """A memory backend whose server refuses what ``refused`` names, as an ACL would."""

    session_class = _RefusingSession
    refused: ClassVar[set[str]] = set()
    calls: ClassVar[list[str]] = []

    def _check(self, what: str) -> None:
        _refuse(what)

    async def set(self, key: str, value: bytes) -> int:
        self._check("set")
        return await super().set(key, value)

    async def open_session(self, ttl: float, monitor: Any) -> _MemorySession:
        self._check("session")
        return await super().open_session(ttl, monitor)


async def test_a_refusal_is_raised_at_once_naming_the_operation(scaled: Callable[[float], float]) -> None:
    """PermissionDenied is never retried: one request, raised at once, its message naming the
    operation; a session the server refuses to open again is logged, retried in the
    background, and the operations waiting for it raise PermissionDenied, not Unavailable."""
    coordination.register("refusing", _Refusing)
    _Refusing.refused.clear()
    _Refusing.calls.clear()
    async with coordination.connect(_url("refusing"), ttl=1, timeout=scaled(0.5)) as coord:
        _Refusing.refused.add("set")
        with pytest.raises(
            coordination.PermissionDenied, match=r"writing config 'c' was refused: the ACL"
        ) as caught:
            await coord.config("c").set(b"v")
        assert isinstance(caught.value, PermissionError)
        assert isinstance(caught.value.__cause__, coordination.PermissionDenied)
        assert _Refusing.calls.count("set") == 1
        _Refusing.refused = {"enqueue"}
        with (
            anyio.fail_after(scaled(5)),
            pytest.raises(coordination.PermissionDenied, match="the ACL of 'enqueue'"),
        ):
            await coord.lock("l").acquire()  # a transient error would be retried until the timeout
        assert _Refusing.calls.count("enqueue") == 1
        _Refusing.refused = {"session"}
        assert coord.session_id is not None
        await coord.expire_session(coord.session_id)
        with (
            anyio.fail_after(scaled(5)),
            pytest.raises(coordination.PermissionDenied, match=r"no session could be opened: .*forbids it"),
        ):
            await coord.lock("l").acquire()
        _Refusing.refused = set()
        async with coord.lock("l"):  # opened again once the server allows it
            pass


@pytest.mark.asyncio
async def test_log_records_carry_the_session_name_and_token(
    caplog: pytest.LogCaptureFixture, scaled: Callable[[float], float]
) -> None:
    """Every record of the library has ``session_id``, ``primitive_name`` and ``token``
    attributes: a term of election.run() names its election and token, a lost session its id,
    a background task's record its coordinator's session."""
    caplog.set_level(logging.DEBUG, logger="coordination")
    url = f"memory://logs-{uuid.uuid4().hex[:8]}"
    terms: list[int] = []
    ran = anyio.Event()

    async def job(leadership: coordination.Leadership) -> None:
        terms.append(leadership.token)
        ran.set()

    with anyio.fail_after(scaled(20)):
        async with coordination.connect(url) as coord:
            first = coord.session_id
            async with anyio.create_task_group() as tg:  # one term, then waiting out min_interval
                tg.start_soon(partial(coord.election("e").run, job, b"me", min_interval=60.0))
                await ran.wait()
                tg.cancel_scope.cancel()
            held = await coord.lock("l").acquire()
            coord.driver.store.expire(first)  # type: ignore[attr-defined]
            await held.wait_lost()
            await coord.lock("l").acquire()  # on the next session
    records = [r for r in caplog.records if r.name.startswith("coordination")]
    assert records
    for record in records:
        for field in ("session_id", "primitive_name", "token"):
            assert hasattr(record, field), (field, record.getMessage())
    (term,) = terms
    leading = [r for r in records if "leading, running the job" in r.getMessage()]
    assert [(r.session_id, r.primitive_name, r.token) for r in leading] == [(first, "e", term)]  # type: ignore[attr-defined]
    lost = [r for r in records if r.getMessage().startswith(f"session {first} lost")]
    assert [r.session_id for r in lost] == [first]  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_run_stops_on_a_plain_asyncio_cancel_that_comes_with_a_loss(
    scaled: Callable[[float], float],
) -> None:
    """``task.cancel()`` (delivered once, unlike a cancel scope) at the moment the term is
    lost: run() ends cancelled and campaigns no more; it does not take the cancel for a loss."""
    import asyncio as aio

    url = f"memory://run-cancel-{uuid.uuid4().hex[:8]}"
    ran = anyio.Event()

    async def job(leadership: coordination.Leadership) -> None:
        ran.set()
        await anyio.sleep_forever()

    async with coordination.connect(url) as coord, coordination.connect(url) as observer:
        task = aio.ensure_future(coord.election("e").run(job, b"me", min_interval=0.0))
        with anyio.fail_after(scaled(10)):
            await ran.wait()
        coord.driver.store.expire(coord.session_id)  # type: ignore[attr-defined]
        task.cancel()
        with pytest.raises(aio.CancelledError):
            await aio.wait_for(task, scaled(10))
        assert await observer.election("e").candidates() == []


@pytest.mark.asyncio
async def test_run_treats_another_elections_loss_as_the_jobs_error(
    caplog: pytest.LogCaptureFixture, scaled: Callable[[float], float]
) -> None:
    """A job that raises some other election's LeadershipLost has failed like any job: logged,
    and run() campaigns again (it does not end run(), and it is not this term's loss)."""
    url = f"memory://run-other-{uuid.uuid4().hex[:8]}"
    terms: list[int] = []
    again = anyio.Event()

    async def job(leadership: coordination.Leadership) -> None:
        terms.append(leadership.token)
        if len(terms) == 2:
            again.set()
            await anyio.sleep_forever()
        raise coordination.LeadershipLost("another election's", name="other", token=1)

    async with coordination.connect(url) as coord, anyio.create_task_group() as tg:
        tg.start_soon(partial(coord.election("e").run, job, b"me", min_interval=0.0))
        with anyio.fail_after(scaled(10)):
            await again.wait()
        tg.cancel_scope.cancel()
    assert [r.levelname for r in caplog.records if "the job failed" in r.getMessage()] == ["ERROR"]
