"""Real 3-node clusters: a leader is elected, survives a killed leader and a paused follower, and a
restarted node rejoins with its data.

One cluster per backend (class-scoped, so that only one runs at a time); every test leaves all
its nodes running. Reads and writes go through each server's own CLI or HTTP API, not the SDK.
A missing binary fails the test (ServerNotInstalled), it is never skipped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Literal, TypeVar

import pytest
from test_servers import http

from coordination.testing.servers import (
    ConsulCluster,
    EtcdCluster,
    ServerCluster,
    ServerNotInstalled,
    ServerProcess,
    ZooKeeperEnsemble,
)

T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float) -> T:
    """``check()`` once it stops raising AssertionError (or the last error after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.1)


def test_missing_binary_fails_the_whole_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COORDINATION_ETCD35", "/nonexistent/etcd")
    cluster = EtcdCluster()
    with pytest.raises(ServerNotInstalled, match="COORDINATION_ETCD35"):
        cluster.start()
    assert not cluster.running
    cluster.close()


# Class-scoped: a cluster lives for its test class only, so that only one runs at a time.


@pytest.fixture(scope="class")
def zookeeper_ensemble(session_scaled: Callable[[float], float]) -> Iterator[ZooKeeperEnsemble]:
    with ZooKeeperEnsemble(start_timeout=session_scaled(90)) as ensemble:
        print(f"zookeeper ensemble started in {ensemble.startup_seconds:.2f} s")
        yield ensemble


@pytest.fixture(scope="class", params=["3.5", "3.4"])
def etcd_cluster(
    request: pytest.FixtureRequest, session_scaled: Callable[[float], float]
) -> Iterator[EtcdCluster]:
    version: Literal["3.4", "3.5"] = request.param
    with EtcdCluster(version=version, start_timeout=session_scaled(90)) as cluster:
        print(f"etcd {version} cluster started in {cluster.startup_seconds:.2f} s")
        yield cluster


@pytest.fixture(scope="class")
def consul_cluster(session_scaled: Callable[[float], float]) -> Iterator[ConsulCluster]:
    with ConsulCluster(start_timeout=session_scaled(90)) as cluster:
        print(f"consul cluster started in {cluster.startup_seconds:.2f} s")
        yield cluster


class _ClusterScenarios:
    """What every cluster kind must do; a subclass provides the ``cluster`` fixture and I/O."""

    size: ClassVar[int] = 3
    scaled: Callable[[float], float]

    @pytest.fixture(autouse=True)
    def _scaled(self, scaled: Callable[[float], float]) -> None:
        self.scaled = scaled

    def leader(self, cluster: ServerCluster[Any]) -> int:
        """The cluster's leader, waiting up to a scaled 30 s for one."""
        return cluster.leader(self.scaled(30))

    def healthy(self, cluster: ServerCluster[Any]) -> None:
        """Wait up to a scaled 60 s until the cluster is healthy."""
        cluster.wait_healthy(self.scaled(60))

    def eventually(self, check: Callable[[], T]) -> T:
        return eventually(check, self.scaled(15))

    def write(self, node: Any, key: str, value: str) -> None:
        raise NotImplementedError

    def read(self, node: Any, key: str) -> str | None:
        raise NotImplementedError

    def check_rejoined(self, cluster: Any, index: int) -> None:
        """More checks, per backend, on a node that has rejoined."""

    def others(self, cluster: ServerCluster[Any], *excluded: int) -> list[int]:
        return [index for index in range(len(cluster.nodes)) if index not in excluded]

    def test_url_lists_the_endpoints_and_a_leader_is_elected(self, cluster: ServerCluster[Any]) -> None:
        assert len(cluster.nodes) == self.size
        assert all(node.running and not node.paused for node in cluster.members)
        hosts = cluster.url.split("://", 1)[1].split(",")
        assert hosts == [endpoint.address for endpoint in cluster.endpoints]
        assert len(set(hosts)) == len(hosts)
        assert cluster.url.startswith(f"{cluster.scheme}://127.0.0.1:")
        leader = self.leader(cluster)
        assert 0 <= leader < self.size
        assert self.leader(cluster) == leader  # stable while nothing happens
        for index, node in enumerate(cluster.nodes):
            assert cluster.node_index(node.port) == index
            assert cluster.endpoint(node.port) is node
        with pytest.raises(ValueError, match=f"no {cluster.name} node listens for clients on port 1"):
            cluster.node_index(1)

    def test_killed_leader_is_replaced_and_rejoins_with_its_data(self, cluster: ServerCluster[Any]) -> None:
        old = self.leader(cluster)
        self.write(cluster.nodes[old], "before", "1")
        cluster.nodes[old].kill()
        assert not cluster.nodes[old].running
        began = time.monotonic()
        new = self.leader(cluster)
        print(f"{cluster.name}: new leader after {time.monotonic() - began:.2f} s")
        assert new != old
        self.healthy(cluster)
        # Write through one surviving node, read through the other.
        writer, reader = self.others(cluster, old)
        self.write(cluster.nodes[writer], "after", "2")
        assert self.eventually(lambda: self._read_equal(cluster.nodes[reader], "after", "2"))
        assert self.read(cluster.nodes[reader], "before") == "1"

        cluster.restart_node(old, graceful=False)
        assert cluster.nodes[old].running
        self.healthy(cluster)
        assert self.eventually(lambda: self._read_equal(cluster.nodes[old], "after", "2"))
        assert self.read(cluster.nodes[old], "before") == "1"
        self.check_rejoined(cluster, old)

    def test_paused_follower_and_graceful_restart(self, cluster: ServerCluster[Any]) -> None:
        leader = self.leader(cluster)
        follower = self.others(cluster, leader)[0]
        node = cluster.nodes[follower]
        node.pause()
        try:
            assert node.paused
            assert self.leader(cluster) == leader  # the quorum without it still stands
            self.write(cluster.nodes[leader], "during-pause", "3")
        finally:
            node.resume()
        self.healthy(cluster)
        assert self.eventually(lambda: self._read_equal(node, "during-pause", "3"))

        cluster.restart_node(follower, graceful=True)
        self.healthy(cluster)
        assert self.read(node, "during-pause") == "3"
        assert 0 <= self.leader(cluster) < self.size

    def _read_equal(self, node: Any, key: str, value: str) -> bool:
        assert self.read(node, key) == value
        return True


# --------------------------------------------------------------------------- ZooKeeper


class TestZooKeeperEnsemble(_ClusterScenarios):
    @pytest.fixture
    def cluster(self, zookeeper_ensemble: ZooKeeperEnsemble) -> ZooKeeperEnsemble:
        return zookeeper_ensemble

    def write(self, node: Any, key: str, value: str) -> None:
        done = node.zkcli("create", f"/{key}", value, check=False)
        assert "Created" in done.stdout + done.stderr, done.stdout + done.stderr

    def read(self, node: Any, key: str) -> str | None:
        done = node.zkcli("get", f"/{key}", check=False)
        if "does not exist" in done.stdout + done.stderr:
            return None
        return str(done.stdout.strip().splitlines()[-1])

    def test_members_are_an_ensemble(self, cluster: ZooKeeperEnsemble) -> None:
        modes = sorted(node.mode(self.scaled(5)) for node in cluster.nodes)
        assert modes == ["follower", "follower", "leader"]
        config = (cluster.nodes[0].base_dir / "zoo.cfg").read_text()
        for node in cluster.nodes:
            assert f"server.{node.myid}=127.0.0.1:{node.peer_port}:{node.election_port}" in config
        # Short sessions stay possible: ZooKeeper grants down to 2 ticks.
        assert "minSessionTimeout=200" in config


# --------------------------------------------------------------------------- etcd


class TestEtcdCluster(_ClusterScenarios):
    @pytest.fixture
    def cluster(self, etcd_cluster: EtcdCluster) -> EtcdCluster:
        return etcd_cluster

    def write(self, node: Any, key: str, value: str) -> None:
        assert node.etcdctl("put", key, value).stdout.strip() == "OK"

    def read(self, node: Any, key: str) -> str | None:
        lines = node.etcdctl("get", key, "--print-value-only").stdout.splitlines()
        return lines[0] if lines else None

    def test_members_know_each_other(self, cluster: EtcdCluster) -> None:
        listed = json.loads(cluster.nodes[0].etcdctl("member", "list", "-w", "json").stdout)
        assert sorted(member["name"] for member in listed["members"]) == ["node0", "node1", "node2"]
        statuses = [node.status(self.scaled(5)) for node in cluster.nodes]
        assert statuses[0]["version"].startswith(cluster.version)
        assert len({status["leader"] for status in statuses}) == 1
        leader_id = statuses[self.leader(cluster)]["header"]["member_id"]
        assert statuses[0]["leader"] == leader_id


# --------------------------------------------------------------------------- Consul


class TestConsulCluster(_ClusterScenarios):
    @pytest.fixture
    def cluster(self, consul_cluster: ConsulCluster) -> ConsulCluster:
        return consul_cluster

    def write(self, node: Any, key: str, value: str) -> None:
        status, body = http("PUT", f"{node.http_url}/v1/kv/{key}", value.encode(), timeout=self.scaled(5))
        assert (status, body.strip()) == (200, b"true")

    def read(self, node: Any, key: str) -> str | None:
        status, body = http("GET", f"{node.http_url}/v1/kv/{key}?raw", timeout=self.scaled(5))
        if status == 404:
            return None
        assert status == 200, body
        return body.decode()

    def test_servers_and_client_agent(self, cluster: ConsulCluster) -> None:
        assert len(cluster.clients) == 1
        assert cluster.endpoints[0] is cluster.client
        status, body = http("GET", f"{cluster.client.http_url}/v1/agent/members", timeout=self.scaled(5))
        assert status == 200
        members = {member["Name"]: member for member in json.loads(body)}
        assert sorted(members) == ["client0", "server0", "server1", "server2"]
        assert all(member["Status"] == 1 for member in members.values())  # alive
        assert members["client0"]["Tags"]["role"] == "node"
        # A write through the client agent is read back through every server.
        self.write(cluster.client, "via-client", "c")
        for server in cluster.nodes:
            assert self.read(server, "via-client") == "c"
        self._assert_three_voters(cluster)

    def check_rejoined(self, cluster: Any, index: int) -> None:
        # The killed leader came back as a voter (autopilot's dead-server cleanup is off).
        self._assert_three_voters(cluster)

    def test_client_agent_restart_keeps_its_sessions(self, cluster: ConsulCluster) -> None:
        session = self._create_session(cluster.client)
        began = time.monotonic()
        cluster.client.restart(graceful=True)  # SIGTERM: with leave_on_terminate off, no leave
        print(f"consul client agent restarted in {time.monotonic() - began:.2f} s")
        self.healthy(cluster)
        assert self._session_exists(cluster.nodes[0], session)

    def test_client_agent_that_leaves_loses_its_sessions(self, cluster: ConsulCluster) -> None:
        client: Any = cluster.client
        session = self._create_session(client)
        client.leave_on_terminate = True
        try:
            client.stop()  # the agent leaves: its node is deregistered and its sessions go
            self.eventually(lambda: self._assert_no_session(cluster.nodes[0], session))
        finally:
            client.leave_on_terminate = False
            client.start()
        self.healthy(cluster)

    def _assert_three_voters(self, cluster: ConsulCluster) -> None:
        def voters() -> list[str]:
            url = f"{cluster.nodes[0].http_url}/v1/operator/raft/configuration"
            status, body = http("GET", url, timeout=self.scaled(5))
            assert status == 200, body
            servers = json.loads(body)["Servers"]
            found = sorted(server["Node"] for server in servers if server["Voter"])
            assert found == ["server0", "server1", "server2"]
            return found

        self.eventually(voters)

    def _create_session(self, node: ServerProcess) -> str:
        agent: Any = node
        status, body = http(
            "PUT", f"{agent.http_url}/v1/session/create", b'{"TTL": "30s"}', timeout=self.scaled(5)
        )
        assert status == 200, body
        return str(json.loads(body)["ID"])

    def _assert_no_session(self, node: Any, session: str) -> None:
        assert not self._session_exists(node, session)

    def _session_exists(self, node: Any, session: str) -> bool:
        status, body = http("GET", f"{node.http_url}/v1/session/info/{session}", timeout=self.scaled(5))
        assert status == 200, body
        return bool(json.loads(body))
