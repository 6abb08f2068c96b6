"""``LeaderLoopTests``: ``election.run(job, value, min_interval=...)``, the leader loop.

Several runners on one election, each leading whenever it can, forever:

* the job never runs in two places at once: runner processes where the backend is
  ``CROSS_PROCESS`` (their terms as spans in a shared log, with monotonic times, and every
  write checked by a fenced resource process), else runners on separate sessions;
* ``min_interval`` holds between the terms of one runner, however short its job;
* after a forced expiry of the leader's session, the next runner leads, and the old one's
  job was cancelled and it campaigns again by itself;
* cancelling ``run()`` resigns at once: another runner leads well before the TTL could end;
* a job's exception is logged with the term's token and the runner campaigns again after a
  growing delay; with ``propagate=True`` it is raised from ``run()``, after resigning.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio
import pytest

from coordination import Capability, Coordinator, Leadership
from coordination.primitives import RUN_BACKOFF

from .fixtures import Harness
from .holder import Span, overlapping
from .suite import _strictly_increasing, span_holders

__all__ = ["LeaderLoopTests"]

asyncio = pytest.mark.asyncio

RUNNERS = 3
TOLERANCE = 0.001
"""How much earlier than ``min_interval`` after a term's start the next one may be seen to
start: a term's start is when it was granted (the holding's own clock reading, which
``run()`` measures ``min_interval`` from), so only a timer firing a hair early is allowed."""


@dataclass
class _Term:
    runner: int
    token: int
    start: float
    end: float | None = None
    lost: bool = False


def _gaps(starts: dict[str, list[float]]) -> list[float]:
    """The time between successive term starts of each runner, all runners together."""
    return [b - a for times in starts.values() for a, b in itertools.pairwise(sorted(times))]


class _Runners:
    """In-process runners, each ``election.run()`` on its own coordinator, their terms recorded."""

    def __init__(self, harness: Harness, name: str) -> None:
        self.harness = harness
        self.name = name
        self.terms: list[_Term] = []
        self.changed = anyio.Event()
        self.scopes: dict[int, anyio.CancelScope] = {}

    def job(
        self, runner: int, hold: Callable[[], Awaitable[None]]
    ) -> Callable[[Leadership], Awaitable[None]]:
        async def job(leadership: Leadership) -> None:
            term = _Term(runner, leadership.token, leadership._since)  # when the term began
            self.terms.append(term)
            self._changed()
            try:
                await hold()
            except anyio.get_cancelled_exc_class():
                term.lost = leadership.lost
                raise
            finally:
                term.end = time.monotonic()
                self._changed()

        return job

    def _changed(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    def start(
        self,
        tg: anyio.abc.TaskGroup,
        coords: Sequence[Coordinator],
        hold: Callable[[], Awaitable[None]],
        min_interval: float,
    ) -> None:
        """Runner ``i`` runs on ``coords[i]`` in ``tg``, its job holding with ``hold``; it can be
        cancelled alone through ``scopes[i]``."""
        for runner, coord in enumerate(coords):
            scope = self.scopes[runner] = anyio.CancelScope()
            job = self.job(runner, hold)
            tg.start_soon(self._run, scope, coord, job, f"r{runner}".encode(), min_interval)

    async def _run(
        self,
        scope: anyio.CancelScope,
        coord: Coordinator,
        job: Callable[[Leadership], Awaitable[None]],
        value: bytes,
        min_interval: float,
    ) -> None:
        with scope:
            await coord.election(self.name).run(job, value, min_interval=min_interval)

    async def until(self, done: Callable[[], bool], seconds: float, what: str) -> None:
        async def wait() -> None:
            while not done():
                await self.changed.wait()

        await self.harness.within(seconds, wait(), what)


async def _forever() -> None:
    await anyio.sleep_forever()


class LeaderLoopTests:
    """``election.run()``: one job at a time across runners, re-queued, ``min_interval`` apart."""

    exclusion_seconds = 8.0
    """How long (scaled) the runners of the exclusion test run."""

    min_interval = 0.3
    """The runners' ``min_interval`` in the exclusion and interval tests (seconds, unscaled:
    it is the behaviour measured)."""

    @asyncio
    async def test_the_job_never_runs_in_two_places_at_once(
        self, harness: Harness, request: pytest.FixtureRequest
    ) -> None:
        """Three runners whose jobs last 20-80 ms, for a scaled 8 s: no two terms overlap,
        tokens increase in term order, each runner led, and each runner's terms began at
        least ``min_interval`` apart. Across processes where the backend is CROSS_PROCESS
        (every job's writes also checked by a fenced resource), else on separate sessions."""
        if Capability.CROSS_PROCESS in harness.capabilities:
            spans, stopped = await self._runner_processes(harness, "loop")
        else:
            spans, stopped = await self._runner_tasks(harness, "loop")
        overlaps = overlapping(spans, stopped)
        starts: dict[str, list[float]] = {}
        for span in spans:
            starts.setdefault(span.label, []).append(span.start)
        gaps = _gaps(starts)
        request.node.user_properties.extend(
            [
                ("terms", len(spans)),
                ("overlaps", len(overlaps)),
                ("runners", len(starts)),
                ("min_interval", self.min_interval),
                ("shortest_term_gap", round(min(gaps, default=0.0), 4)),
            ]
        )
        assert not overlaps, f"{len(overlaps)} overlapping terms, e.g. {overlaps[:3]}"
        tokens = [span.token for span in spans]
        assert _strictly_increasing(tokens), f"tokens out of term order: {tokens}"
        assert len(starts) == RUNNERS, f"not every runner led: {sorted(starts)}"
        assert len(spans) >= 2 * RUNNERS, f"only {len(spans)} terms"
        early = [gap for gap in gaps if gap < self.min_interval - TOLERANCE]
        assert not early, (
            f"terms of one runner began closer than min_interval={self.min_interval}: {early[:5]}"
        )

    async def _runner_processes(self, harness: Harness, name: str) -> tuple[list[Span], float]:
        arguments = [
            [
                *("--election", f"p{i}", "--run", "--min-interval", str(self.min_interval)),
                *("--hold", "0.02:0.08", "--write-every", "0.005"),
            ]
            for i in range(RUNNERS)
        ]
        spans, decisions, stopped = await span_holders(
            harness, name, arguments, self.exclusion_seconds, label="runner"
        )
        refused = [d for d in decisions if not d.accepted]
        assert decisions, "the runners wrote nothing to the fenced resource"
        assert not refused, f"the fenced resource refused writes of healthy runners: {refused[:3]}"
        return spans, stopped

    async def _runner_tasks(self, harness: Harness, name: str) -> tuple[list[Span], float]:
        runners = _Runners(harness, name)

        async def hold() -> None:
            await anyio.sleep(random.uniform(0.02, 0.08))

        async with harness.sessions(RUNNERS) as coords, anyio.create_task_group() as tg:
            runners.start(tg, coords, hold, self.min_interval)
            await anyio.sleep(harness.t(self.exclusion_seconds))
            tg.cancel_scope.cancel()
        spans = [
            Span(f"p{t.runner}", t.token, t.start, t.end, "lost" if t.lost else "released")
            for t in runners.terms
        ]
        return spans, time.monotonic()

    @asyncio
    async def test_min_interval_holds_between_terms_of_one_runner(
        self, harness: Harness, request: pytest.FixtureRequest
    ) -> None:
        """Two runners whose jobs return at once: each runner's terms begin at least
        ``min_interval`` apart, and the two take turns rather than one leading again at once."""
        runners = _Runners(harness, "interval")

        async def hold() -> None:
            pass

        async with harness.sessions(2) as coords, anyio.create_task_group() as tg:
            runners.start(tg, coords, hold, self.min_interval)
            await runners.until(lambda: len(runners.terms) >= 8, 30, "8 terms")
            tg.cancel_scope.cancel()
        starts: dict[str, list[float]] = {}
        for term in runners.terms:
            starts.setdefault(str(term.runner), []).append(term.start)
        gaps = _gaps(starts)
        request.node.user_properties.extend(
            [
                ("terms", len(runners.terms)),
                ("min_interval", self.min_interval),
                ("term_gaps", [round(gap, 3) for gap in gaps]),
            ]
        )
        early = [gap for gap in gaps if gap < self.min_interval - TOLERANCE]
        assert not early, (
            f"terms of one runner began closer than min_interval={self.min_interval}: {early[:5]}"
        )
        assert len(starts) == 2, "both runners led"
        tokens = [term.token for term in runners.terms]
        assert _strictly_increasing(tokens), f"tokens out of term order: {tokens}"

    @asyncio
    @pytest.mark.requires(Capability.EXPIRE_SESSION)
    async def test_after_a_forced_expiry_the_next_leader_starts_and_the_old_runner_requeues(
        self, harness: Harness, request: pytest.FixtureRequest
    ) -> None:
        """The leading runner's session is expired from outside: its job is cancelled, the
        next term has a higher token; the old runner campaigns again by itself on its new
        session, not sooner than the delay after a loss, and leads once more (once the other
        runner's ``run()`` is cancelled; where the backend is not FAIR the old runner may win
        the race for the next term itself)."""
        runners = _Runners(harness, "expiry")
        async with harness.sessions(2) as coords, anyio.create_task_group() as tg:
            runners.start(tg, coords, _forever, 0.0)
            await runners.until(lambda: len(runners.terms) >= 1, 15, "a first term")
            first = runners.terms[0]
            expired_at = time.monotonic()
            await harness.expire(coords[first.runner])
            await runners.until(lambda: len(runners.terms) >= 2, 30, "a next term after the expiry")
            second = runners.terms[1]
            takeover = second.start - expired_at
            await runners.until(lambda: first.end is not None, 30, "the old leader's job cancelled")
            assert first.lost, "the old leader's job ended, but not by the loss"
            assert second.token > first.token
            if second.runner == first.runner:
                # Not a queue (Consul: whoever locks first after the lock-delay): the old runner,
                # campaigning again on its new session, may win the race.
                assert Capability.FAIR not in harness.capabilities, (
                    "the old runner led again ahead of the runner that was waiting (FAIR)"
                )
                again = second
            else:
                runners.scopes[second.runner].cancel()
                await runners.until(lambda: len(runners.terms) >= 3, 30, "the old runner leading again")
                again = runners.terms[2]
                assert again.token > second.token
            tg.cancel_scope.cancel()
        assert first.end is not None
        request.node.user_properties.extend(
            [
                ("takeover_seconds", round(takeover, 3)),
                ("requeued_term_after_loss", round(again.start - first.end, 3)),
            ]
        )
        assert again.runner == first.runner
        assert again.start - first.end >= RUN_BACKOFF[0] - TOLERANCE, (
            "led again without the delay after a loss"
        )

    @asyncio
    async def test_cancelling_run_resigns_at_once(
        self, harness: Harness, request: pytest.FixtureRequest
    ) -> None:
        """The leading runner's ``run()`` is cancelled: its job is cancelled, it resigns, and
        the waiting runner leads well before the old session's TTL could have ended; the
        cancelled runner is no longer a candidate."""
        runners = _Runners(harness, "cancel")
        async with harness.sessions(2) as coords, anyio.create_task_group() as tg:
            runners.start(tg, coords, _forever, 0.0)
            await runners.until(lambda: len(runners.terms) >= 1, 15, "a first term")
            first = runners.terms[0]
            election = coords[1 - first.runner].election("cancel")
            cancelled = time.monotonic()
            runners.scopes[first.runner].cancel()
            await runners.until(lambda: len(runners.terms) >= 2, 10, "the other runner leading")
            handover = runners.terms[1].start - cancelled
            assert await election.candidates() == [f"r{1 - first.runner}".encode()]
            tg.cancel_scope.cancel()
        request.node.user_properties.append(("handover_seconds", round(handover, 4)))
        assert first.end is not None, "the job of the cancelled run() kept running"
        assert not first.lost
        assert handover < harness.takeover_floor, (
            f"the other runner led {handover:.3f}s after the cancel: as late as an expiry, not a resignation"
        )

    @asyncio
    async def test_a_failing_job_is_logged_with_its_token_and_requeued(
        self, harness: Harness, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A job that raises at once: each failure is logged at ERROR with the term's token
        (in the message and as the record's ``token``), the runner campaigns again, after
        a delay that grows: at least RUN_BACKOFF's first, then twice that."""
        runners = _Runners(harness, "failing")

        async def fail() -> None:
            raise RuntimeError("the job's own error")

        caplog.set_level(logging.ERROR, logger="coordination")
        async with harness.session() as coord, anyio.create_task_group() as tg:
            runners.start(tg, [coord], fail, 0.0)
            await runners.until(lambda: len(runners.terms) >= 3, 30, "3 failed terms")
            tg.cancel_scope.cancel()
        starts = [term.start for term in runners.terms[:3]]
        first, second = (b - a for a, b in itertools.pairwise(starts))
        assert first >= RUN_BACKOFF[0] - TOLERANCE, f"re-campaigned {first:.3f}s after a failure"
        assert second >= 2 * RUN_BACKOFF[0] - TOLERANCE, (
            f"the delay did not grow: {first:.3f}s then {second:.3f}s"
        )
        failures = [r for r in caplog.records if "the job failed" in r.getMessage()]
        assert len(failures) >= 2
        for record, term in zip(failures, runners.terms, strict=False):
            assert f"token {term.token}" in record.getMessage()
            assert getattr(record, "token", None) == term.token
            assert record.exc_info is not None
            assert isinstance(record.exc_info[1], RuntimeError)

    @asyncio
    async def test_propagate_raises_the_jobs_error_after_resigning(self, harness: Harness) -> None:
        async def fail(leadership: Leadership) -> None:
            raise RuntimeError("the job's own error")

        async with harness.session() as coord:
            election = coord.election("propagate")
            with (
                harness.deadline(10, "run() raising the job's error"),
                pytest.raises(RuntimeError, match="the job's own error"),
            ):
                await election.run(fail, b"me", propagate=True)
            assert await election.leader() is None
            assert await election.candidates() == []

    @asyncio
    async def test_bad_min_interval_is_refused(self, harness: Harness) -> None:
        async with harness.session() as coord:
            for bad in (-1.0, float("inf"), float("nan")):
                with pytest.raises(ValueError, match="min_interval"):
                    await coord.election("bad").run(_job_never_called, b"me", min_interval=bad)


async def _job_never_called(leadership: Leadership) -> None:
    raise AssertionError("the job ran")
