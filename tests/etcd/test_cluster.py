"""The cluster fault suite on a 3-member etcd 3.5 cluster (one for the module)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from coordination.testing import ClusterFaultTests, SharedCluster
from coordination.testing.servers import EtcdCluster

from .test_conformance import EtcdFixtures


@pytest.fixture(scope="module")
def shared_cluster(session_scaled: Callable[[float], float]) -> Iterator[EtcdCluster]:
    """A running 3-member cluster, lent to each test (healed before and after it)."""
    with EtcdCluster(size=3, version="3.5", start_timeout=session_scaled(90)) as cluster:
        yield cluster


class TestClusterFaults(ClusterFaultTests, SharedCluster, EtcdFixtures):
    pass
