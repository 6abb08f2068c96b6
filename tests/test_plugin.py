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
    assert outcomes["skipped"] == 33
    result.stdout.fnmatch_lines(
        [
            "*capabilities not declared by the backend*",
            "*12 test(s) need CROSS_PROCESS (memory)*",
            "*1 test(s) need EVERY_VERSION (memory)*",
            "*tests the fixture or backend cannot run*",
            "*6 test(s): a fault proxy needs a host:port in the URL (memory)*",
            "*2 test(s): ran, but could not check FIFO order (the fixture cannot list contenders)*",
            "*1 test(s): ran, but the fixture cannot list leftovers (memory)*",
            "*1 test(s): the backend keeps no history to compact (memory)*",
            "*1 test(s): the fixture cannot count the server*s watches*",
            "*6 test(s): the fixture cannot delete an owner's key or node from outside (memory)*",
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
    assert any("TestElection::test_leader_crash_failover" in line for line in collected)
    assert sum("TestFaults::" in line for line in collected) == 15
    assert len(collected) == 17, collected


def test_suite_without_a_url_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(
        "--pyargs", "coordination.testing.conformance", "-k", "test_connected"
    )
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*needs --coordination-url URL*"])


def test_timeout_multiplier_option_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*--coordination-url*", "*--coordination-timeout-multiplier*"])


def test_a_test_that_leaves_a_shared_server_dead_fails_by_name(pytester: pytest.Pytester) -> None:
    """A shared server found dead after a test fails that test (at teardown) and is brought
    back, so the tests after it run on a live server."""
    pytester.makepyfile(
        """
        import pytest
        from coordination.testing.plugin import share_server

        class Server:
            name = "fake"
            address = "127.0.0.1:1"
            running = True
            paused = False
            starts = 0

            def start(self):
                self.running = True
                self.starts += 1

            def resume(self):
                self.paused = False

        SERVER = Server()

        @pytest.fixture(scope="session")
        def server(request):
            return share_server(request, SERVER)

        def test_kills_it(server):
            server.running = False

        def test_pauses_it(server):
            assert server.running
            server.paused = True

        def test_after(server):
            assert server.running and not server.paused
            assert server.starts == 1
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_kills_it*",
            "*the shared test server(s) fake 127.0.0.1:1 were dead or paused after this test*",
            "*ERROR at teardown of test_pauses_it*",
        ]
    )
