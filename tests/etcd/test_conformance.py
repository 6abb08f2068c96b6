"""The conformance suite, fault suite included, on the etcd backend, against etcd 3.4 and 3.5."""

from __future__ import annotations

import urllib.request
from collections.abc import Collection

import anyio
import pytest
from aetcd import rpc  # type: ignore[import-untyped]

from coordination import Coordinator
from coordination._url import parse_url
from coordination.abc import Kind
from coordination.testing import (
    BadInputTests,
    ConfigTests,
    CoordinationFixtures,
    ElectionTests,
    FaultTests,
    GroupTests,
    GuardedWriteTests,
    Harness,
    LeaderLoopTests,
    LockTests,
    SessionTests,
)
from coordination.testing.servers import EtcdProcess, ServerProcess
from coordination_etcd._client import range_request, rpc_errors

from ._helpers import client_of


class EtcdFixtures(CoordinationFixtures):
    @pytest.fixture
    def coordination_url(self, etcd_server: EtcdProcess) -> str:
        return etcd_server.url

    @pytest.fixture
    def server(self, etcd_server: EtcdProcess) -> EtcdProcess:
        return etcd_server

    def new_server(self, harness: Harness) -> ServerProcess:
        assert isinstance(harness.server, EtcdProcess)
        return EtcdProcess(version=harness.server.version, start_timeout=harness.t(60))

    async def leftovers(self, harness: Harness, session_ids: Collection[str] = ()) -> list[str]:
        """Keys bound to a lease under the namespace (contenders), and leases still granted."""
        async with harness.session() as coord:
            client = client_of(coord)
            prefix = f"{coord.namespace}/".encode()
            reply = await client.range(range_request(prefix, prefix=True, keys_only=True))
            found = [f"key {kv.key.decode()} (lease {kv.lease:x})" for kv in reply.kvs if kv.lease]
            for session_id in session_ids:
                with rpc_errors("lease time to live"):
                    ttl = await client._lease.LeaseTimeToLive(
                        rpc.LeaseTimeToLiveRequest(ID=int(session_id, 16)), timeout=client.timeout
                    )
                if ttl.TTL > 0:
                    found.append(f"lease {session_id} ({ttl.TTL}s to live)")
        return found

    async def watches(self, harness: Harness, coord: Coordinator) -> int:
        """The watchers the server holds (its ``etcd_debugging_mvcc_watcher_total`` metric)."""
        assert isinstance(harness.server, EtcdProcess)
        url = f"http://127.0.0.1:{harness.server.port}/metrics"

        def read() -> str:
            with urllib.request.urlopen(url, timeout=harness.t(5)) as reply:
                text: str = reply.read().decode()
                return text

        for line in (await anyio.to_thread.run_sync(read)).splitlines():
            if line.startswith("etcd_debugging_mvcc_watcher_total "):
                return int(float(line.split()[1]))
        raise AssertionError(f"{url} has no etcd_debugging_mvcc_watcher_total")

    async def remove_owner(self, harness: Harness, kind: Kind, name: str) -> bool:
        """``etcdctl del`` of the first contender key under the name (by create revision)."""
        assert isinstance(harness.server, EtcdProcess)
        server = harness.server
        prefix = f"{parse_url(harness.url).namespace}/{name}/"

        def delete() -> bool:
            listed = server.etcdctl(
                "get", prefix, "--prefix", "--sort-by=CREATE", "--order=ASCEND", "--keys-only"
            )
            keys = [key for key in listed.stdout.split() if "/" not in key[len(prefix) :]]
            return bool(keys) and server.etcdctl("del", keys[0]).stdout.strip() == "1"

        return await anyio.to_thread.run_sync(delete)

    history_compaction = True

    async def compact(self, harness: Harness) -> None:
        """Compact etcd's history up to its current revision."""
        async with harness.session() as coord:
            client = client_of(coord)
            revision = (await client.range(range_request(b"\0"))).header.revision
            with rpc_errors("compaction"):
                await client._kv.Compact(
                    rpc.CompactionRequest(revision=revision, physical=True), timeout=client.timeout
                )


class TestLock(LockTests, EtcdFixtures):
    pass


class TestElection(ElectionTests, EtcdFixtures):
    pass


class TestConfig(ConfigTests, EtcdFixtures):
    pass


class TestSession(SessionTests, EtcdFixtures):
    pass


class TestBadInput(BadInputTests, EtcdFixtures):
    pass


class TestFaults(FaultTests, EtcdFixtures):
    pass


class TestGroup(GroupTests, EtcdFixtures):
    pass


class TestGuardedWrites(GuardedWriteTests, EtcdFixtures):
    pass


class TestLeaderLoop(LeaderLoopTests, EtcdFixtures):
    pass
