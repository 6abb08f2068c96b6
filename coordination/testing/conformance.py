"""The whole conformance suite against the backend at ``--coordination-url``.

Run it against your own cluster::

    pytest --pyargs coordination.testing.conformance --coordination-url etcd://10.0.0.1:2379/ci

Each test works in a fresh namespace under the URL's path and cleans up after itself.
Forcing a session to expire uses ``Backend.expire_session`` (capability EXPIRE_SESSION).
The fault suite runs what needs no control of the server (holder processes, a fault proxy
in front of the URL's first host); the tests that pause, kill or restart the server, or
look for leftovers on it, are reported as not run, with the reason.
"""

from __future__ import annotations

import pytest

from .faults import FaultTests
from .fixtures import CoordinationFixtures
from .guarded import GuardedWriteTests
from .leader_loop import LeaderLoopTests
from .suite import BadInputTests, ConfigTests, ElectionTests, GroupTests, LockTests, SessionTests


class URLFixtures(CoordinationFixtures):
    @pytest.fixture
    def coordination_url(self, request: pytest.FixtureRequest) -> str:
        url = request.config.getoption("coordination_url")
        if not url:
            raise pytest.UsageError("give the backend to test with --coordination-url URL")
        return str(url)


class TestLock(LockTests, URLFixtures):
    pass


class TestElection(ElectionTests, URLFixtures):
    pass


class TestConfig(ConfigTests, URLFixtures):
    pass


class TestSession(SessionTests, URLFixtures):
    pass


class TestBadInput(BadInputTests, URLFixtures):
    pass


class TestGroup(GroupTests, URLFixtures):
    pass


class TestFaults(FaultTests, URLFixtures):
    pass


class TestGuardedWrites(GuardedWriteTests, URLFixtures):
    pass


class TestLeaderLoop(LeaderLoopTests, URLFixtures):
    pass
