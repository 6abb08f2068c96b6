"""pytest plugin (loaded through the ``pytest11`` entry point): conformance-suite options.

Adds ``--coordination-url`` and ``--coordination-timeout-multiplier``, the ``requires``,
``faults`` and ``cluster`` markers, a summary of the tests a backend or its fixture cannot run (a capability
the backend lacks, a server the fixture does not control, ...), and the figures fault tests
measured (failover and loss latencies).
"""

from __future__ import annotations

from collections import Counter

import pytest

CAPABILITY_SKIP_PREFIX = "backend lacks capability"
NOT_RUN_PREFIX = "not run:"
"""Skip reasons of tests that the fixture or the backend cannot run, other than capabilities."""

FIGURES = {
    "failover_seconds": "failover",
    "failover_bound_seconds": "bound",
    "takeover_seconds": "takeover",
    "lost_after_resume_seconds": "LOST after resume",
    "suspended_after_cut_seconds": "SUSPENDED after cut",
    "lost_after_deadline_seconds": "LOST after deadline",
    "late_writes_refused": "late writes refused",
    "kept": "kept",
    "suspended_seconds": "SUSPENDED for",
    "moved_after_seconds": "moved after",
    "leader_elected_seconds": "new leader after",
    "holder_on_leader": "holder on the leader",
    "lost_after_quorum_seconds": "LOST after quorum loss",
    "handover_seconds": "handover",
    "overlaps": "overlaps",
}
"""``user_properties`` of fault tests shown in the figures summary, with their labels."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("coordination", "coordination conformance suite")
    group.addoption(
        "--coordination-url",
        default=None,
        help="run the conformance suite against this URL (e.g. etcd://127.0.0.1:2379/ci)",
    )
    group.addoption(
        "--coordination-timeout-multiplier",
        type=float,
        default=None,
        help="scale every timeout of the conformance suite (or $COORDINATION_TIMEOUT_MULTIPLIER)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires(*capabilities): the test needs these coordination.Capability values"
    )
    config.addinivalue_line(
        "markers", "faults: a fault test (crashed, paused or cut-off holders and servers); -m faults"
    )
    config.addinivalue_line(
        "markers", "cluster: a fault test on a server cluster (nodes killed, cut off, restarted); -m cluster"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    suite = "coordination.testing.conformance"
    if config.getoption("coordination_url") is None and any(
        getattr(getattr(item, "module", None), "__name__", None) == suite for item in items
    ):
        raise pytest.UsageError("coordination.testing.conformance needs --coordination-url URL")


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = getattr(report, "longrepr", None)
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else ""


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lacking: Counter[str] = Counter()
    not_run: Counter[str] = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        reason = _skip_reason(report)
        marker = reason.find(CAPABILITY_SKIP_PREFIX)
        if marker >= 0:
            lacking[reason[marker + len(CAPABILITY_SKIP_PREFIX) :].strip()] += 1
        marker = reason.find(NOT_RUN_PREFIX)
        if marker >= 0:
            not_run[reason[marker + len(NOT_RUN_PREFIX) :].strip()] += 1
    if lacking:
        terminalreporter.section("coordination: capabilities not declared by the backend")
        for what, count in sorted(lacking.items()):
            terminalreporter.write_line(f"{count} test(s) need {what}")
    if not_run:
        terminalreporter.section("coordination: tests the fixture or backend cannot run")
        for what, count in sorted(not_run.items()):
            terminalreporter.write_line(f"{count} test(s): {what}")
    figures = []
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", "call") != "call":
                continue
            shown = [
                f"{FIGURES[key]} {value}"
                for key, value in getattr(report, "user_properties", ())
                if key in FIGURES
            ]
            if shown:
                failed = " (failed)" if outcome == "failed" else ""
                figures.append(f"{report.nodeid}{failed}: {', '.join(shown)}")
    if figures:
        terminalreporter.section("coordination: fault figures (seconds)")
        for line in figures:
            terminalreporter.write_line(line)
