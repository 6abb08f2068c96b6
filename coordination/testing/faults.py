"""The fault suite: what every backend must still guarantee when things go wrong.

No fault may let two holders act on a stale token, and no loss may be silent. A backend's
test module joins :class:`FaultTests` with its fixture class, like every other mixin::

    class TestFaults(FaultTests, MyFixtures): pass

Every test here is marked ``faults`` (select them with ``pytest -m faults``); the suite's
crash-failover test (``LockTests.test_crash_failover``, a SIGKILLed holder process) is too.
The tests use only the fixture interface of :class:`~coordination.testing.CoordinationFixtures`:

* holder *processes* (:mod:`coordination.testing.holder`) where the backend declares
  ``CROSS_PROCESS``;
* a :class:`~coordination.testing.proxy.FaultProxy` in front of the URL's first host;
* a server of the test's own from :meth:`CoordinationFixtures.new_server` (or the shared
  ``server``) for server faults;
* :meth:`CoordinationFixtures.leftovers` to see what is left on the server, and
  :meth:`CoordinationFixtures.compact` where ``history_compaction`` is set.

A test the fixture cannot run (no server control, no ``host:port`` to proxy, no way to list
leftovers, no compaction) is reported by that reason in the summary, never skipped
silently. Sessions use :meth:`CoordinationFixtures.fault_options` (a 2 s TTL by default).
Every wait is on an event, a state change or a line from a holder, bounded by the suite's
timeout multiplier; where no event exists (a contender appearing on the server) the server
is polled under a bounded deadline.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import random
import re
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any, ClassVar, Literal, TypeVar

import anyio
import pytest
from anyio.abc import TaskGroup

from coordination import (
    Capability,
    CoordinationError,
    Coordinator,
    HeldLock,
    Leader,
    Leadership,
    LeadershipLost,
    LockLost,
    OperationTimeout,
    SessionState,
    Unavailable,
    Versioned,
)

from .checker import FencedResource
from .fenced import FencedProcess
from .fixtures import Harness, WatchTap, not_run
from .holder import LOST_STATUS

__all__ = ["FaultTests", "StateLog"]

asyncio = pytest.mark.asyncio
T = TypeVar("T")


class StateLog:
    """Every session state of a coordinator, with the time and session id it came with."""

    def __init__(self, harness: Harness, coord: Coordinator) -> None:
        self.harness = harness
        self.coord = coord
        self.seen: list[tuple[SessionState, float, str | None]] = []
        self._changed = anyio.Event()

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        async with aclosing(self.coord.states()) as states:
            first = True
            async for state in states:
                self.seen.append((state, time.monotonic(), self.coord.session_id))
                changed, self._changed = self._changed, anyio.Event()
                changed.set()
                if first:
                    first = False
                    task_status.started()

    async def until(self, state: SessionState, seconds: float, *, after: float = -math.inf) -> float:
        """Wait for ``state`` seen at or after time ``after``; the time it was seen."""

        async def wait() -> float:
            while True:
                for seen, at, _ in self.seen:
                    if seen is state and at >= after:
                        return at
                await self._changed.wait()

        return await self.harness.within(seconds, wait(), f"session state {state.name}")

    def states(self) -> list[SessionState]:
        return [state for state, _, _ in self.seen]


async def _log_states(harness: Harness, tg: TaskGroup, coord: Coordinator) -> StateLog:
    log = StateLog(harness, coord)
    await tg.start(log.run)
    return log


async def _retry(harness: Harness, seconds: float, what: str, make: Callable[[], Awaitable[T]]) -> T:
    """Call ``make()`` until it stops failing with a transient error (a server coming back)."""

    async def attempt() -> T:
        delay = 0.05
        while True:
            try:
                return await make()
            except (Unavailable, OperationTimeout):
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.5)

    return await harness.within(seconds, attempt(), what)


class _Guarded:
    """A lock (or leadership) held in a guarded ``async with`` body in a task: whether the body
    was cancelled and which loss error its exit raised."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.done = anyio.Event()
        self.holding: HeldLock | Leadership | None = None
        self.body_cancelled_at: float | None = None
        self.error: BaseException | None = None
        self.error_at: float | None = None

    async def _body(self) -> None:
        self.entered.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.body_cancelled_at = time.monotonic()
            raise

    async def lock(self, coord: Coordinator, name: str) -> None:
        try:
            async with coord.lock(name) as held:
                self.holding = held
                await self._body()
        except (LockLost, LeadershipLost) as exc:
            self.error, self.error_at = exc, time.monotonic()
        finally:
            self.done.set()

    async def lead(self, coord: Coordinator, name: str, value: bytes) -> None:
        try:
            async with coord.election(name).campaign(value) as leadership:
                self.holding = leadership
                await self._body()
        except (LockLost, LeadershipLost) as exc:
            self.error, self.error_at = exc, time.monotonic()
        finally:
            self.done.set()


class FaultTests:
    """Faults: paused, blocked and cut-off holders, lost replies, paused and restarted servers,
    mass cancellation, watches across restarts and compaction."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.faults]

    cancelled_acquires = 1000
    cancelling_sessions = 20
    write_every = 0.05

    @pytest.fixture
    def fault_harness(self, harness: Harness) -> Harness:
        """The test's harness with the fixture's fault options (a short TTL)."""
        return harness.derive(options=harness.fixtures.fault_options(harness.options))

    # -- 1, 2: a holder process paused, or its event loop blocked, past its TTL -------------------

    async def _stale_holder(
        self,
        h: Harness,
        request: pytest.FixtureRequest,
        how: Literal["pause", "block"],
        kind: Literal["lock", "election"],
    ) -> None:
        name = f"fenced-{how}-{kind}"
        with tempfile.TemporaryDirectory(prefix="coordination-fenced-") as folder:
            async with FencedProcess.start(os.path.join(folder, "resource")) as resource:
                arguments = ["--write-every", str(self.write_every), "--commands"]
                arguments += ["--label", "stale", "--resource", resource.address]
                if kind == "election":
                    arguments += ["--election", "stale"]
                async with h.holder(name, *arguments, label="the holder process") as holder:
                    first = await holder.next("held", h.t(20))
                    assert first.token is not None
                    await holder.next("write", h.t(5))
                    async with h.session() as b:
                        # Exclusion while everything is healthy, before the fault.
                        if kind == "lock":
                            assert await b.lock(name).try_acquire() is None, "try_acquire got a held lock"
                        else:
                            assert await b.election(name).leader() == Leader(b"stale", first.token)
                        if how == "pause":
                            holder.pause()
                        else:
                            await holder.send(f"block {h.t(120):g}")
                            await holder.next("blocked", h.t(5))
                        faulted = time.monotonic()
                        taken: HeldLock | Leadership = await h.within(
                            h.failover_bound + 5,
                            b.lock(name).acquire() if kind == "lock" else b.election(name).campaign(b"b"),
                            f"another session taking the {kind} of the {how}-stopped holder",
                        )
                        takeover = time.monotonic() - faulted
                        assert taken.token > first.token, "the new holder's token must be higher"
                        write = functools.partial(resource.write, name, taken.token, "successor")
                        assert await anyio.to_thread.run_sync(write), "the resource refused the new holder"
                        if how == "pause":
                            resumed = time.monotonic()
                            holder.resume()
                        else:
                            await holder.send("go")
                            resumed = (await holder.next("unblocked", h.t(5))).at
                        lost = await holder.next("lost", h.t(5))
                        status = await holder.wait(h.t(10))
                        # The new holder is unaffected: its session and its writes go on.
                        assert taken.held
                        assert await anyio.to_thread.run_sync(write), "the resource refused the new holder"
                        await (taken.release() if isinstance(taken, HeldLock) else taken.resign())
                decisions = resource.decisions(name)
        assert status == LOST_STATUS, f"the holder process exited with status {status}, not {LOST_STATUS}"
        cancelled = holder.seen("cancelled")
        assert cancelled, "the body of the holder was not cancelled"
        assert cancelled[0].at <= lost.at
        latency = lost.at - resumed
        successor = min(d.at for d in decisions if d.writer == "successor" and d.accepted)
        stale = [d for d in decisions if d.writer == "stale"]
        late = [d for d in stale if d.at > successor]
        assert [d for d in stale if d.at < successor and not d.accepted] == [], (
            "the resource refused the holder while it held"
        )
        assert not [d for d in late if d.accepted], (
            "the fenced resource accepted a write of the old holder after the new holder's"
        )
        assert late, "the holder's work under way wrote with its old token once it ran again"
        written_after_lost = [e for e in holder.seen("write") if e.at > lost.at]
        assert not written_after_lost, "the old holder wrote after it knew it lost"
        request.node.user_properties.extend(
            [
                ("takeover_seconds", round(takeover, 3)),
                ("failover_bound_seconds", round(h.failover_bound, 3)),
                ("lost_after_resume_seconds", round(latency, 4)),
                ("late_writes_refused", len(late)),
            ]
        )
        assert takeover >= h.takeover_floor, (
            f"another session got the {kind} {takeover:.2f}s after its holder stopped, before its "
            f"session could have ended (floor {h.takeover_floor:g}s)"
        )
        assert latency <= h.t(1.0), f"the loss came {latency:.3f}s after the holder ran again"

    @asyncio
    @pytest.mark.requires(Capability.CROSS_PROCESS)
    @pytest.mark.parametrize("kind", ["lock", "election"])
    async def test_paused_holder_is_fenced_and_learns_it_lost(
        self, fault_harness: Harness, request: pytest.FixtureRequest, kind: Literal["lock", "election"]
    ) -> None:
        """SIGSTOP a holder (or leader) process past its TTL: another takes over with a higher
        token, not before the floor; after SIGCONT the old body is cancelled, the loss is raised at
        once, and the fenced resource process refuses its writes."""
        await self._stale_holder(fault_harness, request, "pause", kind)

    @asyncio
    @pytest.mark.requires(Capability.CROSS_PROCESS)
    @pytest.mark.parametrize("kind", ["lock", "election"])
    async def test_blocked_holder_is_fenced_and_learns_it_lost(
        self, fault_harness: Harness, request: pytest.FixtureRequest, kind: Literal["lock", "election"]
    ) -> None:
        """Block a holder's (or leader's) event loop (a synchronous sleep) past its TTL: the same outcome."""
        await self._stale_holder(fault_harness, request, "block", kind)

    # -- 4: the connection cut (blackhole) -------------------------------------------------------

    @asyncio
    @pytest.mark.parametrize("kind", ["lock", "election"])
    async def test_blackhole_is_suspended_then_lost_and_never_resumed(
        self, fault_harness: Harness, request: pytest.FixtureRequest, kind: Literal["lock", "election"]
    ) -> None:
        """Blackhole the holder's connection: SUSPENDED at once, LOST at the local deadline, the
        body cancelled with LockLost; after healing the lost lock stays lost, and the coordinator
        acquires again on a new session."""
        h = fault_harness
        ttl = float(h.options["ttl"])
        async with (
            h.proxied() as (proxy, via),
            via.session() as a,
            h.session() as b,
            anyio.create_task_group() as tg,
        ):
            log = await _log_states(h, tg, a)
            guarded = _Guarded()
            name = f"cut-{kind}"
            if kind == "lock":
                tg.start_soon(guarded.lock, a, name)
            else:
                tg.start_soon(guarded.lead, a, name, b"a")
            await h.within(10, guarded.entered.wait(), f"taking the {kind}")
            first = guarded.holding
            assert first is not None
            old_session = a.session_id
            waiting: list[tuple[HeldLock | Leadership, float]] = []
            waited = anyio.Event()

            async def wait_b() -> None:
                held = await (b.lock(name).acquire() if kind == "lock" else b.election(name).campaign(b"b"))
                waiting.append((held, time.monotonic()))
                waited.set()

            tg.start_soon(wait_b)  # b waits from before the cut
            proxy.blackhole()
            cut = time.monotonic()
            suspended = await log.until(SessionState.SUSPENDED, ttl, after=cut)
            # No keepalive can be acknowledged from here on: the local deadline is fixed.
            assert a.deadline is not None
            deadline: float = a.deadline
            lost = await log.until(SessionState.LOST, ttl + 2, after=cut)
            await h.within(5, guarded.done.wait(), "the body ending")
            assert guarded.body_cancelled_at is not None, "the body was not cancelled"
            expected = LockLost if kind == "lock" else LeadershipLost
            assert isinstance(guarded.error, expected), f"{guarded.error!r} instead of {expected.__name__}"
            assert not first.held
            assert first.lost
            # The server hands the lock over once it expires the session.
            await h.within(h.failover_bound + 5, waited.wait(), f"b taking the {kind}")
            ((taken, taken_at),) = waiting
            assert taken.token > first.token
            assert lost < taken_at, "the holder must learn it lost before another session holds the lock"
            proxy.heal()
            reconnected = await log.until(SessionState.CONNECTED, 15, after=lost)
            assert a.session_id is not None
            assert a.session_id != old_session, "the lost session was resumed"
            assert not first.held, f"a lost {kind} came back after the link healed"
            if kind == "lock":
                assert await h.within(5, a.lock(name).try_acquire(), "try_acquire") is None
                assert isinstance(taken, HeldLock)
                await taken.release()
                again: HeldLock | Leadership = await h.within(
                    10, a.lock(name).acquire(), "a acquiring on its new session"
                )
            else:
                assert await a.election(name).leader() == Leader(b"b", taken.token)
                assert isinstance(taken, Leadership)
                await taken.resign()
                again = await h.within(10, a.election(name).campaign(b"a"), "a leading on its new session")
            assert again.token > taken.token
            await (again.release() if isinstance(again, HeldLock) else again.resign())
            tg.cancel_scope.cancel()
        states = log.states()
        assert states.index(SessionState.SUSPENDED) < states.index(SessionState.LOST)
        request.node.user_properties.extend(
            [
                ("suspended_after_cut_seconds", round(suspended - cut, 3)),
                ("lost_after_deadline_seconds", round(lost - deadline, 4)),
            ]
        )
        assert suspended - cut <= h.t(ttl * 0.75 + 0.5), (
            f"SUSPENDED came {suspended - cut:.2f}s after the cut"
        )
        assert lost >= deadline, "LOST came before the local deadline"
        assert lost - deadline <= h.t(0.5), f"LOST came {lost - deadline:.2f}s after the local deadline"
        assert reconnected > lost

    # -- 5: the reply to the request that enqueues or takes the lock is lost ------------------

    async def _lost_reply(self, h: Harness, kind: Literal["lock", "election"], *, behind: bool) -> None:
        """``a`` (through a proxy) joins the lock or election "orphan", free or (``behind``)
        held by ``c``; its request reaches the server, but the connection is reset while the
        reply is held in the proxy. Then, with every session still alive, nothing may keep
        ``b`` out once ``a`` is done."""
        fixtures = h.fixtures
        async with (
            h.proxied() as (proxy, via),
            via.session() as a,
            h.session() as b,
            h.session() as c,
        ):
            first = await c.lock("orphan").acquire() if behind else None
            watch_leader = kind == "election" and not behind
            before = 0
            if not watch_leader:
                found = await fixtures.leftovers(h)
                if found is None:
                    not_run(f"the fixture cannot list leftovers ({h.scheme})")
                before = len(found)
            session = a.session_id
            outcome: list[Any] = []
            done = anyio.Event()

            async def take() -> None:
                try:
                    if kind == "lock":
                        outcome.append(await a.lock("orphan").acquire(timeout=h.t(30)))
                    else:
                        outcome.append(await a.election("orphan").campaign(b"a", timeout=h.t(30)))
                except CoordinationError as exc:
                    outcome.append(exc)
                finally:
                    done.set()

            async def arrived() -> None:
                # No event says that a request was applied: look at the server, bounded.
                while True:
                    if watch_leader:
                        if await b.election("orphan").leader() is not None:
                            return
                    else:
                        found = await fixtures.leftovers(h)
                        if found is not None and len(found) > before:
                            return
                    await anyio.sleep(0.01)

            async with anyio.create_task_group() as tg:
                proxy.blackhole("downstream")
                tg.start_soon(take)
                await h.within(10, arrived(), "the request reaching the server")
                proxy.reset()  # the reply, held in the proxy, is never delivered
                proxy.heal()
                if first is not None:
                    await first.release()
                await h.within(40, done.wait(), "a's attempt ending")
            # a's blocking attempt goes on past the lost reply (no orphan of its own in its way).
            (result,) = outcome
            assert isinstance(result, (HeldLock, Leadership)), f"a's attempt ended with {result!r}"
            assert result.held
            await (result.release() if isinstance(result, HeldLock) else result.resign())
            assert a.session_id == session, "a's session did not survive the brief fault"
            if kind == "lock":
                nxt = await h.within(2, b.lock("orphan").try_acquire(), "b's try_acquire")
                assert nxt is not None, "an orphan contender keeps the lock"
                await nxt.release()
            else:
                leadership = await h.within(2, b.election("orphan").campaign(b"b"), "b's campaign")
                await leadership.resign()
            found = await fixtures.leftovers(h)
            if found is not None:
                assert found == [], f"left on the server: {found}"

    @asyncio
    @pytest.mark.parametrize("kind", ["lock", "election"])
    async def test_lost_reply_to_take_leaves_no_orphan(
        self, fault_harness: Harness, kind: Literal["lock", "election"]
    ) -> None:
        """The reply to the request that takes a free lock (or leads an election) is lost:
        nothing is left that keeps others out while the session lives."""
        await self._lost_reply(fault_harness, kind, behind=False)

    @asyncio
    @pytest.mark.requires(Capability.FAIR)
    async def test_lost_reply_to_enqueue_leaves_no_orphan(self, fault_harness: Harness) -> None:
        """Behind a holder, the reply to the request that queues a waiter on the server is lost
        (FAIR: waiters queue on the server): after the holder releases, no orphan is first."""
        await self._lost_reply(fault_harness, "lock", behind=True)

    # -- 6: the server paused past the TTL, or killed and restarted ---------------------------

    async def _server_outage(
        self, h: Harness, request: pytest.FixtureRequest, how: Literal["pause", "kill"]
    ) -> None:
        ttl = float(h.options["ttl"])
        async with h.dedicated_server() as d, d.sessions(3) as coords, anyio.create_task_group() as tg:
            server = d.server
            assert server is not None
            a, b, c = coords
            logs = [await _log_states(d, tg, coord) for coord in coords]
            old_sessions = [coord.session_id for coord in coords]
            holder, leader = _Guarded(), _Guarded()
            tg.start_soon(holder.lock, a, "x")
            tg.start_soon(leader.lead, c, "e", b"c")
            await d.within(10, holder.entered.wait(), "a taking the lock")
            await d.within(10, leader.entered.wait(), "c leading")
            assert holder.holding is not None
            assert leader.holding is not None
            waiter: list[HeldLock] = []
            waited = anyio.Event()

            async def wait_b() -> None:
                waiter.append(await b.lock("x").acquire())
                waited.set()

            tg.start_soon(wait_b)
            start = time.monotonic()
            if how == "pause":
                server.pause()
            else:
                await anyio.to_thread.run_sync(server.kill)
            try:
                for log in logs:
                    await log.until(SessionState.LOST, ttl + 3, after=start)
                await d.within(5, holder.done.wait(), "a's body ending")
                await d.within(5, leader.done.wait(), "c's body ending")
                # Past the TTL on the server's clock too, so that it drops the sessions.
                await anyio.sleep(max(0.0, start + ttl * 1.1 - time.monotonic()))
            finally:
                with anyio.CancelScope(shield=True):
                    if how == "pause":
                        server.resume()
                    else:
                        await anyio.to_thread.run_sync(server.start)  # same ports, same data
            back = time.monotonic()
            assert isinstance(holder.error, LockLost), f"a's body ended with {holder.error!r}"
            assert isinstance(leader.error, LeadershipLost), f"c's body ended with {leader.error!r}"
            assert holder.body_cancelled_at is not None
            assert leader.body_cancelled_at is not None
            assert not holder.holding.held
            assert not leader.holding.held
            # The waiter goes on waiting on its next session and gets the lock, with a higher
            # token, once the server has dropped a's old session.
            await d.within(d.failover_bound + 15, waited.wait(), "b getting the lock")
            recovered = time.monotonic() - back
            (held_b,) = waiter
            assert held_b.token > holder.holding.token
            # Exclusion holds afterwards, on the same coordinators, without a new connect().
            resource = FencedResource()
            with resource.action(held_b.token, "b"):
                await anyio.lowlevel.checkpoint()
            await held_b.release()
            tokens = [held_b.token]

            async def contend(coord: Coordinator, who: str) -> None:
                for _ in range(5):
                    async with coord.lock("x") as held:
                        tokens.append(held.token)
                        with resource.action(held.token, who):
                            await anyio.sleep(0.001)

            async with anyio.create_task_group() as inner:
                for coord, who in zip(coords, "abc", strict=True):
                    inner.start_soon(contend, coord, who)
            leadership = await d.within(10, c.election("e").campaign(b"c2"), "c leading again")
            assert leadership.token > leader.holding.token
            await leadership.resign()
            assert resource.overlaps() == []
            assert resource.stale_writes == []
            assert all(x < y for x, y in itertools.pairwise(tokens)), tokens
            for coord, old in zip(coords, old_sessions, strict=True):
                assert coord.state is SessionState.CONNECTED
                assert coord.session_id not in (None, old)
            # And nothing the old sessions held is left on the server (no event says so: look,
            # bounded). Their contenders, not the sessions: a server may keep a session that
            # holds nothing a little longer, which harms nobody.
            old_ids = re.compile("|".join(rf"\b{re.escape(old)}\b" for old in old_sessions if old))
            left: list[str] = []

            async def dropped() -> None:
                while True:
                    found = await d.fixtures.leftovers(d)
                    left[:] = [f for f in found or () if old_ids.search(f)]
                    if not left:
                        return
                    await anyio.sleep(0.1)

            with anyio.move_on_after(d.t(d.failover_bound + 5)):
                await dropped()
            assert not left, f"the server kept what the lost sessions had: {left}"
            tg.cancel_scope.cancel()
        request.node.user_properties.append(("takeover_seconds", round(recovered, 3)))

    @asyncio
    async def test_server_paused_past_ttl(
        self, fault_harness: Harness, request: pytest.FixtureRequest
    ) -> None:
        """SIGSTOP the server past the TTL: every holder and leader learns it lost (body
        cancelled, LockLost / LeadershipLost), a waiter goes on waiting, and afterwards the same
        coordinators acquire with higher tokens and exclude each other."""
        await self._server_outage(fault_harness, request, "pause")

    @asyncio
    async def test_server_killed_and_restarted(
        self, fault_harness: Harness, request: pytest.FixtureRequest
    ) -> None:
        """SIGKILL the server and start it again on its data: the same outcome; tokens go on
        increasing across the restart."""
        await self._server_outage(fault_harness, request, "kill")

    # -- 7: many waiting acquires cancelled at random moments ---------------------------------

    @asyncio
    async def test_cancelled_waiters_leave_nothing(self, fault_harness: Harness) -> None:
        """1,000 waiting acquires over 20 sessions, cancelled at random moments (while the lock is
        held, and racing its hand-over): no overlap, and nothing left behind: no contender while
        the sessions live, no session once they are closed, the next acquire is immediate."""
        # About clean-up, not expiry: a long TTL keeps the busy event loop of this process
        # from losing sessions, which would take their leftovers with them unseen.
        h = fault_harness.derive(options={**fault_harness.options, "ttl": 10.0, "timeout": 10.0})
        seed = random.randrange(2**32)
        rng = random.Random(seed)
        resource = FencedResource()
        tokens: list[int] = []
        ended = 0
        half = anyio.Event()
        session_ids: list[str] = []
        async with h.session() as holder:
            async with h.sessions(self.cancelling_sessions) as coords:
                session_ids = [coord.session_id for coord in coords if coord.session_id]
                first = await holder.lock("crowd").acquire()

                async def waiter(coord: Coordinator, i: int, after: float) -> None:
                    nonlocal ended
                    with anyio.move_on_after(after):
                        held = await coord.lock("crowd").acquire()
                        async with held:
                            tokens.append(held.token)
                            with resource.action(held.token, f"waiter-{i}"):
                                await anyio.lowlevel.checkpoint()
                    ended += 1
                    if ended * 2 >= self.cancelled_acquires:
                        half.set()

                with h.deadline(60, f"{self.cancelled_acquires} waiters ending or cancelled"):
                    async with anyio.create_task_group() as tg:
                        # The holder uses the resource until just before its release: a waiter
                        # let in while the lock is held overlaps it.
                        with resource.action(first.token, "holder"):
                            for i in range(self.cancelled_acquires):
                                coord = coords[i % len(coords)]
                                tg.start_soon(waiter, coord, i, rng.uniform(0.0, h.t(2.0)))
                            await half.wait()
                        await first.release()  # the rest race their cancellation against the hand-over
                overlaps = resource.overlaps()
                assert overlaps == [], f"two holders at once (seed {seed}): {overlaps[:3]}"
                assert all(coord.session_id in session_ids for coord in coords), "a session was lost"
                found = await h.fixtures.leftovers(h)
                if found is not None:
                    assert found == [], f"contenders left while their sessions live (seed {seed}): {found}"
                nxt = await h.within(1, holder.lock("crowd").try_acquire(), "the next try_acquire")
                assert nxt is not None, f"a cancelled acquire keeps the lock (seed {seed})"
                assert nxt.token > max(tokens, default=first.token)
                await nxt.release()
            session_ids.append(holder.session_id or "")
        assert all(x < y for x, y in itertools.pairwise(tokens)), f"tokens not increasing (seed {seed})"
        found = await h.fixtures.leftovers(h, session_ids)
        if found is None:
            not_run(f"ran, but the fixture cannot list leftovers ({h.scheme})")
        assert found == [], f"left on the server after closing (seed {seed}): {found}"

    # -- 8: config watch across a server restart, a partition, compaction ---------------------

    async def _watch_through(
        self,
        h: Harness,
        writer: Coordinator,
        reader: Coordinator,
        fault: Callable[[Callable[[], Awaitable[int]]], Awaitable[None]],
    ) -> None:
        """Watch while ``fault(write)`` runs between two series of writes (``write()`` writes
        the next value): the items come in order, and the latest value is delivered."""
        cfg = writer.config("watched")
        tap = WatchTap(reader)
        versions: list[int] = []

        async def write() -> int:
            value = str(len(versions)).encode()
            version = await _retry(h, 30, "writing", lambda: cfg.set(value))
            versions.append(version)
            return version

        async with anyio.create_task_group() as tg:
            await write()
            items = h.record(tg, reader.config("watched").watch())
            await items.until(Versioned(b"0", versions[0]), "the watch seeing the first write")
            for _ in range(3):
                await write()
            await items.until(Versioned(b"3", versions[-1]), "the watch seeing the writes")
            await fault(write)
            for _ in range(3):
                await write()
            latest = Versioned(str(len(versions) - 1).encode(), versions[-1])
            await items.until(latest, "the watch seeing the latest write", 30)
            tg.cancel_scope.cancel()
        got = [item for item in items.seen if item is not None]
        assert all(x.version < y.version for x, y in itertools.pairwise(got)), got
        assert all(int(x.value) < int(y.value) for x, y in itertools.pairwise(got)), got
        assert got[-1] == latest
        assert tap.backwards() == [], "the backend's watch went back to older versions"

    @asyncio
    async def test_watch_across_server_restart(self, fault_harness: Harness) -> None:
        """Kill the server and start it on its data while a config is watched: the watch goes
        on, in order, and delivers the latest value."""
        async with fault_harness.dedicated_server() as d, d.sessions(2) as (writer, reader):
            server = d.server
            assert server is not None

            async def restart(write: Callable[[], Awaitable[int]]) -> None:
                await anyio.to_thread.run_sync(lambda: server.restart(graceful=False))

            await self._watch_through(d, writer, reader, restart)

    async def _partitioned_watch(self, h: Harness, during: Callable[[], Awaitable[None]] | None) -> None:
        async with h.proxied() as (proxy, via), h.session() as writer, via.session() as reader:

            async def partition(write: Callable[[], Awaitable[int]]) -> None:
                proxy.refuse()
                proxy.reset()
                for _ in range(10):  # while the reader is cut off
                    await write()
                if during is not None:
                    await during()
                proxy.heal()

            await self._watch_through(h, writer, reader, partition)

    @asyncio
    async def test_watch_catches_up_after_partition(self, fault_harness: Harness) -> None:
        """Cut the watcher off while the value changes: after healing it delivers the latest
        value, never an older one after a newer."""
        await self._partitioned_watch(fault_harness, None)

    @asyncio
    async def test_watch_across_compaction(self, fault_harness: Harness) -> None:
        """Cut the watcher off, write, compact the history it would resume from (etcd): after
        healing it reads again and delivers the latest value, in order."""
        h = fault_harness
        if not h.fixtures.history_compaction:
            not_run(f"the backend keeps no history to compact ({h.scheme})")
        await self._partitioned_watch(h, lambda: h.fixtures.compact(h))
