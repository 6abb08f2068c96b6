"""The cluster fault suite on a 3-server ZooKeeper ensemble (one for the module)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from coordination.testing import ClusterFaultTests, SharedCluster
from coordination.testing.servers import ZooKeeperEnsemble

from .conftest import TICK_MS, ZooKeeperFixtures


@pytest.fixture(scope="module")
def shared_cluster(session_scaled: Callable[[float], float]) -> Iterator[ZooKeeperEnsemble]:
    """A running 3-server ensemble, lent to each test (healed before and after it)."""
    with ZooKeeperEnsemble(size=3, tick_time_ms=TICK_MS, start_timeout=session_scaled(90)) as ensemble:
        yield ensemble


class TestClusterFaults(ClusterFaultTests, SharedCluster, ZooKeeperFixtures):
    pass
