"""pytest plugin (loaded through the ``pytest11`` entry point): conformance-suite options.

Adds ``--coordination-url`` and ``--coordination-timeout-multiplier``, the ``requires``,
``faults`` and ``cluster`` markers, a summary of the tests a backend or its fixture cannot run (a capability
the backend lacks, a server the fixture does not control, ...), and the figures fault tests
measured (failover and loss latencies).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

CAPABILITY_SKIP_PREFIX = "backend lacks capability"
NOT_RUN_PREFIX = "not run:"
"""Skip reasons of tests that the fixture or the backend cannot run, other than capabilities."""
FIXTURE_CAPABILITY = "fixture_capability"
"""``user_properties`` key of a test that ran on a capability the fixture gives its own way."""

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
    "rounds": "rounds",
    "takeovers": "takeovers",
    "stale_writes_delivered_late": "stale guarded writes delivered after the takeover",
    "stale_writes_attempted": "stale guarded writes attempted",
    "stale_writes_refused_by_server": "refused by the server",
    "stale_writes_refused_locally": "refused before any I/O",
    "stale_writes_outcome_unknown": "outcome unknown",
    "stale_writes_applied": "stale guarded writes applied",
    "overlaps": "overlaps",
    "acquisitions": "acquisitions",
    "terms": "terms",
    "runners": "runners",
    "min_interval": "min_interval",
    "shortest_term_gap": "shortest gap between one runner's terms",
    "term_gaps": "gaps between one runner's terms",
    "requeued_term_after_loss": "the old runner's next term after its loss",
}
"""``user_properties`` of fault tests shown in the figures summary, with their labels."""


def timeout_multiplier(config: pytest.Config) -> float:
    """The suite's timeout multiplier: ``--coordination-timeout-multiplier``, else
    ``$COORDINATION_TIMEOUT_MULTIPLIER``, else 1."""
    value = config.getoption("coordination_timeout_multiplier", default=None)
    if value is None:
        text = os.environ.get("COORDINATION_TIMEOUT_MULTIPLIER", "1")
        try:
            value = float(text)
        except ValueError:
            raise pytest.UsageError(
                f"COORDINATION_TIMEOUT_MULTIPLIER must be a number, not {text!r}"
            ) from None
    if not value > 0:
        raise pytest.UsageError("the coordination timeout multiplier must be positive")
    return float(value)


@pytest.fixture
def scaled(request: pytest.FixtureRequest) -> Callable[[float], float]:
    """``scaled(seconds)``: ``seconds`` times the suite's timeout multiplier, for every
    timeout and time bound of a test that does not use the conformance harness."""
    multiplier = timeout_multiplier(request.config)
    return lambda seconds: seconds * multiplier


S = TypeVar("S")
_SHARED_SERVERS = pytest.StashKey[list[Any]]()


def share_server(request: pytest.FixtureRequest, server: S) -> S:
    """Register ``server`` (a :class:`~coordination.testing.servers.ServerProcess` or
    :class:`~coordination.testing.servers.ServerCluster`) that a fixture of wider scope
    shares across tests, and return it.

    Before each test, a shared server found dead or paused is brought back; after each test,
    one that is dead or paused is brought back and that test fails by name (an error at its
    teardown), so one crashed server never turns into failures of the unrelated tests after it.
    """
    request.config.stash.setdefault(_SHARED_SERVERS, []).append(server)
    return server


def _down(server: Any) -> bool:
    members = getattr(server, "members", None)
    nodes = members if members is not None else [server]
    return any(not node.running or node.paused for node in nodes)


def _bring_back(server: Any) -> None:
    members = getattr(server, "members", None)
    for node in members if members is not None else [server]:
        if node.paused:
            node.resume()
        if not node.running:
            node.start()
    if members is not None:
        server.wait_healthy(90)


def _describe(server: Any) -> str:
    name = getattr(server, "name", type(server).__name__)
    address = getattr(server, "address", None) or getattr(server, "url", "")
    return f"{name} {address}".strip()


@pytest.fixture(autouse=True)
def _shared_servers_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    servers = request.config.stash.get(_SHARED_SERVERS, [])
    for server in servers:
        if _down(server):
            _bring_back(server)
    yield
    dead = [server for server in request.config.stash.get(_SHARED_SERVERS, []) if _down(server)]
    for server in dead:
        _bring_back(server)
    if dead:
        names = ", ".join(_describe(server) for server in dead)
        pytest.fail(
            f"the shared test server(s) {names} were dead or paused after this test "
            "(brought back for the tests after it)",
            pytrace=False,
        )


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
    group.addoption(
        "--coordination-pause-rounds",
        type=int,
        default=None,
        metavar="N",
        help="rounds of the guarded-write pause test per kind (default 50; more for a deeper run)",
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
    _scale_test_timeouts(config, items)
    suite = "coordination.testing.conformance"
    if config.getoption("coordination_url") is None and any(
        getattr(getattr(item, "module", None), "__name__", None) == suite for item in items
    ):
        raise pytest.UsageError("coordination.testing.conformance needs --coordination-url URL")


def _scale_test_timeouts(config: pytest.Config, items: list[pytest.Item]) -> None:
    """pytest-timeout's per-test timeout (ini, command line or marker) times the multiplier."""
    multiplier = timeout_multiplier(config)
    if multiplier == 1 or not config.pluginmanager.hasplugin("timeout"):
        return
    default = getattr(config, "_env_timeout", None)
    for item in items:
        marker = item.get_closest_marker("timeout")
        base = (
            marker.args[0]
            if marker is not None and marker.args
            else (marker.kwargs.get("timeout") if marker is not None else default)
        )
        if isinstance(base, int | float) and base > 0:
            item.add_marker(pytest.mark.timeout(float(base) * multiplier), append=False)


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
    given: Counter[str] = Counter()
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", "call") == "call":
                given.update(value for key, value in report.user_properties if key == FIXTURE_CAPABILITY)
    if given:
        terminalreporter.section("coordination: capabilities the fixture gives its own way")
        for what, count in sorted(given.items()):
            terminalreporter.write_line(f"{count} test(s) ran on {what}, which the backend does not declare")
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
