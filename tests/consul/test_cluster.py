"""The cluster fault suite on 3 Consul servers and a client agent (one set for the module).

The SDK under test talks to the client agent first, then to the servers (the cluster's URL
order). Sessions get an 8 s TTL (a leader election must not outlast it) and a lock-delay as
long as their TTL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_consul_conformance import ConsulFixtures

from coordination.testing import ClusterFaultTests, SharedCluster
from coordination.testing.servers import ConsulCluster


@pytest.fixture(scope="module")
def shared_cluster(session_scaled: Callable[[float], float]) -> Iterator[ConsulCluster]:
    """3 running servers and a client agent, lent to each test (healed before and after it)."""
    with ConsulCluster(servers=3, session_ttl_min="1s", start_timeout=session_scaled(90)) as cluster:
        yield cluster


class ConsulClusterFixtures(ConsulFixtures):
    def cluster_options(self, options: dict[str, Any]) -> dict[str, Any]:
        # No renewal succeeds while the servers elect a leader (1.5-2.6 s here, with Raft
        # timing at raft_multiplier 1): the TTL must outlast an election plus a renewal interval.
        ttl = 8.0
        return {**options, "ttl": ttl, "timeout": 3.0, "lock_delay": ttl}


class TestClusterFaults(ClusterFaultTests, SharedCluster, ConsulClusterFixtures):
    pass
