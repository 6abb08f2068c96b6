"""The conformance suite on a real Consul agent.

Sessions get a 3 s TTL (the agent allows 1 s and up) and a 1 s lock-delay, so that the
expiry tests, where a holder's session is destroyed from outside and its lock goes to
another session only after the lock-delay, stay fast.
"""

from __future__ import annotations

from typing import Any

import pytest

from coordination.testing import (
    BadInputTests,
    ConfigTests,
    CoordinationFixtures,
    ElectionTests,
    LockTests,
    SessionTests,
)
from coordination.testing.servers import ConsulProcess, ServerProcess


class ConsulFixtures(CoordinationFixtures):
    @pytest.fixture
    def coordination_url(self, consul_server: ConsulProcess) -> str:
        return consul_server.url

    @pytest.fixture
    def server(self, consul_server: ConsulProcess) -> ServerProcess:
        return consul_server

    @pytest.fixture
    def session_options(self) -> dict[str, Any]:
        return {"ttl": 3.0, "timeout": 5.0, "lock_delay": 1.0}

    def failover_bound(self, options: dict[str, Any]) -> float:
        # Consul invalidates a session twice its TTL after the last renewal, then keeps its
        # locks from everyone for the lock-delay; waiters retry through it up to 0.5 s apart.
        return 2 * float(options["ttl"]) + float(options["lock_delay"]) + 1.5


class TestLock(LockTests, ConsulFixtures):
    pass


class TestElection(ElectionTests, ConsulFixtures):
    pass


class TestConfig(ConfigTests, ConsulFixtures):
    pass


class TestSession(SessionTests, ConsulFixtures):
    pass


class TestBadInput(BadInputTests, ConsulFixtures):
    pass
