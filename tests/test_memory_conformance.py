"""The conformance suite on the embedded memory backend."""

from __future__ import annotations

import uuid
from collections.abc import Collection

import pytest

from coordination import Coordinator
from coordination.memory import MemoryBackend
from coordination.testing import (
    BadInputTests,
    ConfigTests,
    CoordinationFixtures,
    ElectionTests,
    GroupTests,
    Harness,
    LockTests,
    SessionTests,
)


class MemoryFixtures(CoordinationFixtures):
    @pytest.fixture
    def coordination_url(self) -> str:
        return f"memory://conformance-{uuid.uuid4().hex[:8]}"

    async def leftovers(self, harness: Harness, session_ids: Collection[str] = ()) -> list[str]:
        """Contenders queued under the namespace, and sessions of ``session_ids`` still alive."""
        async with harness.session() as coord:
            backend = coord.driver
            assert isinstance(backend, MemoryBackend)
            store = backend.store
            prefix = f"{coord.namespace}/"
            found = [
                f"{contender.kind} {contender.name} (session {contender.session.id})"
                for (_, name), queue in store.queues.items()
                if name.startswith(prefix)
                for contender in queue
            ]
            found += [f"session {sid}" for sid in session_ids if sid in store.sessions]
        return found

    async def watches(self, harness: Harness, coord: Coordinator) -> int:
        """The watches waiting in the store of ``coord``'s connection."""
        backend = coord.driver
        assert isinstance(backend, MemoryBackend)
        return sum(backend.store.watching.values())


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
