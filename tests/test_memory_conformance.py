"""The conformance suite on the embedded memory backend."""

from __future__ import annotations

from _broken_memory import BrokenMemoryFixtures

from coordination.testing import (
    BadInputTests,
    ConfigTests,
    ElectionTests,
    GroupTests,
    GuardedWriteTests,
    LeaderLoopTests,
    LockTests,
    SessionTests,
)


class MemoryFixtures(BrokenMemoryFixtures):
    """The fixtures of the broken variants' runs (``tests/_broken_memory.py``), on the
    correct backend: one set of memory fixtures (leftovers, watches) for both."""

    scheme = "memory"


class TestGroup(GroupTests, MemoryFixtures):
    pass


class TestLock(LockTests, MemoryFixtures):
    pass


class TestElection(ElectionTests, MemoryFixtures):
    pass


class TestConfig(ConfigTests, MemoryFixtures):
    pass


class TestSession(SessionTests, MemoryFixtures):
    pass


class TestBadInput(BadInputTests, MemoryFixtures):
    pass


class TestGuardedWrites(GuardedWriteTests, MemoryFixtures):
    pass


class TestLeaderLoop(LeaderLoopTests, MemoryFixtures):
    pass
