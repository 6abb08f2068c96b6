"""The cluster fault suite on a 3-server ZooKeeper ensemble (one for the module)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from coordination.testing import ClusterFaultTests, Harness
from coordination.testing.servers import ServerCluster, ZooKeeperEnsemble

from .conftest import TICK_MS, ZooKeeperFixtures


@pytest.fixture(scope="module")
def zookeeper_ensemble() -> Iterator[ZooKeeperEnsemble]:
    """A running 3-server ensemble, lent to each test (healed before and after it)."""
    with ZooKeeperEnsemble(size=3, tick_time_ms=TICK_MS) as ensemble:
        yield ensemble


class ZooKeeperClusterFixtures(ZooKeeperFixtures):
    @pytest.fixture
    def coordination_url(self, zookeeper_ensemble: ZooKeeperEnsemble) -> str:
        return zookeeper_ensemble.url

    @pytest.fixture
    def server(self) -> None:
        return None

    @pytest.fixture(autouse=True)
    def _lend_ensemble(self, zookeeper_ensemble: ZooKeeperEnsemble) -> None:
        self.ensemble = zookeeper_ensemble

    def new_cluster(self, harness: Harness) -> ServerCluster[Any]:
        return self.ensemble


class TestClusterFaults(ClusterFaultTests, ZooKeeperClusterFixtures):
    pass
