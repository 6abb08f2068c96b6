"""pytest plugin (loaded through the ``pytest11`` entry point): conformance-suite options.

Adds ``--coordination-url`` and ``--coordination-timeout-multiplier``, the ``requires``
marker, and a summary of the tests a backend cannot run because it lacks a capability.
"""

from __future__ import annotations

from collections import Counter

import pytest

CAPABILITY_SKIP_PREFIX = "backend lacks capability"


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    suite = "coordination.testing.conformance"
    if config.getoption("coordination_url") is None and any(
        getattr(getattr(item, "module", None), "__name__", None) == suite for item in items
    ):
        raise pytest.UsageError("coordination.testing.conformance needs --coordination-url URL")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lacking: Counter[str] = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(report, "longrepr", None)
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else ""
        marker = reason.find(CAPABILITY_SKIP_PREFIX)
        if marker >= 0:
            lacking[reason[marker + len(CAPABILITY_SKIP_PREFIX) :].strip()] += 1
    if lacking:
        terminalreporter.section("coordination: capabilities not declared by the backend")
        for what, count in sorted(lacking.items()):
            terminalreporter.write_line(f"{count} test(s) need {what}")
