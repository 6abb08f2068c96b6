"""The conformance suite, fault suite included, on a real Consul agent.

Sessions get a 3 s TTL (the agent allows 1 s and up) and a 2 s lock-delay, so that the
expiry tests, where a holder's session is destroyed from outside and its lock goes to
another session only after the lock-delay, stay fast. The fault suite uses 2 s and 3 s,
and a server of its own that keeps its data across a restart (not ``-dev``) where it
pauses, kills or restarts the server.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Collection
from typing import Any

import anyio
import pytest

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
from coordination.testing.servers import ConsulProcess, ServerProcess, find_consul
from coordination_consul import lock_key


def _get(url: str, timeout: float) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            if error.code == 404:
                return None
            raise


class ConsulFixtures(CoordinationFixtures):
    @pytest.fixture
    def coordination_url(self, consul_server: ConsulProcess) -> str:
        return consul_server.url

    @pytest.fixture
    def server(self, consul_server: ConsulProcess) -> ServerProcess:
        return consul_server

    @pytest.fixture
    def session_options(self) -> dict[str, Any]:
        # The lock-delay bounds the local deadline when shorter than the TTL: 2 s keeps the
        # renewals' reply budget (a fifth of it) clear of a busy event loop.
        return {"ttl": 3.0, "timeout": 5.0, "lock_delay": 2.0}

    def failover_bound(self, options: dict[str, Any]) -> float:
        # Consul invalidates a session twice its TTL after the last renewal, then keeps its
        # locks from everyone for the lock-delay; waiters retry through it up to 0.5 s apart.
        return 2 * float(options["ttl"]) + float(options["lock_delay"]) + 1.5

    def fault_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return {**options, "ttl": 2.0, "timeout": 2.0, "lock_delay": 3.0}

    def new_server(self, harness: Harness) -> ServerProcess:
        return ConsulProcess(session_ttl_min="1s", persistent=True, start_timeout=harness.t(60))

    async def remove_owner(self, harness: Harness, kind: Kind, name: str) -> bool:
        """``consul kv delete`` of the lock's (election's) key, which Consul lets anyone do
        whatever session holds it."""
        url = parse_url(harness.url)
        ((host, port),) = url.hosts
        key = lock_key(kind, f"{url.namespace}/{name}")
        base = f"http://{host}:{port}/v1"
        held = await anyio.to_thread.run_sync(
            _get, f"{base}/kv/{urllib.parse.quote(key)}?consistent", harness.t(10)
        )
        command = [str(find_consul()), "kv", "delete", f"-http-addr={host}:{port}", key]
        done = await anyio.run_process(command, check=True)
        assert b"Success" in done.stdout, done.stdout
        return bool(held and held[0].get("Session"))

    async def leftovers(self, harness: Harness, session_ids: Collection[str] = ()) -> list[str]:
        """Keys under the namespace held by a session (contenders), and sessions still alive."""
        url = parse_url(harness.url)
        ((host, port),) = url.hosts
        base = f"http://{host}:{port}/v1"
        prefix = urllib.parse.quote(f"{url.namespace}/")

        def look() -> list[str]:
            found = []
            for pair in _get(f"{base}/kv/{prefix}?recurse&consistent", harness.t(10)) or ():
                if pair.get("Session"):
                    value = base64.b64decode(pair.get("Value") or "").decode(errors="replace")
                    found.append(f"key {pair['Key']} held by session {pair['Session']} ({value})")
            for session_id in session_ids:
                if _get(f"{base}/session/info/{session_id}?consistent", harness.t(10)):
                    found.append(f"session {session_id}")
            return found

        return await anyio.to_thread.run_sync(look)


class TestLock(LockTests, ConsulFixtures):
    pass


class TestElection(ElectionTests, ConsulFixtures):
    pass


class TestConfig(ConfigTests, ConsulFixtures):
    pass


class TestSession(SessionTests, ConsulFixtures):
    pass


class TestBadInput(BadInputTests, ConsulFixtures):
    pass


class TestFaults(FaultTests, ConsulFixtures):
    pass


class TestGroup(GroupTests, ConsulFixtures):
    pass


class TestGuardedWrites(GuardedWriteTests, ConsulFixtures):
    pass


class TestLeaderLoop(LeaderLoopTests, ConsulFixtures):
    pass
