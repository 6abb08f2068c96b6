"""The conformance suite: test mixins every backend must pass.

The mixins have no ``Test`` prefix, so pytest never collects them alone. A backend joins
each with its fixture class (see :class:`~coordination.testing.CoordinationFixtures`)::

    class TestLock(LockTests, MyFixtures): pass
    class TestElection(ElectionTests, MyFixtures): pass
    class TestConfig(ConfigTests, MyFixtures): pass
    class TestSession(SessionTests, MyFixtures): pass
    class TestBadInput(BadInputTests, MyFixtures): pass
    class TestGroup(GroupTests, MyFixtures): pass

A test that needs a capability is marked ``@pytest.mark.requires(Capability.X)``; on a
backend that does not declare it, it is reported as skipped with the capability's name.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from typing import Literal

import anyio
import pytest

import coordination
from coordination import (
    AcquireTimeout,
    BackendNotFound,
    Capability,
    Coordinator,
    Election,
    HeldLock,
    InvalidName,
    InvalidURL,
    Leader,
    Leadership,
    LeadershipLost,
    LockLost,
    Member,
    Membership,
    NotHeld,
    SessionState,
    Versioned,
)

from .fenced import Decision, FencedProcess
from .fixtures import Harness, Recorder, WatchTap, not_run
from .holder import Span, overlapping, read_spans

__all__ = ["BadInputTests", "ConfigTests", "ElectionTests", "GroupTests", "LockTests", "SessionTests"]

asyncio = pytest.mark.asyncio


def _strictly_increasing(values: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


HANDOVER_WAITERS = 4
IDLE_SECONDS = 1.0
"""How long the hand-over tests watch waiters while nothing changes: a waiter that polls
(even every half second) wakes up in that time; one that watches does not."""
SETTLE_SECONDS = 0.3
"""How long after a hand-over the tests wait for more wake-ups (a herd) before counting."""


async def _queued(harness: Harness, count: int, what: str) -> bool:
    """Wait until the server shows ``count`` contenders in the test's namespace; ``False``
    if the fixture cannot list them. (No event says a contender was queued: look, bounded.)"""

    async def look() -> bool:
        while True:
            found = await harness.fixtures.leftovers(harness)
            if found is None:
                return False
            if len(found) >= count:
                return True
            await anyio.sleep(0.01)

    return await harness.within(5, look(), what)


async def _hand_over(harness: Harness, kind: Literal["lock", "election"], bound: float) -> list[str]:
    """One holder (or leader) and ``HANDOVER_WAITERS`` waiters, each in its own session,
    handed over in turn by release (or resign). Checks that nobody wakes while nothing
    changes, that each release hands over within ``bound`` (scaled), FIFO under ``FAIR``,
    and exactly one wake-up per release under ``SINGLE_WAKEUP``. Returns what it could not
    check."""
    name = f"handover-{kind}"
    unchecked: list[str] = []
    fair = Capability.FAIR in harness.capabilities
    single = Capability.SINGLE_WAKEUP in harness.capabilities

    async def take(coord: Coordinator, value: bytes) -> HeldLock | Leadership:
        if kind == "lock":
            return await coord.lock(name).acquire()
        return await coord.election(name).campaign(value)

    async def give_up(holding: HeldLock | Leadership) -> None:
        await (holding.release() if isinstance(holding, HeldLock) else holding.resign())

    async with harness.sessions(HANDOVER_WAITERS + 1) as (first, *waiters):
        current = await take(first, b"first")
        tokens = [current.token]
        got: list[tuple[int, HeldLock | Leadership, float]] = []
        arrived = anyio.Event()

        async def wait(i: int) -> None:
            nonlocal arrived
            holding = await take(waiters[i], f"waiter-{i}".encode())
            got.append((i, holding, time.monotonic()))
            arrived.set()
            arrived = anyio.Event()

        async with anyio.create_task_group() as tg:
            order_known = fair
            for i in range(HANDOVER_WAITERS):
                tg.start_soon(wait, i)
                if order_known:  # one at a time, so that the queue order is known
                    order_known = await _queued(harness, i + 2, f"waiter {i} queued")
            if fair and not order_known:
                unchecked.append("FIFO order (the fixture cannot list contenders)")
            await anyio.sleep(IDLE_SECONDS)  # an observation window: nothing changes in it
            assert not got, f"waiter {got[0][0]} got the {kind} while it was held"
            idle = await harness.wakeups(waiters)
            if idle is None:
                unchecked.append("wake-ups (the fixture does not count them)")
            else:
                assert idle == 0, (
                    f"waiters woke {idle} times while the lock was held and nothing changed: polling?"
                )
            for turn in range(HANDOVER_WAITERS):
                released = time.monotonic()
                await give_up(current)

                async def next_holder(turn: int = turn) -> None:
                    while len(got) <= turn:
                        await arrived.wait()

                await harness.within(5, next_holder(), f"hand-over {turn}")
                who, current, at = got[turn]
                assert len(got) == turn + 1, "one release let two waiters in"
                latency = at - released
                assert latency <= harness.t(bound), (
                    f"hand-over {turn} took {latency:.3f}s (bound {harness.t(bound):g}s): woken by a poll?"
                )
                tokens.append(current.token)
                if order_known:
                    assert who == turn, f"waiter {who} got {kind} turn {turn}: not FIFO (FAIR)"
                await anyio.sleep(SETTLE_SECONDS)  # let any other woken waiter show itself
                woken = await harness.wakeups(waiters)
                if single and woken is not None:
                    assert woken == turn + 1, (
                        f"{woken} wake-ups after {turn + 1} release(s): a release woke more than "
                        "the next waiter (SINGLE_WAKEUP)"
                    )
            await give_up(current)
        assert _strictly_increasing(tokens), f"tokens across hand-overs: {tokens}"
    return unchecked


class LockTests:
    """Locks: mutual exclusion, fencing tokens, timeouts, clean cancellation, loss."""

    contention_sessions = 8
    contention_rounds = 200
    contention_seconds = 60.0
    """Bound (scaled) on the contention test: well inside pytest's timeout, so that a backend
    whose hand-over is slow fails by this test's message."""

    @asyncio
    async def test_mutual_exclusion_under_contention(self, harness: Harness) -> None:
        """N sessions x M acquisitions of one lock: no overlap, tokens strictly increase."""
        inside = 0
        overlaps = 0
        tokens: list[int] = []

        async def worker(coord: Coordinator) -> None:
            nonlocal inside, overlaps
            lock = coord.lock("contended")
            for _ in range(self.contention_rounds):
                async with lock as held:
                    inside += 1
                    overlaps += inside > 1
                    tokens.append(held.token)
                    await anyio.lowlevel.checkpoint()
                    inside -= 1

        async with harness.sessions(self.contention_sessions) as coords:
            rounds = self.contention_sessions * self.contention_rounds
            with harness.deadline(self.contention_seconds, f"{rounds} acquisitions"):
                async with anyio.create_task_group() as tg:
                    for coord in coords:
                        tg.start_soon(worker, coord)
        assert overlaps == 0
        assert len(tokens) == self.contention_sessions * self.contention_rounds
        assert _strictly_increasing(tokens), "fencing tokens must strictly increase across holders"

    @asyncio
    async def test_release_hands_over(self, harness: Harness) -> None:
        async with harness.sessions(2) as (a, b):
            held_a = await a.lock("handover").acquire()
            assert held_a.held
            got: list[HeldLock] = []

            async def wait_b() -> None:
                got.append(await b.lock("handover").acquire())

            with harness.deadline(10, "the release handing over to the waiter"):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(wait_b)
                    assert await b.lock("handover").try_acquire() is None
                    await held_a.release()
            assert not held_a.held
            (held_b,) = got
            assert held_b.held
            assert held_b.token > held_a.token
            assert held_b.name == "handover"
            assert held_b.identity == b.identity
            await held_b.release()

    handover_bound = 0.5
    """Seconds (scaled) within which a release hands the lock to the next waiter."""

    @asyncio
    async def test_release_hands_over_in_turn_without_polling_or_herd(self, harness: Harness) -> None:
        """A holder and 4 waiters in their own sessions: no waiter wakes while the lock is held;
        each release hands over within a small bound, in FIFO order under FAIR, waking exactly
        one waiter under SINGLE_WAKEUP."""
        unchecked = await _hand_over(harness, "lock", self.handover_bound)
        if unchecked:
            not_run(f"ran, but could not check {'; '.join(unchecked)} ({harness.scheme})")

    @asyncio
    async def test_try_acquire_never_waits(self, harness: Harness) -> None:
        async with harness.sessions(2) as (a, b):
            held = await a.lock("try").acquire()
            assert await harness.within(2, b.lock("try").try_acquire(), "try_acquire on a held lock") is None
            await held.release()
            again = await harness.within(2, b.lock("try").try_acquire(), "try_acquire on a free lock")
            assert again is not None
            assert again.token > held.token
            await again.release()

    @asyncio
    async def test_acquire_timeout(self, harness: Harness) -> None:
        async with harness.sessions(2) as (a, b):
            held = await a.lock("timeout").acquire()
            start = anyio.current_time()
            with pytest.raises(AcquireTimeout) as info:
                await harness.within(3, b.lock("timeout").acquire(timeout=0.3), "acquire timeout")
            assert isinstance(info.value, TimeoutError)
            assert anyio.current_time() - start >= 0.3
            # The timed-out waiter left nothing behind: the next acquirer is not delayed.
            await held.release()
            nxt = await harness.within(2, a.lock("timeout").try_acquire(), "try_acquire after a timeout")
            assert nxt is not None
            await nxt.release()

    @asyncio
    async def test_cancelled_acquire_leaves_nothing_behind(self, harness: Harness) -> None:
        async with harness.sessions(3) as (a, b, c):
            held = await a.lock("cancel").acquire()
            # A waiter that is surely queued (its timed acquire ran out while waiting) and one
            # cancelled from outside: neither may leave a contender that blocks c.
            with pytest.raises(AcquireTimeout):
                await b.lock("cancel").acquire(timeout=0.3)
            with anyio.move_on_after(0.3) as scope:
                await b.lock("cancel").acquire()
            assert scope.cancelled_caught
            await held.release()
            nxt = await harness.within(2, c.lock("cancel").try_acquire(), "try_acquire after cancelled waits")
            assert nxt is not None, "a cancelled waiter left a contender behind"
            await nxt.release()

    @asyncio
    async def test_body_error_releases(self, harness: Harness) -> None:
        async with harness.sessions(2) as (a, b):
            with pytest.raises(ZeroDivisionError):
                async with a.lock("error"):
                    1 / 0  # noqa: B018
            nxt = await b.lock("error").try_acquire()
            assert nxt is not None
            await nxt.release()

    @asyncio
    async def test_cancelled_body_releases(self, harness: Harness) -> None:
        async with harness.sessions(2) as (a, b):
            entered = anyio.Event()

            async def hold() -> None:
                async with a.lock("cancelled-body"):
                    entered.set()
                    await anyio.sleep_forever()

            async with anyio.create_task_group() as tg:
                tg.start_soon(hold)
                await harness.within(5, entered.wait(), "entering the lock")
                tg.cancel_scope.cancel()
            nxt = await harness.within(2, b.lock("cancelled-body").try_acquire(), "try_acquire")
            assert nxt is not None
            await nxt.release()

    @asyncio
    async def test_release_twice_is_not_held(self, harness: Harness) -> None:
        async with harness.session() as a:
            held = await a.lock("twice").acquire()
            await held.release()
            with pytest.raises(NotHeld):
                await held.release()
            assert not held.held
            assert not held.lost

    @asyncio
    @pytest.mark.requires(Capability.EXPIRE_SESSION)
    async def test_expiry_cancels_body_and_raises_lock_lost(self, harness: Harness) -> None:
        async with harness.sessions(2) as (a, b):
            entered = anyio.Event()
            outcome: list[BaseException] = []
            first: list[HeldLock] = []
            body_cancelled = False

            async def hold() -> None:
                nonlocal body_cancelled
                try:
                    async with a.lock("expiry") as held:
                        first.append(held)
                        entered.set()
                        try:
                            await anyio.sleep_forever()
                        except anyio.get_cancelled_exc_class():
                            body_cancelled = True
                            raise
                except LockLost as exc:
                    outcome.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(hold)
                await harness.within(5, entered.wait(), "entering the lock")
                old_session = await harness.expire(a)
                await harness.within(10, first[0].wait_lost(), "the loss being noticed")
            assert body_cancelled, "the body must be cancelled when the lock is lost"
            assert len(outcome) == 1
            assert isinstance(outcome[0], LockLost)
            assert first[0].lost
            assert not first[0].held
            with pytest.raises(LockLost):
                await first[0].release()
            # Another session takes the lock, with a higher token.
            taken = await harness.within(10, b.lock("expiry").acquire(), "another session acquiring")
            assert taken.token > first[0].token
            await taken.release()
            # The coordinator opened a new session by itself and can acquire again.
            await harness.wait_state(a, SessionState.CONNECTED)
            assert a.session_id is not None
            assert a.session_id != old_session
            again = await harness.within(10, a.lock("expiry").acquire(), "acquiring on the new session")
            assert again.token > taken.token
            await again.release()

    @asyncio
    @pytest.mark.requires(Capability.EXPIRE_SESSION)
    async def test_release_after_loss_raises(self, harness: Harness) -> None:
        async with harness.session() as a:
            held = await a.lock("lost-release").acquire()
            await harness.expire(a)
            await harness.within(10, held.wait_lost(), "the loss being noticed")
            with pytest.raises(LockLost):
                await held.release()

    @asyncio
    @pytest.mark.requires(Capability.EXPIRE_SESSION)
    async def test_waiter_survives_session_loss(self, harness: Harness) -> None:
        """A waiting acquire whose session is lost goes on waiting on the next session."""
        async with harness.sessions(2) as (a, b):
            held = await a.lock("waiter").acquire()
            got: list[HeldLock] = []
            async with anyio.create_task_group() as tg:

                async def wait_b() -> None:
                    got.append(await b.lock("waiter").acquire())

                tg.start_soon(wait_b)
                await harness.expire_and_recover(b)
                await held.release()
            assert got
            assert got[0].held
            assert got[0].token > held.token
            await got[0].release()

    @asyncio
    @pytest.mark.faults
    @pytest.mark.requires(Capability.CROSS_PROCESS)
    async def test_crash_failover(self, harness: Harness, request: pytest.FixtureRequest) -> None:
        """SIGKILL a holder process: another process holds the lock within the bound, and not
        before the floor (the holder's session was alive until then)."""
        await _crash_failover(harness, request, "lock")

    @asyncio
    @pytest.mark.requires(Capability.CROSS_PROCESS)
    async def test_exclusion_across_processes(self, harness: Harness, request: pytest.FixtureRequest) -> None:
        """Holder processes take the lock in a loop (a scaled 20 s): their spans, in one log
        with the machine's monotonic clock, never overlap; tokens increase; the fenced resource
        in its own process refused none of their writes."""
        await _exclusion_across_processes(harness, request, "lock", self.exclusion_seconds)

    exclusion_seconds = 20.0
    """How long (scaled) the holder processes of the cross-process exclusion test loop."""


async def _crash_failover(
    harness: Harness, request: pytest.FixtureRequest, kind: Literal["lock", "election"]
) -> None:
    name = f"crash-{kind}"
    arguments = [] if kind == "lock" else ["--election", "crashed"]
    async with harness.holder(name, *arguments, label="the holder process") as holder:
        held = await holder.next("held", harness.t(20))
        assert held.token is not None
        async with harness.session() as b:
            if kind == "lock":
                assert await b.lock(name).try_acquire() is None, "try_acquire got a held lock"
            else:
                assert await b.election(name).leader() == Leader(b"crashed", held.token)
            holder.kill()
            start = time.monotonic()
            wait = harness.failover_bound + 5
            taken: HeldLock | Leadership = await harness.within(
                wait,
                b.lock(name).acquire() if kind == "lock" else b.election(name).campaign(b"b"),
                "taking over from the killed holder",
            )
            failover = time.monotonic() - start
            await (taken.release() if isinstance(taken, HeldLock) else taken.resign())
    request.node.user_properties.extend(
        [
            ("failover_seconds", round(failover, 3)),
            ("failover_bound_seconds", round(harness.failover_bound, 3)),
        ]
    )
    assert taken.token > held.token
    assert failover >= harness.takeover_floor, (
        f"another session got the {kind} {failover:.2f}s after its holder was killed, before its "
        f"session could have ended (floor {harness.takeover_floor:g}s)"
    )
    assert failover <= harness.t(harness.failover_bound), f"failover took {failover:.2f}s"


async def span_holders(
    harness: Harness, name: str, arguments: Sequence[list[str]], seconds: float, *, label: str = "holder"
) -> tuple[list[Span], list[Decision], float]:
    """Holder processes on ``name`` (the i-th with ``arguments[i]``, labelled ``p<i>``), each
    appending its spans to one shared log and writing to one fenced resource process, for a
    scaled ``seconds``; then killed. Their spans, the resource's decisions on ``name``, and
    when they were killed (a span still held counts as held until then)."""
    with tempfile.TemporaryDirectory(prefix="coordination-spans-") as folder:
        log = os.path.join(folder, "spans")
        async with (
            FencedProcess.start(os.path.join(folder, "resource")) as resource,
            AsyncExitStack() as stack,
        ):
            holders = []
            for i, given in enumerate(arguments):
                shared = ["--spans", log, "--label", f"p{i}", "--resource", resource.address]
                holders.append(
                    await stack.enter_async_context(
                        harness.holder(name, *given, *shared, label=f"{label} p{i}")
                    )
                )
            await anyio.sleep(harness.t(seconds))
            for holder in holders:
                holder.kill()
            stopped = time.monotonic()
            for holder in holders:
                await holder.wait(harness.t(10))
        return read_spans(log), resource.decisions(name), stopped


async def _exclusion_across_processes(
    harness: Harness, request: pytest.FixtureRequest, kind: Literal["lock", "election"], seconds: float
) -> None:
    name = f"exclusive-{kind}"
    processes = 3
    arguments = [
        ["--loop", "--hold", "0.01:0.05", "--write-every", "0.005"]
        + (["--election", f"p{i}"] if kind == "election" else [])
        for i in range(processes)
    ]
    spans, decisions, stopped = await span_holders(harness, name, arguments, seconds)
    overlaps = overlapping(spans, stopped)
    refused = [d for d in decisions if not d.accepted]
    request.node.user_properties.extend([("overlaps", len(overlaps)), ("acquisitions", len(spans))])
    assert not overlaps, f"{len(overlaps)} overlapping spans across processes, e.g. {overlaps[:3]}"
    assert _strictly_increasing([span.token for span in spans]), "tokens must increase in the order held"
    assert len({span.label for span in spans}) == processes, "every holder process held at least once"
    assert len(spans) >= 10, f"only {len(spans)} acquisitions in {harness.t(seconds):g}s"
    assert decisions, "the holders wrote nothing to the fenced resource"
    assert not refused, f"the fenced resource refused writes of healthy holders: {refused[:3]}"


class ElectionTests:
    """Elections: one leader, hand-over on resign and expiry, observe, proclaim."""

    candidates = 5
    contention_seconds = 60.0
    """Bound (scaled) on the many-candidates test, well inside pytest's timeout."""

    @asyncio
    async def test_one_leader_among_many(self, harness: Harness) -> None:
        leading = 0
        most = 0
        tokens: list[int] = []

        async def candidate(coord: Coordinator, i: int) -> None:
            nonlocal leading, most
            async with coord.election("one").campaign(f"node-{i}".encode()) as leadership:
                leading += 1
                most = max(most, leading)
                tokens.append(leadership.token)
                leader = await coord.election("one").leader()
                assert leader == Leader(f"node-{i}".encode(), leadership.token)
                for _ in range(5):
                    await anyio.lowlevel.checkpoint()
                leading -= 1

        async with harness.sessions(self.candidates) as coords:
            with harness.deadline(self.contention_seconds, f"{self.candidates} candidates leading in turn"):
                async with anyio.create_task_group() as tg:
                    for i, coord in enumerate(coords):
                        tg.start_soon(candidate, coord, i)
        assert most == 1
        assert len(tokens) == self.candidates
        assert _strictly_increasing(tokens)

    @asyncio
    async def test_lock_and_election_of_one_name_share_a_queue_as_declared(self, harness: Harness) -> None:
        """Under SHARED_QUEUE a held lock keeps a campaign of its name waiting (and the other way
        round) until released; without it, the two are independent."""
        shared = Capability.SHARED_QUEUE in harness.capabilities
        async with harness.sessions(2) as (a, b):
            held = await a.lock("both").acquire()
            if shared:
                with pytest.raises(AcquireTimeout):
                    await b.election("both").campaign(b"b", timeout=harness.t(0.5))
                with harness.deadline(10, "the campaign after the lock's release"):
                    async with anyio.create_task_group() as tg:
                        leading = anyio.Event()

                        async def campaign() -> None:
                            async with b.election("both").campaign(b"b") as leadership:
                                leading.set()
                                assert await a.lock("both").try_acquire() is None, (
                                    "SHARED_QUEUE: a lock was taken while its name's election had a leader"
                                )
                                await leadership.resign()

                        tg.start_soon(campaign)
                        await held.release()
                        await leading.wait()
            else:
                leadership = await harness.within(
                    5, b.election("both").campaign(b"b"), "a campaign while a lock of its name is held"
                )
                assert await b.lock("other").try_acquire() is not None
                assert await a.lock("both").try_acquire() is None  # the lock itself is still held
                await leadership.resign()
                await held.release()

    handover_bound = 0.5
    """Seconds (scaled) within which a resignation hands leadership to the next candidate."""

    @asyncio
    async def test_resign_hands_over_in_turn_without_polling_or_herd(self, harness: Harness) -> None:
        """A leader and 4 candidates in their own sessions: no candidate wakes while the leader
        leads; each resignation hands over within a small bound, in FIFO order under FAIR,
        waking exactly one candidate under SINGLE_WAKEUP."""
        unchecked = await _hand_over(harness, "election", self.handover_bound)
        if unchecked:
            not_run(f"ran, but could not check {'; '.join(unchecked)} ({harness.scheme})")

    @asyncio
    @pytest.mark.faults
    @pytest.mark.requires(Capability.CROSS_PROCESS)
    async def test_leader_crash_failover(self, harness: Harness, request: pytest.FixtureRequest) -> None:
        """SIGKILL a leader process: another candidate leads within the bound, not before the floor."""
        await _crash_failover(harness, request, "election")

    @asyncio
    @pytest.mark.requires(Capability.CROSS_PROCESS)
    async def test_one_leader_across_processes(
        self, harness: Harness, request: pytest.FixtureRequest
    ) -> None:
        """Candidate processes lead and resign in a loop (a scaled 20 s): their terms never
        overlap; tokens increase; the fenced resource refused none of their writes."""
        await _exclusion_across_processes(harness, request, "election", self.exclusion_seconds)

    exclusion_seconds = 20.0
    """How long (scaled) the candidate processes of the cross-process election test loop."""

    @asyncio
    async def test_no_leader(self, harness: Harness) -> None:
        async with harness.session() as a:
            assert await a.election("empty").leader() is None
            async for leader in a.election("empty").observe():
                assert leader is None
                break

    @asyncio
    async def test_observe_sees_resign_handover_and_proclaim(self, harness: Harness) -> None:
        async with harness.sessions(3) as (a, b, watcher), anyio.create_task_group() as tg:
            leaders = harness.record(tg, watcher.election("ho").observe())
            await leaders.until(None, "observe() yielding no leader")
            leader_a = await a.election("ho").campaign(b"a")
            await leaders.until(Leader(b"a", leader_a.token), "observe() seeing a")
            await leader_a.proclaim(b"a2")
            assert leader_a.value == b"a2"
            await leaders.until(Leader(b"a2", leader_a.token), "observe() seeing the proclaim")
            assert await b.election("ho").leader() == Leader(b"a2", leader_a.token)
            async with anyio.create_task_group() as inner:
                got = []

                async def campaign_b() -> None:
                    got.append(await b.election("ho").campaign(b"b"))

                inner.start_soon(campaign_b)
                await leader_a.resign()
            (leader_b,) = got
            assert leader_b.token > leader_a.token
            await leaders.until(Leader(b"b", leader_b.token), "observe() seeing b")
            assert await a.election("ho").leader() == Leader(b"b", leader_b.token)
            await leader_b.resign()
            await leaders.until(None, "observe() seeing no leader")
            tg.cancel_scope.cancel()
            assert [s for s in leaders.seen if s is not None] == [
                Leader(b"a", leader_a.token),
                Leader(b"a2", leader_a.token),
                Leader(b"b", leader_b.token),
            ]

    @asyncio
    @pytest.mark.requires(Capability.EXPIRE_SESSION)
    async def test_expiry_hands_over_and_raises_leadership_lost(self, harness: Harness) -> None:
        async with harness.sessions(2) as (a, b):
            entered = anyio.Event()
            outcome: list[BaseException] = []
            first = []

            body_cancelled = False

            async def lead_a() -> None:
                nonlocal body_cancelled
                try:
                    async with a.election("exp").campaign(b"a") as leadership:
                        first.append(leadership)
                        entered.set()
                        try:
                            await anyio.sleep_forever()
                        except anyio.get_cancelled_exc_class():
                            body_cancelled = True
                            raise
                except LeadershipLost as exc:
                    outcome.append(exc)

            got = []

            async def lead_b() -> None:
                got.append(await b.election("exp").campaign(b"b"))

            with harness.deadline(15, "the expired leader's body ending and b leading"):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lead_a)
                    await harness.within(5, entered.wait(), "a leading")
                    tg.start_soon(lead_b)
                    await harness.expire(a)
            assert body_cancelled, "the body must be cancelled when the leadership is lost"
            assert len(outcome) == 1
            assert isinstance(outcome[0], LeadershipLost)
            assert got[0].token > first[0].token
            assert await a.election("exp").leader() == Leader(b"b", got[0].token)
            with pytest.raises(LeadershipLost):
                await first[0].proclaim(b"late")
            await got[0].resign()
            with pytest.raises(NotHeld):
                await got[0].proclaim(b"after resign")

    @asyncio
    async def test_campaign_timeout_and_cancel_leave_nothing(self, harness: Harness) -> None:
        async with harness.sessions(3) as (a, b, c):
            leadership = await a.election("ct").campaign(b"a")
            with pytest.raises(AcquireTimeout):
                await b.election("ct").campaign(b"b", timeout=0.3)
            with anyio.move_on_after(0.3):
                await b.election("ct").campaign(b"b")
            await leadership.resign()
            nxt = await harness.within(3, c.election("ct").campaign(b"c"), "campaign after cancelled ones")
            assert await a.election("ct").leader() == Leader(b"c", nxt.token)
            await nxt.resign()

    @asyncio
    async def test_candidates_list_the_queue_leader_first(self, harness: Harness) -> None:
        """Every candidate's value, leader first, then in the order they joined; a proclaim
        shows; a cancelled campaign and a resigned leader leave the list at once."""
        async with harness.sessions(4) as (a, b, c, d):
            election = a.election("cands")
            assert await election.candidates() == []
            leadership = await a.election("cands").campaign(b"a")
            assert await election.candidates() == [b"a"]
            got: dict[bytes, Leadership] = {}
            scopes: dict[bytes, anyio.CancelScope] = {}
            ended: dict[bytes, anyio.Event] = {}

            async def campaign(coord: Coordinator, value: bytes) -> None:
                ended[value] = anyio.Event()
                try:
                    with anyio.CancelScope() as scopes[value]:
                        got[value] = await coord.election("cands").campaign(value)
                finally:
                    ended[value].set()

            async with anyio.create_task_group() as tg:
                expected = [b"a"]
                for coord, value in ((b, b"b"), (c, b"c"), (d, b"d")):
                    tg.start_soon(campaign, coord, value)
                    expected.append(value)
                    await _candidates(harness, election, list(expected), f"{value!r} queued")
                await leadership.proclaim(b"a v2")
                assert await election.candidates() == [b"a v2", b"b", b"c", b"d"], "a proclaim shows"
                scopes[b"c"].cancel()
                await harness.within(5, ended[b"c"].wait(), "c's cancelled campaign ending")
                assert await election.candidates() == [b"a v2", b"b", b"d"], "a cancelled campaign leaves"
                await leadership.resign()
                assert b"a v2" not in await election.candidates(), "a resigned leader leaves"

                def handed_over(now: list[bytes]) -> bool:
                    return len(now) == 2 and set(now) == {b"b", b"d"} and bool(got)

                now = await _candidates(harness, election, handed_over, "b or d leading")
                (value,) = got
                assert now[0] == value, f"the leader {value!r} comes first: {now}"
                if Capability.FAIR in harness.capabilities:
                    assert now == [b"b", b"d"], "FAIR: b joined first, so it leads"
                tg.cancel_scope.cancel()
            for leading in got.values():
                await leading.resign()
            assert await election.candidates() == []

    @asyncio
    @pytest.mark.requires(Capability.EXPIRE_SESSION)
    async def test_candidates_drop_an_expired_leader(self, harness: Harness) -> None:
        async with harness.sessions(2) as (a, b):
            election = b.election("cands-exp")
            leadership = await a.election("cands-exp").campaign(b"a")
            async with anyio.create_task_group() as tg:
                got: list[Leadership] = []

                async def campaign() -> None:
                    got.append(await election.campaign(b"b"))

                tg.start_soon(campaign)
                await _candidates(harness, election, [b"a", b"b"], "b queued behind a")
                await harness.expire(a)
            await _candidates(harness, election, [b"b"], "the expired leader leaving")
            assert got[0].token > leadership.token
            await got[0].resign()
            assert await election.candidates() == []


async def _candidates(
    harness: Harness, election: Election, done: list[bytes] | Callable[[list[bytes]], bool], what: str
) -> list[bytes]:
    """``election.candidates()`` once it equals ``done`` (or ``done`` accepts it): read again
    until then (a list has no watch), for at most 5 s scaled."""

    async def poll() -> list[bytes]:
        while True:
            now = await election.candidates()
            if now == done if isinstance(done, list) else done(now):
                return now
            await anyio.sleep(0.01)

    return await harness.within(5, poll(), what)


class GroupTests:
    """Group membership: join, leave, members and watch; a member goes with its session and
    is re-joined by its coordinator on the next one."""

    many_members = 1000
    """How many members the crowd test joins (over ``member_sessions`` coordinators)."""

    member_sessions = 10

    @asyncio
    async def test_join_list_leave(self, harness: Harness) -> None:
        """A joined member is listed at once by any session, sorted by id, with its value;
        one coordinator may have several; leave and the end of ``async with`` remove it."""
        async with harness.sessions(3) as (a, b, c):
            group = c.group("workers")
            assert await group.members() == []
            async with a.group("workers").join(b"a:1") as ma:
                assert (ma.value, ma.joined) == (b"a:1", True)
                assert isinstance(ma.id, str)
                assert ma.id
                mb = await b.group("workers").join(b"b:1")
                mb2 = await b.group("workers").join(b"b:2")
                assert len({ma.id, mb.id, mb2.id}) == 3, "ids are unique"
                expected = _members(ma, mb, mb2)
                assert await group.members() == expected, "every member, sorted by id"
                assert await a.group("workers").members() == expected, "the same from a member's session"
                assert await c.group("workers-other").members() == [], "another group shares nothing"
                await mb.leave()
                assert not mb.joined
                assert await group.members() == _members(ma, mb2), "leave() removes the member at once"
                await mb.leave()  # leaving twice is harmless
                await mb2.leave()
            assert not ma.joined
            assert await group.members() == [], "the end of async with leaves"

    @asyncio
    async def test_watch_sees_joins_and_leaves(self, harness: Harness) -> None:
        """The watch yields the current members first, then the list after each change, each
        list a state the group was in (in order, no repeats)."""
        async with harness.sessions(2) as (a, w), anyio.create_task_group() as tg:
            watched = harness.record(tg, w.group("watched").watch())
            await watched.until([], "the empty group, first")
            m1 = await a.group("watched").join(b"1")
            await watched.until(_members(m1), "a join")
            m2 = await a.group("watched").join(b"2")
            await watched.until(_members(m1, m2), "a second join")
            late = harness.record(tg, w.group("watched").watch())
            await late.until(_members(m1, m2), "a new watch starting with the current members")
            assert late.seen[0] == _members(m1, m2), f"a watch starts with the current list: {late.seen}"
            await m1.leave()
            await watched.until(_members(m2), "a leave")
            await m2.leave()
            await watched.until([], "the last leave")
            tg.cancel_scope.cancel()
        states = [[], _members(m1), _members(m1, m2), _members(m2), []]
        _in_order(watched, states)

    @asyncio
    async def test_a_closed_coordinator_leaves_no_member(self, harness: Harness) -> None:
        """Members that never left go with their coordinator's session when it closes."""
        async with harness.session() as w:
            async with harness.session() as a:
                m = await a.group("closing").join(b"x")
                assert await w.group("closing").members() == _members(m)
            assert not m.joined
            assert await w.group("closing").members() == [], "closing the coordinator ends its members"
            await m.leave()  # after close: harmless

    @asyncio
    @pytest.mark.requires(Capability.EXPIRE_SESSION)
    async def test_member_rejoins_after_its_session_is_lost(self, harness: Harness) -> None:
        """A member whose session expired is joined again, with the same id, on the
        coordinator's next session, and goes with that session when it closes."""
        async with harness.session() as w, anyio.create_task_group() as tg:
            watched = harness.record(tg, w.group("rejoin").watch())
            async with harness.session() as a:
                m = await a.group("rejoin").join(b"a")
                await watched.until(_members(m), "the join")
                old = await harness.expire_and_recover(a)
                assert a.session_id != old
                await harness.within(10, _joined(m), "the member joining again on the new session")
                assert await w.group("rejoin").members() == _members(m), "the same id, back"
                await watched.until(_members(m), "the watch seeing it back")
            await watched.until([], "the re-joined member going with the session it joined")
            tg.cancel_scope.cancel()

    @asyncio
    async def test_many_members_one_watch(self, harness: Harness, request: pytest.FixtureRequest) -> None:
        """1,000 members joined by 10 coordinators, watched by another session: the watch ends
        on all of them, with one server-side watch (not one per member), then on none."""
        count, sessions = self.many_members, self.member_sessions
        async with harness.sessions(sessions) as coords, harness.session() as w:
            baseline = await harness.watches(w)
            async with anyio.create_task_group() as tg:
                watched = harness.record(tg, w.group("crowd").watch())
                await watched.until([], "the empty group, first")
                joined: list[Membership] = []
                limit = anyio.CapacityLimiter(50)

                async def join(i: int) -> None:
                    async with limit:
                        joined.append(await coords[i % sessions].group("crowd").join(f"m{i}".encode()))

                started = time.monotonic()
                with harness.deadline(60, f"{count} joins"):
                    async with anyio.create_task_group() as joins:
                        for i in range(count):
                            joins.start_soon(join, i)
                join_seconds = time.monotonic() - started
                expected = _members(*joined)
                await watched.until(expected, f"the watch seeing all {count} members", 30)
                seen_all = time.monotonic() - started
                assert await w.group("crowd").members() == expected
                if baseline is not None:
                    await _one_watch(harness, w, baseline)
                with harness.deadline(60, f"{count} leaves"):
                    async with anyio.create_task_group() as leaves:
                        for membership in joined:
                            leaves.start_soon(membership.leave)
                await watched.until([], "the watch seeing every member leave", 30)
                tg.cancel_scope.cancel()
        request.node.user_properties.extend(
            [("join_seconds", round(join_seconds, 3)), ("watch_all_seconds", round(seen_all, 3))]
        )
        assert all(a != b for a, b in itertools.pairwise(watched.seen)), "a list repeated"
        if baseline is None:
            not_run("the fixture cannot count the server's watches (CoordinationFixtures.watches)")

    @asyncio
    @pytest.mark.requires(Capability.CROSS_PROCESS)
    async def test_a_dead_member_leaves_another_process_watch(
        self, harness: Harness, request: pytest.FixtureRequest
    ) -> None:
        """A member process SIGKILLed leaves the watch of this process within the failover
        bound (not before its session could end); a new process joining shows at once."""
        async with harness.session() as w, anyio.create_task_group() as tg:
            watched = harness.record(tg, w.group("procs").watch())
            async with harness.holder("procs", "--member", "p1", label="the member process") as member:
                joined = await member.next("joined", harness.t(20))
                await watched.until([Member(joined.detail, b"p1")], "the member process joining", 10)
                member.kill()
                killed = time.monotonic()
                await watched.until([], "the killed member leaving", harness.failover_bound + 5)
                gone = time.monotonic() - killed
            async with harness.holder("procs", "--member", "p1", label="a new member process") as again:
                rejoined = await again.next("joined", harness.t(20))
                assert rejoined.detail != joined.detail, "a new process is a new member"
                await watched.until([Member(rejoined.detail, b"p1")], "the new member process joining", 10)
            tg.cancel_scope.cancel()
        request.node.user_properties.append(("member_gone_seconds", round(gone, 3)))
        assert gone >= harness.takeover_floor, (
            f"the member left {gone:.2f}s after its process was killed, before its session could"
            f" have ended (floor {harness.takeover_floor:g}s)"
        )
        assert gone <= harness.t(harness.failover_bound), f"the dead member stayed {gone:.2f}s"

    @asyncio
    @pytest.mark.requires(Capability.CROSS_PROCESS)
    async def test_a_paused_member_leaves_and_comes_back(
        self, harness: Harness, request: pytest.FixtureRequest
    ) -> None:
        """A member process stopped (SIGSTOP) past its TTL leaves another process's watch; once
        it runs again its coordinator opens a new session and the member comes back, same id."""
        async with harness.session() as w, anyio.create_task_group() as tg:
            watched = harness.record(tg, w.group("paused").watch())
            async with harness.holder("paused", "--member", "p", label="the member process") as member:
                joined = await member.next("joined", harness.t(20))
                expected = [Member(joined.detail, b"p")]
                await watched.until(expected, "the member process joining", 10)
                member.pause()
                paused = time.monotonic()
                await watched.until([], "the stopped member leaving", harness.failover_bound + 5)
                gone = time.monotonic() - paused
                member.resume()
                resumed = time.monotonic()
                await watched.until(expected, "the member coming back once it runs again", 20)
                back = time.monotonic() - resumed
            tg.cancel_scope.cancel()
        request.node.user_properties.extend(
            [("member_gone_seconds", round(gone, 3)), ("member_back_seconds", round(back, 3))]
        )
        assert gone >= harness.takeover_floor, f"the member left {gone:.2f}s after its process stopped"


def _members(*memberships: Membership) -> list[Member]:
    return sorted(Member(m.id, m.value) for m in memberships)


async def _joined(membership: Membership) -> None:
    """Return once ``membership`` is on the server on a live session (read again: the
    membership has no event for it)."""
    while True:
        if membership.joined:
            return
        await anyio.sleep(0.01)


def _in_order(recorder: Recorder[list[Member]], states: list[list[Member]]) -> None:
    """Every list ``recorder`` saw is one of ``states``, in their order, none twice running."""
    position = 0
    for seen in recorder.seen:
        while position < len(states) and states[position] != seen:
            position += 1
        assert position < len(states), f"the watch yielded {seen}, not a state in order: {recorder.seen}"
    assert all(a != b for a, b in itertools.pairwise(recorder.seen)), f"a list repeated: {recorder.seen}"


async def _one_watch(harness: Harness, coord: Coordinator, baseline: int) -> None:
    """Wait (5 s scaled) until the server holds exactly one watch more for ``coord`` than
    ``baseline``, in three counts running 0.1 s apart (a server's own short-lived watches
    come and go): one for the whole group, not one per member, and not none (polling)."""
    counts: list[int] = []

    async def settled() -> None:
        while True:
            now = await harness.watches(coord)
            assert now is not None
            counts.append(now - baseline)
            if counts[-3:] == [1, 1, 1]:
                return
            await anyio.sleep(0.1)

    with anyio.move_on_after(harness.t(5)):
        await settled()
        return
    pytest.fail(f"a group watch must hold one server-side watch; counted {sorted(set(counts))}")


class ConfigTests:
    """Config values: versions, compare-and-set, delete, ordered watches."""

    watch_writes = 50

    @asyncio
    async def test_get_set_delete(self, harness: Harness) -> None:
        async with harness.session() as a:
            cfg = a.config("settings/db")
            assert await cfg.get() is None
            v1 = await cfg.set(b"one")
            assert await cfg.get() == Versioned(b"one", v1)
            v2 = await cfg.set(b"two")
            assert v2 > v1
            assert await cfg.get() == Versioned(b"two", v2)
            assert await cfg.delete() is True
            assert await cfg.get() is None
            assert await cfg.delete() is False
            v3 = await cfg.set(b"")
            assert v3 > v2
            assert await cfg.get() == Versioned(b"", v3)

    @asyncio
    async def test_compare_and_set(self, harness: Harness) -> None:
        async with harness.sessions(2) as (a, b):
            cfg_a, cfg_b = a.config("cas"), b.config("cas")
            assert await cfg_a.compare_and_set(b"first", None) is True
            assert await cfg_b.compare_and_set(b"second", None) is False
            current = await cfg_b.get()
            assert current is not None
            assert current.value == b"first"
            assert await cfg_b.compare_and_set(b"stale", current.version - 1) is False
            assert await cfg_b.compare_and_set(b"second", current.version) is True
            assert await cfg_a.compare_and_set(b"lost race", current.version) is False
            latest = await cfg_a.get()
            assert latest is not None
            assert latest.value == b"second"
            assert latest.version > current.version
            await cfg_a.delete()
            assert await cfg_a.compare_and_set(b"again", latest.version) is False
            assert await cfg_a.compare_and_set(b"again", None) is True

    @asyncio
    async def test_values_are_bytes(self, harness: Harness) -> None:
        async with harness.session() as a:
            with pytest.raises(TypeError):
                await a.config("typed").set("text")  # type: ignore[arg-type]

    @asyncio
    async def test_watch_is_ordered_and_ends_on_latest(self, harness: Harness) -> None:
        async with harness.sessions(2) as (writer, reader):
            tap = WatchTap(reader)
            cfg = writer.config("watched")
            first_version = await cfg.set(b"0")
            seen: list[Versioned | None] = []
            last = anyio.Event()
            started = anyio.Event()
            final = str(self.watch_writes).encode()

            async def watch() -> None:
                async for item in reader.config("watched").watch():
                    seen.append(item)
                    started.set()
                    if item is not None and item.value == final:
                        last.set()
                        return

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await harness.within(5, started.wait(), "the first watch item")
                versions = [first_version]
                for i in range(1, self.watch_writes + 1):
                    versions.append(await cfg.set(str(i).encode()))
                await harness.within(10, last.wait(), "the watch seeing the last write")
            assert seen[0] == Versioned(b"0", first_version), "the first item is the current state"
            got = [item for item in seen if item is not None]
            assert _strictly_increasing([item.version for item in got])
            assert _strictly_increasing([int(item.value) for item in got]), (
                "never an older value after a newer"
            )
            for item in got:
                assert item.version == versions[int(item.value)]
            if Capability.EVERY_VERSION in harness.capabilities:
                assert [int(item.value) for item in got] == list(range(self.watch_writes + 1))
            assert tap.backwards() == [], "the backend's watch went back to older versions"

    @asyncio
    async def test_watch_sees_delete_and_recreate(self, harness: Harness) -> None:
        async with harness.sessions(2) as (writer, reader), anyio.create_task_group() as tg:
            cfg = writer.config("recreated")
            items = harness.record(tg, reader.config("recreated").watch())
            await items.until(None, "the first (absent) item")
            v1 = await cfg.set(b"x")
            await items.until(Versioned(b"x", v1), "the watch seeing the write")
            await cfg.delete()
            await items.until(None, "the watch seeing the delete")
            v2 = await cfg.set(b"y")
            await items.until(Versioned(b"y", v2), "the watch seeing the re-create")
            tg.cancel_scope.cancel()
        assert items.seen == [None, Versioned(b"x", v1), None, Versioned(b"y", v2)]

    @asyncio
    @pytest.mark.requires(Capability.EVERY_VERSION)
    async def test_watch_yields_every_version(self, harness: Harness) -> None:
        async with harness.sessions(2) as (writer, reader):
            cfg = writer.config("every")
            await cfg.set(b"0")
            seen: list[bytes] = []
            async with anyio.create_task_group() as tg:
                started, done = anyio.Event(), anyio.Event()

                async def watch() -> None:
                    async for item in reader.config("every").watch():
                        assert item is not None
                        seen.append(item.value)
                        started.set()
                        if item.value == b"20":
                            done.set()
                            return

                tg.start_soon(watch)
                await harness.within(5, started.wait(), "the first watch item")
                for i in range(1, 21):
                    await cfg.set(str(i).encode())
                await harness.within(10, done.wait(), "the last write")
            assert seen == [str(i).encode() for i in range(21)]


class SessionTests:
    """Sessions: state, ids, recovery after loss, clean close."""

    @asyncio
    async def test_connected(self, harness: Harness) -> None:
        async with harness.sessions(3) as coords:
            for coord in coords:
                assert coord.state is SessionState.CONNECTED
                assert coord.backend == harness.backend_class.scheme
                assert isinstance(coord.capabilities, frozenset)
                assert all(isinstance(c, Capability) for c in coord.capabilities)
                async for state in coord.states():
                    assert state is SessionState.CONNECTED
                    break
            ids = [coord.session_id for coord in coords]
            assert None not in ids
            assert len(set(ids)) == 3

    @asyncio
    @pytest.mark.requires(Capability.EXPIRE_SESSION)
    async def test_expiry_is_lost_then_a_new_session(self, harness: Harness) -> None:
        async with harness.session() as a:
            old = await harness.expire_and_recover(a)
            assert a.session_id not in (None, old)
            held = await a.lock("after").acquire(timeout=harness.t(5))
            await held.release()

    @asyncio
    async def test_close_releases_everything(self, harness: Harness) -> None:
        async with harness.session() as b:
            async with harness.session() as a:
                held = await a.lock("closing").acquire()
                leadership = await a.election("closing-election").campaign(b"a")
            assert held.lost
            assert leadership.lost
            got = await harness.within(3, b.lock("closing").try_acquire(), "try_acquire after close")
            assert got is not None
            assert got.token > held.token
            await got.release()
            assert await b.election("closing-election").leader() is None

    @asyncio
    async def test_identity(self, harness: Harness) -> None:
        async with harness.session(identity="worker-7") as a:
            assert a.identity == "worker-7"
            held = await a.lock("who").acquire()
            assert held.identity == "worker-7"
            await held.release()

    @asyncio
    async def test_unopened_coordinator_refuses(self, harness: Harness) -> None:
        coord = harness.connect()
        assert coord.session_id is None
        with pytest.raises(RuntimeError, match="not open"):
            await coord.lock("x").acquire()
        with pytest.raises(RuntimeError, match="not open"):
            await coord.config("x").get()
        with pytest.raises(RuntimeError, match="not open"):
            await coord.election("x").leader()


BAD_NAMES = [
    "",
    "/lead",
    "trail/",
    "dou//ble",
    "..",
    ".",
    "a/../b",
    "nul\x00",
    "new\nline",
    "tab\t",
    "spa ce",
    "ümlaut",
    "star*",
    "x" * 300,
]


class BadInputTests:
    """Bad names, URLs and options raise the documented errors, before any I/O."""

    @pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
    def test_bad_names(self, harness: Harness, name: str) -> None:
        coord = harness.connect()  # not opened: the check must come before any I/O
        for make in (coord.lock, coord.election, coord.config):
            with pytest.raises(InvalidName) as info:
                make(name)
            assert isinstance(info.value, ValueError)

    def test_non_string_name(self, harness: Harness) -> None:
        with pytest.raises(InvalidName):
            harness.connect().lock(42)  # type: ignore[arg-type]

    def test_good_names(self, harness: Harness) -> None:
        coord = harness.connect()
        for name in ("a", "jobs/nightly", "A-b_c.d/e", "x" * 200, "1/2/3"):
            assert coord.lock(name).name == name

    def test_unknown_scheme(self) -> None:
        with pytest.raises(BackendNotFound) as info:
            coordination.connect("nosuchbackend://h:1")
        assert isinstance(info.value, LookupError)
        assert "install" in str(info.value)

    @pytest.mark.parametrize(
        ("suffix", "option"),
        [("bogus=1", "bogus"), ("ttl=abc", "ttl"), ("ttl=-1", "ttl"), ("timeout=", "timeout")],
    )
    def test_bad_url_options(self, harness: Harness, suffix: str, option: str) -> None:
        url = harness.url + ("&" if "?" in harness.url else "?") + suffix
        with pytest.raises(InvalidURL, match=repr(option)) as info:
            coordination.connect(url)
        assert isinstance(info.value, ValueError)

    @pytest.mark.parametrize(
        ("options", "option"),
        [
            ({"ttl": "ten"}, "ttl"),
            ({"ttl": True}, "ttl"),
            ({"nope": 1}, "nope"),
            ({"identity": "\x00"}, "identity"),
        ],
    )
    def test_bad_keyword_options(self, harness: Harness, options: dict[str, object], option: str) -> None:
        with pytest.raises(InvalidURL, match=repr(option)):
            harness.connect(**options)

    def test_keyword_overrides_query(self, harness: Harness) -> None:
        url = harness.url + ("&" if "?" in harness.url else "?") + "ttl=7"
        assert coordination.connect(url).ttl == 7
        assert coordination.connect(url, ttl=9).ttl == 9

    @pytest.mark.parametrize(
        "url", ["no-scheme", "://x", "memory://a/b//c", "etcd://h:99999", "etcd://h:port", "etcd://a,,b"]
    )
    def test_malformed_urls(self, url: str) -> None:
        with pytest.raises(InvalidURL):
            coordination.connect(url)

    def test_default_url(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("COORDINATION_URL", raising=False)
        assert coordination.connect().backend == "memory"
        monkeypatch.setenv("COORDINATION_URL", "memory://from-env?ttl=4")
        coord = coordination.connect()
        assert coord.backend == "memory"
        assert coord.ttl == 4

    @asyncio
    async def test_values_must_be_bytes(self, harness: Harness) -> None:
        async with harness.session() as a:
            with pytest.raises(TypeError):
                a.election("e").campaign("text")  # type: ignore[arg-type]
