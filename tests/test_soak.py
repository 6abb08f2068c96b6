"""The nemesis soak (``python -m coordination.testing.soak``).

First its counting, on fabricated event logs: an overlap, a stale write accepted, tokens out
of order, a false LOST and a slow failover are each counted (so the counts can fail), and
what the docstring excuses is excused. Then a 2-minute soak per backend on a 3-node cluster
(CI's run): cluster mode rather than a single server, because it has both kinds of faults
that matter, node faults (kill, pause, blackhole, rolling restart) where the client must move
to another node and keep its session, and holder faults (pause, loop block, kill, blackhole,
reset, lost reply); a single server's pause and restart are covered by the fault suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from coordination.testing.fenced import Decision
from coordination.testing.holder import HolderEvent
from coordination.testing.soak import (
    FAULTS,
    HOLDER_FAULTS,
    NODE_FAULTS,
    Fault,
    Report,
    analyse,
    main,
    parse_counts,
)

Events = list[tuple[str, HolderEvent]]


def ev(label: str, kind: str, token: int | None, at: float, detail: str = "") -> tuple[str, HolderEvent]:
    return label, HolderEvent(kind, token, at, detail)


def hold(label: str, token: int, start: float, end: float, how: str = "releasing") -> Events:
    """A holder that waits from 0, holds ``token`` from ``start`` to ``end``."""
    return [
        ev(label, "acquiring", None, min(0.0, start)),
        ev(label, "held", token, start),
        ev(label, how, token, end),
    ]


def accepted(writer: str, token: int, at: float) -> Decision:
    return Decision(True, "soak", token, writer, at)


def refused(writer: str, token: int, at: float) -> Decision:
    return Decision(False, "soak", token, writer, at)


def count(
    events: Events,
    faults: list[Fault] | None = None,
    decisions: list[Decision] | None = None,
    *,
    bound: float = 6.0,
) -> Report:
    return analyse(events, faults or [], decisions or [], ttl=5.0, bound=bound, end=100.0)


def test_a_clean_handover_counts_nothing() -> None:
    events = hold("a", 1, 1.0, 2.0) + hold("b", 2, 2.1, 3.0)
    decisions = [accepted("a", 1, 1.5), accepted("b", 2, 2.5)]
    report = count(events, decisions=decisions)
    assert len(report.holdings) == 2
    assert not report.overlaps
    assert not report.stale
    assert not report.inversions
    assert not report.false_losts
    assert (report.accepted, report.refused) == (2, 0)
    assert report.unavailable is not None
    assert report.unavailable[1] - report.unavailable[0] == pytest.approx(0.1)
    assert not report.failed(strict=True)


def test_an_overlap_is_counted_unless_a_frozen_holder_explains_it() -> None:
    events = hold("a", 1, 1.0, 3.0) + hold("b", 2, 2.0, 4.0)
    assert len(count(events).overlaps) == 1
    assert count(events).failed()
    # a was paused from 1.5 to 2.5: the overlap 2.0..3.0 ends within SETTLE (1 s) of its resume.
    paused = count(events, [Fault("pause", 1.5, 2.5, "a")])
    assert (len(paused.overlaps), len(paused.excused)) == (0, 1)
    assert not paused.failed()
    # Only a freeze excuses, only its holder's, only while it lasts (and SETTLE after).
    for fault in (
        Fault("blackhole", 1.5, 2.5, "a"),
        Fault("quorum loss", 1.5, 2.5),
        Fault("node kill", 1.5, 2.5),
        Fault("pause", 1.5, 2.5, "c"),
        Fault("pause", 1.2, 1.6, "a"),  # resumed 1.4 s before the overlap ended
    ):
        assert len(count(events, [fault]).overlaps) == 1, fault


def test_a_lost_state_ends_a_holding_only_when_that_holding_is_lost() -> None:
    told = [ev("a", "acquiring", None, 0.0), ev("a", "held", 1, 1.0), ev("a", "state", None, 2.0, "LOST")]
    told += [ev("a", "cancelled", 1, 2.05), ev("a", "lost", 1, 2.06)]
    assert not count(told + hold("b", 2, 2.01, 3.0)).overlaps  # a knew at 2.0
    late = [ev("a", "acquiring", None, 0.0), ev("a", "held", 1, 1.0), ev("a", "state", None, 2.0, "LOST")]
    late += [ev("a", "releasing", 1, 3.0)]  # a LOST line of an earlier session: a still held
    assert len(count(late + hold("b", 2, 2.01, 4.0)).overlaps) == 1


def test_a_stale_write_accepted_is_counted() -> None:
    # b got the same token after a released: the resource takes a's late write after b's.
    events = hold("a", 7, 1.0, 2.0) + hold("b", 7, 2.1, 3.0)
    decisions = [accepted("a", 7, 1.5), accepted("b", 7, 2.2), accepted("a", 7, 2.3)]
    report = count(events, decisions=decisions)
    assert [(d.writer, d.at) for d, _, _ in report.stale] == [("a", 2.3)]
    assert [(x.holder, y.holder) for x, y in report.inversions] == [("a", "b")]
    assert report.failed()


def test_the_gap_of_fencing_is_not_a_stale_write() -> None:
    # a's late write comes before b's first: the resource cannot refuse it, and it is no fault.
    events = hold("a", 1, 1.0, 2.0) + hold("b", 2, 2.1, 3.0)
    decisions = [accepted("a", 1, 1.5), accepted("a", 1, 2.15), accepted("b", 2, 2.2), refused("a", 1, 2.3)]
    report = count(events, decisions=decisions)
    assert not report.stale
    assert not report.inversions
    assert (report.accepted, report.refused) == (3, 1)


def test_tokens_out_of_order_are_counted_unless_a_fault_blurs_the_order() -> None:
    events = hold("a", 5, 1.0, 2.0) + hold("b", 4, 2.1, 3.0)
    assert len(count(events).inversions) == 1
    # b was paused until just before it reported held: its grant may have come before a's.
    assert not count(events, [Fault("pause", 0.5, 2.05, "b")]).inversions
    # A single server restarted (sessions may end unseen) blurs it too; a node fault does not.
    assert not count(events, [Fault("server restart", 0.5, 1.9)]).inversions
    assert len(count(events, [Fault("node kill", 0.5, 1.9)]).inversions) == 1


def test_a_false_lost_is_counted() -> None:
    events = [*hold("a", 1, 1.0, 2.0), ev("a", "state", None, 5.0, "LOST")]
    assert count(events).false_losts == [("a", 5.0)]
    # A node fault with the quorum kept does not explain it, nor a reset, nor another's fault.
    for fault in (
        Fault("node kill", 4.0, 4.5),
        Fault("reset", 4.9, 4.9, "a"),
        Fault("blackhole", 3.0, 4.0, "b"),
    ):
        assert count(events, [fault]).false_losts == [("a", 5.0)], fault
    assert count(events, [Fault("node kill", 4.0, 4.5)]).failed(strict=True)
    assert not count(events, [Fault("node kill", 4.0, 4.5)]).failed()
    # Its own blackhole (until a TTL after the heal), a pause, a quorum loss do.
    for fault in (
        Fault("blackhole", 3.0, 4.0, "a"),
        Fault("pause", 2.0, 4.5, "a"),
        Fault("quorum loss", 1.0, 2.0),
    ):
        report = count(events, [fault])
        assert report.losts == [("a", 5.0)], fault
        assert report.false_losts == [], fault


def test_failovers_and_unavailability() -> None:
    events = [ev("a", "acquiring", None, 0.0), ev("a", "held", 1, 1.0), ev("a", "exit", None, 2.0, "killed")]
    events += [ev("b", "acquiring", None, 0.5), ev("b", "held", 2, 5.0), ev("b", "releasing", 2, 6.0)]
    kill = Fault("kill", 2.0, 2.0, "a")
    report = count(events, [kill])
    assert [(f.seconds, f.disturbed) for f in report.failovers] == [(3.0, False)]
    assert report.unavailable == (2.0, 5.0)
    assert report.unavailable_outside is None  # within the kill's window (a failover bound)
    slow = count(events, [kill], bound=2.0)
    assert len(slow.over_bound) == 1
    assert slow.failed(strict=True)
    assert not slow.failed()
    assert slow.unavailable_outside == (4.0, 5.0)
    disturbed = count(events, [kill, Fault("node kill", 3.0, 4.0)], bound=2.0)
    assert disturbed.failovers[0].disturbed
    assert not disturbed.over_bound
    unexpected = count([*events[:2], ev("a", "exit", None, 2.0, "status 1")])
    assert unexpected.exits == [("a", "status 1")]
    assert unexpected.failed(strict=True)


def test_a_recorded_run_is_counted_again_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--replay`` prints the counts as ``name: value`` lines and exits 1 on an overlap."""
    record = tmp_path / "run.jsonl"
    lines: list[object] = [{"run": {"ttl": 5.0, "bound": 6.0, "end": 100.0}}]
    for label, event in hold("a", 1, 1.0, 3.0) + hold("b", 2, 2.0, 4.0):
        lines.append({"event": [label, event.kind, event.token, event.at, event.detail]})
    lines.append({"fault": {"kind": "reset", "start": 2.5, "end": 2.5, "holder": "a", "detail": ""}})
    lines.append({"decision": {"accepted": True, "resource": "soak", "token": 1, "writer": "a", "at": 1.5}})
    record.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(SystemExit) as exited:
        main(["--replay", str(record)])
    assert exited.value.code == 1
    output = capsys.readouterr().out
    found = parse_counts(output)
    assert found["overlaps"] == "1"
    assert found["acquisitions"] == "2"
    assert found["fault reset"] == "1"
    assert found["writes accepted"] == "1"
    assert found["result"] == "FAILED"
    assert "  overlap 2.000..3.000: a token 1" in output  # the detail names the pair


@pytest.mark.faults
@pytest.mark.cluster
@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", ["zookeeper", "etcd", "consul"])
def test_two_minutes_on_a_cluster(backend: str, tmp_path: Path, scaled: Callable[[float], float]) -> None:
    """CI's soak: 4 holders on a 3-node cluster for 2 minutes, holder and node faults; no
    overlap, no stale write accepted, tokens in order."""
    record = tmp_path / "record.jsonl"
    command = [sys.executable, "-m", "coordination.testing.soak", "--backend", backend, "--cluster"]
    command += ["--minutes", "2", "--record", str(record)]
    if backend == "etcd":
        # An open finding of the 10-minute soaks, at the moment a leader SIGSTOPped past the
        # TTL runs again: etcd (3.5.1 and 3.5.35 alike) revokes leases that expired in the old
        # leader's view although their clients kept them alive through the new leader
        # (etcd-io/etcd#15247; the 3.5.11 fix skips its leadership check when the raft loop
        # ticked just now, as it does when a stopped process resumes). It makes an overlap now
        # and then, so CI's etcd soak leaves node pauses out. (Consul's overlaps at such
        # moments were a late release freeing a later holding of the same session: fixed.)
        command += ["--faults", ",".join(k for k in FAULTS if k not in ("node pause", "quorum loss"))]
    result = subprocess.run(command, capture_output=True, text=True, timeout=scaled(540), check=False)
    shown = f"{' '.join(command)}\n{result.stdout}\n-- stderr (tail):\n{result.stderr[-3000:]}"
    found = parse_counts(result.stdout)
    print(result.stdout)  # the counts, for the record (pytest -rA shows them)
    assert result.returncode == 0, shown
    assert found.get("result") == "ok", shown
    assert found["overlaps"] == "0", shown
    assert found["stale writes accepted"] == "0", shown
    assert found["tokens out of order"] == "0", shown
    assert int(found["acquisitions"]) >= 10, shown
    assert int(found["writes accepted"]) > 0, shown
    kinds = {
        name.removeprefix("fault "): int(value) for name, value in found.items() if name.startswith("fault ")
    }
    kinds.pop("kinds", None)
    assert len([k for k in kinds if k in HOLDER_FAULTS]) >= 3, shown
    assert len([k for k in kinds if k in NODE_FAULTS]) >= 2, shown
