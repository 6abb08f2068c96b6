"""The conformance suite on the etcd backend, against etcd 3.4 and 3.5."""

from __future__ import annotations

import pytest

from coordination.testing import (
    BadInputTests,
    ConfigTests,
    CoordinationFixtures,
    ElectionTests,
    LockTests,
    SessionTests,
)
from coordination.testing.servers import EtcdProcess


class EtcdFixtures(CoordinationFixtures):
    @pytest.fixture
    def coordination_url(self, etcd_server: EtcdProcess) -> str:
        return etcd_server.url

    @pytest.fixture
    def server(self, etcd_server: EtcdProcess) -> EtcdProcess:
        return etcd_server


class TestLock(LockTests, EtcdFixtures):
    pass


class TestElection(ElectionTests, EtcdFixtures):
    pass


class TestConfig(ConfigTests, EtcdFixtures):
    pass


class TestSession(SessionTests, EtcdFixtures):
    pass


class TestBadInput(BadInputTests, EtcdFixtures):
    pass
