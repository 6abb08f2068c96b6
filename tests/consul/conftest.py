"""A real ``consul agent -dev`` for the Consul backend tests, started once per test run.

A missing binary or an agent that does not start is an error of every test that needs it
(never a skip): run ``scripts/install-servers`` first.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from coordination.testing.plugin import share_server
from coordination.testing.servers import ConsulProcess


@pytest.fixture(scope="session")
def consul_server(
    request: pytest.FixtureRequest, session_scaled: Callable[[float], float]
) -> Iterator[ConsulProcess]:
    """The agent; ``session_ttl_min`` is 1s so that short TTLs (and expiry tests) are allowed.
    Shared: brought back if a test leaves it dead, and that test fails."""
    server = ConsulProcess(session_ttl_min="1s", start_timeout=session_scaled(60))
    server.start()
    try:
        yield share_server(request, server)
    finally:
        server.close()


@pytest.fixture
def consul_url(consul_server: ConsulProcess) -> str:
    """The agent's URL with a namespace of this test's own."""
    return f"{consul_server.url}/t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def consul_env(consul_server: ConsulProcess) -> dict[str, str]:
    """Environment for the ``consul`` CLI: this agent, and none of the caller's CONSUL_* settings."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("CONSUL_")}
    env.update(consul_server.consul_env())
    return env
