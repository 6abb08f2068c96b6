"""The conformance suite on the embedded memory backend."""

from __future__ import annotations

import uuid

import pytest

from coordination.testing import (
    BadInputTests,
    ConfigTests,
    CoordinationFixtures,
    ElectionTests,
    LockTests,
    SessionTests,
)


class MemoryFixtures(CoordinationFixtures):
    @pytest.fixture
    def coordination_url(self) -> str:
        return f"memory://conformance-{uuid.uuid4().hex[:8]}"


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
