"""The cluster fault suite on 3 Consul servers and a client agent (one set for the module).

The SDK under test talks to the client agent first, then to the servers (the cluster's URL
order). Sessions get an 8 s TTL (a leader election must not outlast it) and a lock-delay as
long as their TTL.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from test_consul_conformance import ConsulFixtures

from coordination.testing import ClusterFaultTests, Harness
from coordination.testing.servers import ConsulCluster, ServerCluster


@pytest.fixture(scope="module")
def consul_cluster() -> Iterator[ConsulCluster]:
    """3 running servers and a client agent, lent to each test (healed before and after it)."""
    with ConsulCluster(servers=3, session_ttl_min="1s") as cluster:
        yield cluster


class ConsulClusterFixtures(ConsulFixtures):
    @pytest.fixture
    def coordination_url(self, consul_cluster: ConsulCluster) -> str:
        return consul_cluster.url

    @pytest.fixture
    def server(self) -> None:
        return None

    @pytest.fixture(autouse=True)
    def _lend_cluster(self, consul_cluster: ConsulCluster) -> None:
        self.cluster = consul_cluster

    def new_cluster(self, harness: Harness) -> ServerCluster[Any]:
        return self.cluster

    def cluster_options(self, options: dict[str, Any]) -> dict[str, Any]:
        # No renewal succeeds while the servers elect a leader (1.5-2.6 s here, with Raft
        # timing at raft_multiplier 1): the TTL must outlast an election plus a renewal interval.
        ttl = 8.0
        return {**options, "ttl": ttl, "timeout": 3.0, "lock_delay": ttl}


class TestClusterFaults(ClusterFaultTests, ConsulClusterFixtures):
    pass
