"""Real etcd servers for the etcd backend's tests: etcd 3.4 (Debian) and 3.5 (built from etcd's module).

Every test that uses ``etcd_server`` runs once per version. A server that is not installed
fails the tests (``ServerNotInstalled``); it is never a skip.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from coordination.testing.plugin import share_server
from coordination.testing.servers import EtcdProcess

VERSIONS = ["3.4", "3.5"]


@pytest.fixture(scope="session", params=VERSIONS, ids=[f"etcd{v}" for v in VERSIONS])
def etcd_server(
    request: pytest.FixtureRequest, session_scaled: Callable[[float], float]
) -> Iterator[EtcdProcess]:
    """A running single-member etcd of the parametrized version, shared by the session:
    brought back if a test leaves it dead, and that test fails."""
    with EtcdProcess(version=request.param, start_timeout=session_scaled(60)) as server:
        yield share_server(request, server)


@pytest.fixture
def namespace() -> str:
    """A key namespace of this test's own."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def etcd_url(etcd_server: EtcdProcess, namespace: str) -> str:
    """``etcd://127.0.0.1:PORT/<namespace>`` of the test's server."""
    return f"{etcd_server.url}/{namespace}"
