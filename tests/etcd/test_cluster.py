"""The cluster fault suite on a 3-member etcd 3.5 cluster (one for the module)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from coordination.testing import ClusterFaultTests, Harness
from coordination.testing.servers import EtcdCluster, ServerCluster

from .test_conformance import EtcdFixtures


@pytest.fixture(scope="module")
def etcd_cluster() -> Iterator[EtcdCluster]:
    """A running 3-member cluster, lent to each test (healed before and after it)."""
    with EtcdCluster(size=3, version="3.5") as cluster:
        yield cluster


class EtcdClusterFixtures(EtcdFixtures):
    @pytest.fixture
    def coordination_url(self, etcd_cluster: EtcdCluster) -> str:
        return etcd_cluster.url

    @pytest.fixture
    def server(self) -> None:
        return None

    @pytest.fixture(autouse=True)
    def _lend_cluster(self, etcd_cluster: EtcdCluster) -> None:
        self.cluster = etcd_cluster

    def new_cluster(self, harness: Harness) -> ServerCluster[Any]:
        return self.cluster


class TestClusterFaults(ClusterFaultTests, EtcdClusterFixtures):
    pass
