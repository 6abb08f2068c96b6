"""The conformance suite's own regression test: it must fail deliberately broken backends.

Each variant in ``tests/_broken_memory.py`` is the memory backend with one mistake. Its
conformance module (every shipped mixin, ``FaultTests`` included, on
:class:`_broken_memory.BrokenMemoryFixtures`) runs in a pytest subprocess of its own, and the
tests listed in :data:`CATCHES` must fail, each by the suite's own assertion or bound (its
message is checked; never pytest-timeout). The correct memory backend, run the same way, must
pass everything (the control).

A test a variant should not run can be deselected, with the reason in :data:`CATCHES`; none
is today: every wait in the suite has a bound of its own, below pytest's timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _broken_memory import VARIANTS

from coordination.testing.plugin import CAPABILITY_SKIP_PREFIX, NOT_RUN_PREFIX, timeout_multiplier

HELPERS = Path(__file__).parent

INNER_TIMEOUT = 90
"""pytest-timeout of each test in a variant's run (scaled by the multiplier): above every
bound the suite sets itself at the multiplier 1 (60 s at most: the contention tests), below
this module's own."""

INI = f"""\
[pytest]
addopts = --strict-markers --strict-config -p no:cacheprovider
xfail_strict = true
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
timeout = {INNER_TIMEOUT}
filterwarnings = error
"""

MODULE = """\
import _broken_memory
from coordination.testing import (
    BadInputTests,
    ConfigTests,
    ElectionTests,
    FaultTests,
    GroupTests,
    GuardedWriteTests,
    LockTests,
    SessionTests,
)

_broken_memory.register()


class Fixtures(_broken_memory.BrokenMemoryFixtures):
    scheme = {scheme!r}


class TestLock(LockTests, Fixtures):
    pass


class TestElection(ElectionTests, Fixtures):
    pass


class TestConfig(ConfigTests, Fixtures):
    pass


class TestSession(SessionTests, Fixtures):
    pass


class TestBadInput(BadInputTests, Fixtures):
    pass


class TestFaults(FaultTests, Fixtures):
    pass


class TestGroup(GroupTests, Fixtures):
    pass


class TestGuardedWrites(GuardedWriteTests, Fixtures):
    pass
"""

LOCK_HANDOVER = "TestLock::test_release_hands_over_in_turn_without_polling_or_herd"
ELECTION_HANDOVER = "TestElection::test_resign_hands_over_in_turn_without_polling_or_herd"
CONTENTION = "TestLock::test_mutual_exclusion_under_contention"
CONTENTION_BOUND = "acquisitions did not happen within"
POLL_2S = ("woken by a poll?", "a release woke more than the next waiter (SINGLE_WAKEUP)")


@dataclass(frozen=True)
class Catch:
    must_fail: Mapping[str, str | tuple[str, ...] | None]
    """Test id (``Class::test``) -> a fragment of its failure message, or fragments one of
    which it has (``None``: any message)."""
    deselected: Mapping[str, str] = field(default_factory=dict)
    """Test id -> why it is not run for this variant."""
    background: bool = False
    """Run while the others run (a run that mostly waits out the suite's bounds)."""


CATCHES: dict[str, Catch] = {
    "memory-poll50": Catch(
        {
            LOCK_HANDOVER: "while the lock was held and nothing changed: polling?",
            ELECTION_HANDOVER: "while the lock was held and nothing changed: polling?",
            CONTENTION: CONTENTION_BOUND,
        },
        background=True,
    ),
    "memory-poll2s": Catch(
        # Under a timeout multiplier of 4 or more, the scaled hand-over bound lets a 2 s poll
        # through; the count of wake-ups per release (not scaled) still catches it.
        {LOCK_HANDOVER: POLL_2S, ELECTION_HANDOVER: POLL_2S, CONTENTION: CONTENTION_BOUND},
        background=True,
    ),
    "memory-herd": Catch(
        {
            LOCK_HANDOVER: "a release woke more than the next waiter (SINGLE_WAKEUP)",
            ELECTION_HANDOVER: "a release woke more than the next waiter (SINGLE_WAKEUP)",
        }
    ),
    "memory-token-constant": Catch(
        {
            CONTENTION: "fencing tokens must strictly increase across holders",
            "TestLock::test_release_hands_over": "assert 1 > 1",
            "TestLock::test_try_acquire_never_waits": "assert 1 > 1",
            LOCK_HANDOVER: "tokens across hand-overs",
            "TestLock::test_expiry_cancels_body_and_raises_lock_lost": "assert 1 > 1",
            "TestLock::test_waiter_survives_session_loss": "assert 1 > 1",
            "TestElection::test_one_leader_among_many": "_strictly_increasing",
            ELECTION_HANDOVER: "tokens across hand-overs",
            "TestElection::test_observe_sees_resign_handover_and_proclaim": "assert 1 > 1",
            "TestElection::test_expiry_hands_over_and_raises_leadership_lost": "assert 1 > 1",
            "TestSession::test_close_releases_everything": "assert 1 > 1",
            "TestFaults::test_cancelled_waiters_leave_nothing": "assert 1 > 1",
        }
    ),
    "memory-token-session": Catch(
        {
            CONTENTION: "fencing tokens must strictly increase across holders",
            "TestSession::test_close_releases_everything": "assert got.token > held.token",
            "TestFaults::test_cancelled_waiters_leave_nothing": None,
        }
    ),
    "memory-no-withdraw": Catch(
        {
            "TestLock::test_cancelled_acquire_leaves_nothing_behind": "a cancelled waiter left a contender",
            "TestLock::test_acquire_timeout": "assert None is not None",
            "TestLock::test_try_acquire_never_waits": "assert None is not None",
            "TestElection::test_campaign_timeout_and_cancel_leave_nothing": (
                "campaign after cancelled ones did not happen"
            ),
            "TestFaults::test_cancelled_waiters_leave_nothing": "contenders left while their sessions live",
            "TestLock::test_release_hands_over": "the release handing over to the waiter did not happen",
        },
    ),
    "memory-second-in": Catch(
        {
            CONTENTION: "assert",  # the overlaps counted
            "TestLock::test_release_hands_over": "is None",
            "TestLock::test_try_acquire_never_waits": "is None",
            "TestLock::test_acquire_timeout": "DID NOT RAISE",
            "TestLock::test_cancelled_acquire_leaves_nothing_behind": "DID NOT RAISE",
            LOCK_HANDOVER: "while it was held",
            "TestElection::test_one_leader_among_many": "Leader(",
            ELECTION_HANDOVER: "while it was held",
            "TestElection::test_campaign_timeout_and_cancel_leave_nothing": "DID NOT RAISE",
            "TestFaults::test_cancelled_waiters_leave_nothing": "two holders at once",
        }
    ),
    "memory-stale-candidates": Catch(
        {
            "TestElection::test_candidates_list_the_queue_leader_first": "a proclaim shows",
            "TestElection::test_candidates_drop_an_expired_leader": "the expired leader leaving",
        }
    ),
    "memory-unbound-members": Catch(
        {
            "TestGroup::test_a_closed_coordinator_leaves_no_member": "closing the coordinator ends",
            "TestGroup::test_member_rejoins_after_its_session_is_lost": (
                "the re-joined member going with the session it joined did not happen"
            ),
        }
    ),
    "memory-group-poll": Catch(
        {"TestGroup::test_many_members_one_watch": "one server-side watch; counted [0]"}
    ),
    "memory-group-watch-each": Catch(
        {"TestGroup::test_many_members_one_watch": "one server-side watch; counted [1001]"}
    ),
    "memory-unguarded": Catch(
        {
            f"TestGuardedWrites::test_the_server_refuses_once_the_owner_was_deleted[{write}-{kind}]": (
                "DID NOT RAISE"
            )
            for write in ("set", "compare_and_set", "delete")
            for kind in ("lock", "election")
        }
    ),
    "memory-watch-backwards": Catch(
        {"TestConfig::test_watch_is_ordered_and_ends_on_latest": "went back to older versions"}
    ),
    "memory-silent-loss": Catch(
        {
            "TestLock::test_expiry_cancels_body_and_raises_lock_lost": "the loss being noticed",
            "TestLock::test_release_after_loss_raises": "the loss being noticed",
            "TestLock::test_waiter_survives_session_loss": "LOST then a new CONNECTED session did not happen",
            "TestSession::test_expiry_is_lost_then_a_new_session": (
                "LOST then a new CONNECTED session did not happen"
            ),
            "TestElection::test_expiry_hands_over_and_raises_leadership_lost": (
                "the expired leader's body ending and b leading did not happen"
            ),
        },
        background=True,
    ),
}


@dataclass
class Outcome:
    outcome: str
    """``passed``, ``failed``, ``error`` or ``skipped``."""
    message: str
    seconds: float


@dataclass
class Run:
    """One conformance run of one backend in a pytest subprocess."""

    scheme: str
    folder: Path
    multiplier: float
    deselected: tuple[str, ...] = ()
    process: subprocess.Popen[str] | None = None
    started: float = 0.0

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "pytest.ini").write_text(INI)
        (self.folder / "test_variant.py").write_text(MODULE.format(scheme=self.scheme))
        env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HELPERS), env.get("PYTHONPATH")]))
        arguments = [sys.executable, "-m", "pytest", "-q", "-rfE", "--junitxml=report.xml"]
        arguments += [f"--coordination-timeout-multiplier={self.multiplier}"]
        arguments += [f"--deselect=test_variant.py::{test}" for test in self.deselected]
        self.started = time.monotonic()
        with (self.folder / "output.txt").open("w") as output:
            self.process = subprocess.Popen(
                arguments, cwd=self.folder, env=env, stdout=output, stderr=subprocess.STDOUT, text=True
            )

    def finish(self, timeout: float) -> tuple[dict[str, Outcome], float]:
        """Wait for the run; its outcome per test id (``Class::test``), and its wall time."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"the {self.scheme} run did not end within {timeout:g}s:\n{self.output()}")
        seconds = time.monotonic() - self.started
        assert code in (0, 1), f"the {self.scheme} run exited with {code}:\n{self.output()}"
        return _outcomes(self.folder / "report.xml"), seconds

    def output(self) -> str:
        return (self.folder / "output.txt").read_text()[-20000:]


def _outcomes(report: Path) -> dict[str, Outcome]:
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        test = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = "failed" if child.tag == "failure" else child.tag
                message = f"{child.get('message', '')}\n{child.text or ''}"
                break
        outcomes[test] = Outcome(outcome, message, float(case.get("time", 0)))
    return outcomes


def _table(outcomes: Mapping[str, Outcome], seconds: float) -> str:
    failed = [f"  {test} ({o.seconds:.1f}s)" for test, o in outcomes.items() if o.outcome == "failed"]
    counts = {kind: sum(o.outcome == kind for o in outcomes.values()) for kind in ("passed", "skipped")}
    return "\n".join([f"{len(failed)} failed, {counts} in {seconds:.1f}s", *failed])


@dataclass
class Runs:
    """Every variant's run (and the control's, ``memory``), started when first asked for."""

    runs: dict[str, Run]
    selected: set[str]
    """The variants whose test this session runs."""

    def get(self, scheme: str) -> Run:
        """``scheme``'s run, started if it is not; a variant's first call also starts the
        background runs of the variants selected (they mostly wait out the suite's bounds),
        never alongside the control."""
        if scheme != "memory":
            for other, catch in CATCHES.items():
                if catch.background and other in self.selected and self.runs[other].process is None:
                    self.runs[other].start()
        run = self.runs[scheme]
        if run.process is None:
            run.start()
        return run


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    multiplier = timeout_multiplier(request.config)
    folder = tmp_path_factory.mktemp("suite-catches")
    made = {
        scheme: Run(scheme, folder / scheme, multiplier, tuple(catch.deselected))
        for scheme, catch in CATCHES.items()
    }
    made["memory"] = Run("memory", folder / "memory", multiplier)
    selected = {
        item.callspec.params.get("scheme") for item in request.session.items if hasattr(item, "callspec")
    }
    yield Runs(made, {scheme for scheme in selected if isinstance(scheme, str)})
    for run in made.values():
        if run.process is not None and run.process.poll() is None:
            run.process.kill()
            run.process.wait()


def test_every_variant_has_its_catches() -> None:
    assert set(CATCHES) == set(VARIANTS)


@pytest.mark.timeout(300)
def test_control_memory_backend_passes_everything(runs: Runs) -> None:
    """The correct memory backend, in the same harness, fails nothing and skips only by name."""
    run = runs.get("memory")
    outcomes, seconds = run.finish(240 * run.multiplier)
    print(f"memory (control): {_table(outcomes, seconds)}")
    bad = {test: o.message for test, o in outcomes.items() if o.outcome in ("failed", "error")}
    assert not bad, f"the correct memory backend failed:\n{run.output()}"
    unnamed = {
        test: o.message
        for test, o in outcomes.items()
        if o.outcome == "skipped"
        and CAPABILITY_SKIP_PREFIX not in o.message
        and NOT_RUN_PREFIX not in o.message
    }
    assert not unnamed, f"skipped without naming a capability or a reason: {unnamed}"
    for catch in CATCHES.values():
        for test in catch.must_fail:
            assert outcomes[test].outcome == "passed", f"{test} does not pass on the correct backend"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scheme", list(CATCHES))
def test_suite_fails_the_broken_variant(runs: Runs, scheme: str) -> None:
    """Each broken variant fails every test that must catch it, by the suite's own assertion."""
    catch, run = CATCHES[scheme], runs.get(scheme)
    outcomes, seconds = run.finish(240 * run.multiplier)
    print(f"{scheme}: {_table(outcomes, seconds)}")
    for test in catch.deselected:
        assert test not in outcomes, f"{test} ran although deselected"
    problems = []
    for test, fragment in catch.must_fail.items():
        got = outcomes.get(test)
        if got is None:
            problems.append(f"{test}: not run")
        elif got.outcome != "failed":
            problems.append(f"{test}: {got.outcome}, not failed")
        elif "Timeout" in got.message and "pytest-timeout" in got.message:
            problems.append(f"{test}: failed only through pytest-timeout")
        elif fragment is not None and not any(
            text in got.message for text in ((fragment,) if isinstance(fragment, str) else fragment)
        ):
            problems.append(
                f"{test}: failed, but not with {fragment!r}:\n{textwrap.indent(got.message, '    ')}"
            )
    assert not problems, f"the suite did not catch {scheme} as it should:\n" + "\n".join(problems)
