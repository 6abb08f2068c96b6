"""The shipped pytest plugin and the suite run against --coordination-url."""

from __future__ import annotations

import pytest


def test_suite_runs_against_a_url_and_reports_missing_capabilities(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(
        "--pyargs",
        "coordination.testing.conformance",
        "--coordination-url",
        "memory://plugin-check",
        "-p",
        "no:cacheprovider",
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0, result.stdout.str()
    assert outcomes["passed"] >= 50
    assert outcomes["skipped"] == 14
    result.stdout.fnmatch_lines(
        [
            "*capabilities not declared by the backend*",
            "*3 test(s) need CROSS_PROCESS (memory)*",
            "*1 test(s) need EVERY_VERSION (memory)*",
            "*tests the fixture or backend cannot run*",
            "*5 test(s): a fault proxy needs a host:port in the URL (memory)*",
            "*1 test(s): ran, but the fixture cannot list leftovers (memory)*",
            "*1 test(s): the backend keeps no history to compact (memory)*",
            "*3 test(s): the fixture gives no server control (memory)*",
        ]
    )


def test_fault_tests_are_marked_and_selectable(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(
        "--pyargs",
        "coordination.testing.conformance",
        "--coordination-url",
        "memory://plugin-faults",
        "-m",
        "faults",
        "--collect-only",
        "-q",
    )
    collected = [line for line in result.stdout.lines if "::" in line]
    assert any("TestLock::test_crash_failover" in line for line in collected)
    assert sum("TestFaults::" in line for line in collected) == 12
    assert len(collected) == 13, collected


def test_suite_without_a_url_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(
        "--pyargs", "coordination.testing.conformance", "-k", "test_connected"
    )
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*needs --coordination-url URL*"])


def test_timeout_multiplier_option_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*--coordination-url*", "*--coordination-timeout-multiplier*"])
