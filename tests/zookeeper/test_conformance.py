"""The conformance suite, fault suite included, on a real ZooKeeper server."""

from __future__ import annotations

from coordination.testing import (
    BadInputTests,
    ConfigTests,
    ElectionTests,
    FaultTests,
    GroupTests,
    GuardedWriteTests,
    LeaderLoopTests,
    LockTests,
    SessionTests,
)

from .conftest import ZooKeeperFixtures


class TestLock(LockTests, ZooKeeperFixtures):
    pass


class TestElection(ElectionTests, ZooKeeperFixtures):
    pass


class TestConfig(ConfigTests, ZooKeeperFixtures):
    pass


class TestSession(SessionTests, ZooKeeperFixtures):
    pass


class TestBadInput(BadInputTests, ZooKeeperFixtures):
    pass


class TestFaults(FaultTests, ZooKeeperFixtures):
    pass


class TestGroup(GroupTests, ZooKeeperFixtures):
    pass


class TestGuardedWrites(GuardedWriteTests, ZooKeeperFixtures):
    pass


class TestLeaderLoop(LeaderLoopTests, ZooKeeperFixtures):
    pass
