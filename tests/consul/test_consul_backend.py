"""What the Consul backend does beyond the conformance suite, on the real agent.

The layout on the server, the session's parameters, the token's way to the server, lock-delay,
renewal, crash failover of a holder process, index resets, several hosts and TLS options.
"""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import pytest
from _consul_helpers import pair_token, raw_kv, raw_session
from aiohttp import web
from anyio.streams.buffered import BufferedByteReceiveStream

import coordination
import coordination_consul._session
from coordination import (
    InvalidName,
    InvalidURL,
    LockLost,
    SessionState,
    Unavailable,
    Versioned,
)
from coordination.testing.servers import ConsulProcess, find_consul, free_port
from coordination_consul import LOCK_FLAG_VALUE, ConsulBackend
from coordination_consul._client import go_duration, parse_go_duration
from coordination_consul._session import next_index

OPTIONS = {"ttl": 3.0, "timeout": 5.0, "lock_delay": 1.0}


def namespace(url: str) -> str:
    return url.rsplit("/", 1)[1]


def _put(url: str, body: bytes, timeout: float) -> Any:
    request = urllib.request.Request(url, data=body, method="PUT")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


async def raw_put(
    server: ConsulProcess, path: str, body: bytes = b"", *, scaled: Callable[[float], float]
) -> Any:
    """``PUT /v1/<path>`` straight to the agent (not through the SDK), within a scaled 10 s."""
    return await anyio.to_thread.run_sync(_put, f"{server.http_url}/v1/{path}", body, scaled(10))


# -- pure helpers ----------------------------------------------------------------------------


def test_blocking_index_rules() -> None:
    assert next_index(0, 57) == 57
    assert next_index(57, 57) == 57  # a return is not a change: wait on the same index again
    assert next_index(57, 60) == 60
    assert next_index(60, 12) == 0  # went backwards: start over with a plain read
    assert next_index(0, 0) == 1  # never 0 after a read: that would never block


def test_go_durations() -> None:
    assert go_duration(15) == "15s"
    assert go_duration(1.5) == "1500ms"
    assert go_duration(0) == "0s"
    assert parse_go_duration("15s") == 15
    assert parse_go_duration("1m30s") == 90
    assert parse_go_duration("1500ms") == 1.5
    assert parse_go_duration("") is None
    assert parse_go_duration("soon") is None


# -- URL and options -------------------------------------------------------------------------


def test_defaults_and_options() -> None:
    coord = coordination.connect("consul://127.0.0.1/ns")
    backend = coord._engine.backend
    assert isinstance(backend, ConsulBackend)
    assert coord.ttl == 15
    assert backend.lock_delay == 15
    assert backend.hosts == ["127.0.0.1:8500"]
    local = coordination.connect("consul://")._engine.backend  # no host: the local agent
    assert isinstance(local, ConsulBackend)
    assert local.hosts == ["127.0.0.1:8500"]
    tls = coordination.connect(
        "consul://a:1,[::1]:2/ns?tls=true&datacenter=dc2&lock_delay=0.5"
    )._engine.backend
    assert isinstance(tls, ConsulBackend)
    assert tls.hosts == ["a:1", "[::1]:2"]
    assert tls.tls
    assert tls.datacenter == "dc2"
    assert tls.lock_delay == 0.5
    assert "token" in (ConsulBackend.__doc__ or "")
    assert "lock_delay" in (ConsulBackend.__doc__ or "")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("consul://h/ns?lock_delay=61", "lock_delay"),
        ("consul://h/ns?lock_delay=-1", "lock_delay"),
        ("consul://h/ns?lock_delay=0", "lock_delay"),  # nothing would bound a loss through a leaving agent
        ("consul://h/ns?lock_delay=0.4", "lock_delay"),
        ("consul://h/ns?tls=maybe", "tls"),
        ("consul://h/ns?key_file=/k.pem", "key_file"),
        ("consul://user:pw@h/ns", "token"),
    ],
)
def test_bad_options(url: str, problem: str) -> None:
    with pytest.raises(InvalidURL, match=problem) as info:
        coordination.connect(url)
    assert "pw" not in str(info.value)


def test_token_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    coord = coordination.connect("consul://h:1/ns", token="s3cret-token")
    assert "s3cret" not in repr(coord) + repr(coord._engine.backend)
    with pytest.raises(InvalidURL) as info:
        coordination.connect("consul://h:1/ns", token=42)
    assert "42" not in str(info.value)


# -- the token travels as a header -----------------------------------------------------------


@asynccontextmanager
async def recording_proxy(upstream: str) -> AsyncIterator[tuple[str, list[tuple[str, str, str | None]]]]:
    """A reverse proxy to the real agent that records (method, path?query, X-Consul-Token)."""
    seen: list[tuple[str, str, str | None]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as client:

        async def forward(request: web.Request) -> web.Response:
            seen.append((request.method, request.path_qs, request.headers.get("X-Consul-Token")))
            async with client.request(
                request.method, upstream + request.path_qs, data=await request.read(), headers=request.headers
            ) as reply:
                headers = {k: v for k, v in reply.headers.items() if k.lower().startswith("x-consul")}
                return web.Response(status=reply.status, body=await reply.read(), headers=headers)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        try:
            yield f"consul://127.0.0.1:{port}", seen
        finally:
            await runner.cleanup()


@pytest.mark.asyncio
async def test_token_is_a_header_never_in_a_url(
    consul_server: ConsulProcess,
    consul_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-the-env")
    async with recording_proxy(consul_server.http_url) as (proxy, seen):
        url = f"{proxy}/{namespace(consul_url)}"
        async with coordination.connect(url, token="s3cret-token", **OPTIONS) as coord:
            held = await coord.lock("t").acquire()
            await held.release()
            await coord.config("c").set(b"v")
            assert await coord.config("c").get() is not None
            async for _ in coord.config("c").watch():
                break
            leadership = await coord.election("e").campaign(b"x")
            assert await coord.election("e").leader() is not None
            await leadership.resign()
        requests = len(seen)
        assert requests >= 8
        assert {token for _, _, token in seen} == {"s3cret-token"}, "the option wins over the environment"
        assert not [path for _, path, _ in seen if "s3cret" in path or "token" in path.lower()]
        # Without the option, $CONSUL_HTTP_TOKEN is used.
        async with coordination.connect(url, **OPTIONS) as coord:
            await coord.config("c").get()
        assert {token for _, _, token in seen[requests:]} == {"from-the-env"}
    assert "s3cret" not in caplog.text


# -- layout and session on the server --------------------------------------------------------


@pytest.mark.asyncio
async def test_layout_and_session_on_the_server(
    consul_server: ConsulProcess, consul_url: str, scaled: Callable[[float], float]
) -> None:
    ns = namespace(consul_url)
    async with coordination.connect(consul_url, identity="worker-7", **OPTIONS) as coord:
        session_id = coord.session_id
        assert session_id is not None
        info = await raw_session(consul_server, session_id, scaled=scaled)
        assert info is not None
        assert info["TTL"] == "3s"
        assert info["LockDelay"] == 1_000_000_000  # nanoseconds
        assert info["Behavior"] == "release"
        assert "worker-7" in info["Name"]
        assert coord._engine.session is not None
        # Bound by the 1 s lock-delay, shorter than the TTL: Consul may end the session when
        # its agent leaves, and only the lock-delay keeps its locks from others then.
        assert info["NodeChecks"] == [], "the session must not be bound to the agent's serfHealth"
        assert not info.get("ServiceChecks")
        assert coord._engine.session.bs.ttl == 1.0
        assert coord._engine.session.bs.keepalive_interval == pytest.approx(1 / 3)

        held = await coord.lock("jobs/nightly").acquire()
        pair = await raw_kv(consul_server, f"{ns}/jobs/nightly/.lock", scaled=scaled)
        assert pair is not None
        assert (pair["Flags"], pair["Session"], pair["Value"]) == (LOCK_FLAG_VALUE, session_id, b"worker-7")
        assert pair_token(pair) == held.token

        leadership = await coord.election("jobs/nightly").campaign(b"node-a")
        pair = await raw_kv(consul_server, f"{ns}/jobs/nightly/.election/.lock", scaled=scaled)
        assert pair is not None
        assert (pair["Flags"], pair["Session"], pair["Value"]) == (LOCK_FLAG_VALUE, session_id, b"node-a")
        await leadership.proclaim(b"node-a v2")
        proclaimed = await raw_kv(consul_server, f"{ns}/jobs/nightly/.election/.lock", scaled=scaled)
        assert proclaimed is not None
        assert proclaimed["Value"] == b"node-a v2"
        assert pair_token(proclaimed) == leadership.token, "proclaim keeps the term's token"
        assert proclaimed["ModifyIndex"] > pair["ModifyIndex"]

        version = await coord.config("settings").set(b"v")
        config = await raw_kv(consul_server, f"{ns}/settings", scaled=scaled)
        assert config is not None
        assert config["ModifyIndex"] == version
        assert config["Value"] == b"v"

        await held.release()
        assert await raw_kv(consul_server, f"{ns}/jobs/nightly/.lock", scaled=scaled) is None, (
            "release deletes the key"
        )
    # Closing released the election key (no lock-delay) and destroyed the session.
    assert await raw_kv(consul_server, f"{ns}/jobs/nightly/.election/.lock", scaled=scaled) is None
    assert await raw_session(consul_server, session_id, scaled=scaled) is None


@pytest.mark.asyncio
async def test_tokens_increase_over_released_and_recreated_keys(
    consul_server: ConsulProcess, consul_url: str, scaled: Callable[[float], float]
) -> None:
    """Token = CreateIndex + LockIndex - 1, through a foreign session that leaves the key behind."""
    ns = namespace(consul_url)
    key = f"{ns}/mixed/.lock"
    foreign = (
        await raw_put(consul_server, "session/create", b'{"TTL": "10s", "LockDelay": "0s"}', scaled=scaled)
    )["ID"]
    try:
        assert (
            await raw_put(consul_server, f"kv/{key}?acquire={foreign}&flags={LOCK_FLAG_VALUE}", scaled=scaled)
            is True
        )
        first = await raw_kv(consul_server, key, scaled=scaled)
        assert first is not None
        assert (
            await raw_put(consul_server, f"kv/{key}?release={foreign}&flags={LOCK_FLAG_VALUE}", scaled=scaled)
            is True
        )
        async with coordination.connect(consul_url, **OPTIONS) as coord:
            held = await coord.lock("mixed").acquire(timeout=scaled(5))  # LockIndex 2 on the same key
            assert held.token > pair_token(first)
            await held.release()  # deletes the key
            assert (
                await raw_put(
                    consul_server, f"kv/{key}?acquire={foreign}&flags={LOCK_FLAG_VALUE}", scaled=scaled
                )
                is True
            )
            recreated = await raw_kv(consul_server, key, scaled=scaled)
            assert recreated is not None
            assert recreated["LockIndex"] == 1
            assert pair_token(recreated) > held.token
            assert (
                await raw_put(
                    consul_server, f"kv/{key}?release={foreign}&flags={LOCK_FLAG_VALUE}", scaled=scaled
                )
                is True
            )
            again = await coord.lock("mixed").acquire(timeout=scaled(5))
            assert again.token > pair_token(recreated)
            await again.release()
    finally:
        await raw_put(consul_server, f"session/destroy/{foreign}", scaled=scaled)


@pytest.mark.asyncio
async def test_a_key_that_is_not_a_lock_is_left_alone(
    consul_server: ConsulProcess, consul_url: str, scaled: Callable[[float], float]
) -> None:
    ns = namespace(consul_url)
    assert await raw_put(consul_server, f"kv/{ns}/plain/.lock", b"someone's data", scaled=scaled) is True
    async with coordination.connect(consul_url, **OPTIONS) as coord:
        with pytest.raises(InvalidName, match="not a lock"):
            await coord.lock("plain").acquire(timeout=scaled(5))
    pair = await raw_kv(consul_server, f"{ns}/plain/.lock", scaled=scaled)
    assert pair is not None
    assert pair["Value"] == b"someone's data"
    assert not pair.get("Session")


@pytest.mark.asyncio
async def test_config_versions_are_modify_indexes(consul_url: str) -> None:
    async with coordination.connect(consul_url, **OPTIONS) as coord:
        cfg = coord.config("cas")
        assert await cfg.compare_and_set(b"x", 0) is False
        assert await cfg.get() is None
        assert await cfg.compare_and_set(b"x", None) is True
        current = await cfg.get()
        assert current is not None
        assert await cfg.compare_and_set(b"y", 0) is False  # 0 is no version (not "only if absent")
        newer = await cfg.set(b"y")
        assert newer > current.version
        assert await cfg.get() == Versioned(b"y", newer)
        # Consul skips a write that changes nothing: the version stays (documented).
        assert await cfg.set(b"y") == newer


def _wakeups(coords: list[coordination.Coordinator]) -> int:
    """The wake-ups counted by the coordinators' backends (``Backend.wakeups``), summed."""
    return sum(coord._engine.backend.wakeups or 0 for coord in coords)


@pytest.mark.asyncio
async def test_a_release_wakes_every_waiter(
    consul_url: str, monkeypatch: pytest.MonkeyPatch, scaled: Callable[[float], float]
) -> None:
    """Waiters wait in blocking queries on the lock key itself (Consul's own lock recipe has
    no queue to watch a predecessor in), so the backend does not declare SINGLE_WAKEUP: a
    release answers the query of every waiter. Each counts one wake-up (``Backend.wakeups``);
    one locks the key, the others look again and block anew. While the lock is held and
    nothing changes, nobody wakes: they block, they do not poll."""
    # A blocking query whose wait runs out is answered too, and counts: keep the waits
    # longer than this test.
    monkeypatch.setattr(coordination_consul._session, "BLOCKING_WAIT", 120.0)
    n = 4
    async with AsyncExitStack() as stack:
        holder = await stack.enter_async_context(coordination.connect(consul_url, **OPTIONS))
        waiters = [
            await stack.enter_async_context(coordination.connect(consul_url, **OPTIONS)) for _ in range(n)
        ]
        blocked = [0] * n  # each waiter's blocking queries on the lock key in flight
        for i, waiter in enumerate(waiters):
            backend = waiter._engine.backend
            assert isinstance(backend, ConsulBackend)
            assert backend.wakeups == 0
            http = backend.http
            kv_get = http.kv_get

            async def recording(
                key: str, *, index: int = 0, wait: float | None = None, _i: int = i, _kv_get: Any = kv_get
            ) -> Any:
                blocking = bool(index) and key.endswith("herd/.lock")
                blocked[_i] += blocking
                try:
                    return await _kv_get(key, index=index, wait=wait)
                finally:
                    blocked[_i] -= blocking

            http.kv_get = recording  # type: ignore[method-assign]

        async def until(check: Callable[[], bool], what: str) -> None:
            with anyio.move_on_after(scaled(5)):
                while not check():  # noqa: ASYNC110 - in-process state with no event of its own
                    await anyio.sleep(0.01)
                return
            pytest.fail(
                f"{what}: not within {scaled(5):g}s (wake-ups {_wakeups(waiters)}, blocked {blocked})"
            )

        held = await holder.lock("herd").acquire()
        got: list[tuple[int, Any]] = []
        leave = [anyio.Event() for _ in range(n)]

        async def wait(i: int) -> None:
            lock = await waiters[i].lock("herd").acquire()
            got.append((i, lock))
            await leave[i].wait()
            await lock.release()

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(wait, i)
            await until(lambda: blocked == [1] * n, "every waiter in a blocking query")
            await anyio.sleep(scaled(0.5))  # idle: a waiter that polled would have woken
            assert _wakeups(waiters) == 0, "a waiter woke while nothing changed"
            assert blocked == [1] * n
            expected = 0
            for turn in range(n):
                expected += n - turn  # every waiter still waiting at this release wakes
                if turn == 0:
                    await held.release()
                else:
                    leave[got[-1][0]].set()

                def settled(turn: int = turn, expected: int = expected) -> bool:
                    # The next holder has the lock; the others locked in vain, read the key
                    # again and block anew, each after one wake-up.
                    waiting = set(range(n)) - {i for i, _ in got}
                    return (
                        len(got) == turn + 1
                        and all(blocked[i] == 1 for i in waiting)
                        and _wakeups(waiters) >= expected
                    )

                await until(settled, f"hand-over {turn}")
                await anyio.sleep(scaled(0.2))  # any further wake-up would show
                assert _wakeups(waiters) == expected, f"wake-ups after {turn + 1} release(s)"
            leave[got[-1][0]].set()
        assert sorted(i for i, _ in got) == list(range(n))


@pytest.mark.asyncio
async def test_tasks_of_one_session_take_turns(consul_url: str, scaled: Callable[[float], float]) -> None:
    """Consul lets a session lock a key it already holds: the backend queues its own contenders."""
    async with coordination.connect(consul_url, **OPTIONS) as coord:
        inside, overlaps, tokens = 0, 0, []

        async def worker() -> None:
            nonlocal inside, overlaps
            for _ in range(20):
                async with coord.lock("shared") as held:
                    inside += 1
                    overlaps += inside > 1
                    tokens.append(held.token)
                    await anyio.lowlevel.checkpoint()
                    inside -= 1

        with anyio.fail_after(scaled(30)):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(worker)
        assert overlaps == 0
        assert len(tokens) == 60
        assert all(a < b for a, b in itertools.pairwise(tokens))


@pytest.mark.asyncio
async def test_a_lock_request_applied_after_its_acquire_was_cancelled_leaves_nothing(
    consul_url: str, scaled: Callable[[float], float]
) -> None:
    """A cancelled acquire whose lock request was already on its way: Consul applies it after
    the cancellation. The backend waits for its outcome and releases, so no key stays held by
    the live session (before, the release could come first and the lock request after it)."""
    async with (
        coordination.connect(consul_url, **OPTIONS) as a,
        coordination.connect(consul_url, **OPTIONS) as b,
        anyio.create_task_group() as tg,
    ):
        backend = a._engine.backend
        assert isinstance(backend, ConsulBackend)
        http = backend.http
        txn = http.txn
        applied = anyio.Event()

        async def late(ops: list[dict[str, Any]], what: str) -> Any:
            if not any(op["KV"]["Verb"] == "lock" for op in ops):
                return await txn(ops, what)
            outcome: list[Any] = []
            answered = anyio.Event()

            async def on_the_wire() -> None:  # not cancelled with the caller, as a sent request
                await anyio.sleep(scaled(0.3))  # scaled with the cancellation below: it comes first
                outcome.append(await txn(ops, what))
                applied.set()
                answered.set()

            tg.start_soon(on_the_wire)
            await answered.wait()
            return outcome[0]

        http.txn = late  # type: ignore[method-assign]
        with anyio.move_on_after(scaled(0.1)) as scope:
            await a.lock("late").acquire()
        assert scope.cancelled_caught
        with anyio.fail_after(scaled(5)):
            await applied.wait()
        http.txn = txn  # type: ignore[method-assign]
        got = await b.lock("late").try_acquire()
        assert got is not None, "the key stayed held by the session of the cancelled acquire"
        await got.release()


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["lock", "election"])
async def test_a_late_release_never_frees_a_later_holding_of_the_same_session(
    consul_url: str, kind: str, scaled: Callable[[float], float]
) -> None:
    """A release can reach the leader late: an agent holds requests while the servers elect a
    leader, and a release this client gave up on may still be applied after the session took
    the key again. Consul locks belong to sessions, so a release by session alone would free
    the later holding (a CI soak saw two holders so). Replayed verbatim after the second
    acquisition, the first release must leave the second holding alone; a proclaim replayed
    late must neither keep the first holding from being released nor rewrite the second."""
    async with (
        coordination.connect(consul_url, **OPTIONS) as a,
        coordination.connect(consul_url, **OPTIONS) as b,
    ):
        backend = a._engine.backend
        assert isinstance(backend, ConsulBackend)
        http = backend.http
        txn = http.txn
        releases: list[list[dict[str, Any]]] = []
        proclaims: list[list[dict[str, Any]]] = []

        async def recording(ops: list[dict[str, Any]], what: str) -> Any:
            if what.startswith("to release"):
                releases.append(ops)
            if what.startswith("to proclaim"):
                proclaims.append(ops)
            return await txn(ops, what)

        http.txn = recording  # type: ignore[method-assign]

        async def take(coord: coordination.Coordinator) -> Any:
            if kind == "lock":
                return await coord.lock("late-release").try_acquire()
            with anyio.move_on_after(scaled(1.0)):  # waiting: another leads
                return await coord.election("late-release").campaign(b"v")
            return None

        async def give_up(holding: Any) -> None:
            await (holding.release() if kind == "lock" else holding.resign())

        first = await take(a)
        assert first is not None
        if kind == "election":
            await first.proclaim(b"v2")  # new versions of the key: the release names the last
            await first.proclaim(b"v3")
            await txn(proclaims[0], "to proclaim (replayed late)")  # the first came again, late
        await give_up(first)
        assert releases, "no release was sent"
        by_b = await take(b)
        assert by_b is not None, "the first holding was not released"
        await give_up(by_b)
        second = await take(a)
        assert second is not None
        for ops in releases:  # the first release, arriving late
            await txn(ops, "to release (replayed late)")
        for ops in proclaims:  # the first term's proclaim, arriving late
            await txn(ops, "to proclaim (replayed late)")
        assert await take(b) is None, "a late release of the first holding freed the second"
        if kind == "election":
            leader = await b.election("late-release").leader()
            assert leader is not None
            assert leader.value == b"v", "a late proclaim of the first term rewrote the second's value"
        await give_up(second)
        assert await take(b) is not None


# -- lock-delay, renewal, crash failover -----------------------------------------------------


@pytest.mark.asyncio
async def test_lock_delay_after_an_expiry_but_not_after_a_clean_close(
    consul_url: str, scaled: Callable[[float], float]
) -> None:
    lock_delay = 2.0
    async with (
        coordination.connect(consul_url, ttl=3, lock_delay=lock_delay) as a,
        coordination.connect(consul_url, ttl=3, lock_delay=lock_delay) as b,
    ):
        held = await a.lock("delayed").acquire()
        assert a.session_id is not None
        await b._engine.backend.expire_session(a.session_id)
        expired = time.monotonic()
        # The key is free, but Consul refuses every session until the lock-delay has passed.
        assert await b.lock("delayed").try_acquire() is None
        taken = await b.lock("delayed").acquire(timeout=lock_delay + scaled(3))
        waited = time.monotonic() - expired
        assert lock_delay - 0.25 <= waited <= lock_delay + scaled(1.5), waited
        assert taken.token > held.token
        await held.wait_lost()
        await taken.release()

    async with coordination.connect(consul_url, ttl=3, lock_delay=30) as c:
        async with coordination.connect(consul_url, ttl=3, lock_delay=30) as d:
            await d.lock("closed").acquire()
        # d released before destroying its session: no lock-delay for c.
        assert await c.lock("closed").try_acquire() is not None


@pytest.mark.asyncio
async def test_renewal_keeps_a_short_session_alive(
    consul_server: ConsulProcess, consul_url: str, scaled: Callable[[float], float]
) -> None:
    ttl = 1.0
    async with coordination.connect(consul_url, ttl=ttl, lock_delay=ttl) as coord:
        session_id = coord.session_id
        held = await coord.lock("kept").acquire()
        states: list[SessionState] = []
        async with aclosing(coord.states()) as changes:
            with anyio.move_on_after(4 * ttl):  # Consul would have expired it twice over by then
                async for state in changes:
                    states.append(state)
        assert SessionState.LOST not in states, states
        assert held.held
        assert coord.session_id == session_id
        assert session_id is not None
        assert await raw_session(consul_server, session_id, scaled=scaled) is not None
        pair = await raw_kv(consul_server, f"{namespace(consul_url)}/kept/.lock", scaled=scaled)
        assert pair is not None
        assert pair["Session"] == session_id
        await held.release()


HOLDER = """
import asyncio, sys
import coordination

async def main():
    url, ttl, lock_delay = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    async with coordination.connect(url, ttl=ttl, lock_delay=lock_delay) as coord:
        held = await coord.lock("crash").acquire()
        print("HELD", held.token, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_crash_failover_of_a_holder_process(consul_url: str, scaled: Callable[[float], float]) -> None:
    """SIGKILL a process holding the lock: another process gets it once Consul expires the
    session (between 1 and 2 TTLs after the last renewal) plus the lock-delay."""
    ttl, lock_delay = 2.0, 1.0
    command = [sys.executable, "-c", HOLDER, consul_url, str(ttl), str(lock_delay)]
    async with await anyio.open_process(command, stderr=subprocess.STDOUT) as holder:
        assert holder.stdout is not None
        with anyio.fail_after(scaled(15)):
            line = await BufferedByteReceiveStream(holder.stdout).receive_until(b"\n", 4096)
        assert line.startswith(b"HELD"), line
        their_token = int(line.split()[1])
        async with coordination.connect(consul_url, ttl=ttl, lock_delay=lock_delay) as coord:
            assert await coord.lock("crash").try_acquire() is None
            holder.kill()
            killed = time.monotonic()
            await holder.wait()
            held = await coord.lock("crash").acquire(timeout=2 * ttl + lock_delay + scaled(5))
            failover = time.monotonic() - killed
            assert held.token > their_token
            await held.release()
    # Consul's own times (the TTL, the lock-delay) are the server's: only the slack scales.
    assert ttl + lock_delay <= failover <= 2 * ttl + lock_delay + scaled(1.5), failover


@pytest.mark.asyncio
async def test_paused_agent_suspends_then_resumes_with_locks_kept(
    consul_server: ConsulProcess, consul_url: str, scaled: Callable[[float], float]
) -> None:
    async with coordination.connect(consul_url, ttl=5, lock_delay=5) as coord:
        held = await coord.lock("paused").acquire()
        async with aclosing(coord.states()) as states:
            assert await anext(states) is SessionState.CONNECTED
            consul_server.pause()
            try:
                with anyio.fail_after(scaled(5)):
                    assert await anext(states) is SessionState.SUSPENDED
            finally:
                consul_server.resume()
            with anyio.fail_after(scaled(5)):
                assert await anext(states) is SessionState.CONNECTED
        assert held.held
        await held.release()


@pytest.mark.asyncio
async def test_paused_agent_beyond_the_ttl_loses_the_lock(
    consul_server: ConsulProcess, consul_url: str, scaled: Callable[[float], float]
) -> None:
    async with coordination.connect(consul_url, ttl=2, lock_delay=2) as coord:
        old_session = coord.session_id

        async def hold_through_a_pause() -> None:
            async with coord.lock("lost") as held:
                consul_server.pause()
                try:
                    with anyio.fail_after(scaled(5)):
                        await held.wait_lost()  # the local deadline passes: the body is cancelled
                finally:
                    consul_server.resume()

        with pytest.raises(LockLost):
            await hold_through_a_pause()
        with anyio.fail_after(scaled(10)):
            again = await coord.lock("lost").acquire()
        assert coord.session_id != old_session
        await again.release()


# -- index resets, several hosts, TLS --------------------------------------------------------


@pytest.mark.asyncio
async def test_watch_rereads_when_the_index_goes_backwards(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, scaled: Callable[[float], float]
) -> None:
    """A snapshot restore takes the KV index back: the watch starts over and yields the latest,
    although its version is lower (the backend reports the reset, the core lets it through)."""
    # The agent answers a blocking query whose index is now in the future only at the end of
    # its wait: make that wait short.
    monkeypatch.setattr(coordination_consul._session, "BLOCKING_WAIT", 1.0)
    with ConsulProcess(session_ttl_min="1s", start_timeout=scaled(60)) as server:
        consul = str(find_consul())
        env = server.consul_env()
        async with coordination.connect(f"{server.url}/ns", **OPTIONS) as coord:
            cfg = coord.config("k")
            old = await cfg.set(b"old")
            snapshot = tmp_path / "before.snap"
            await anyio.run_process([consul, "snapshot", "save", str(snapshot)], env=env)
            for i in range(5):
                await coord.config(f"other-{i}").set(b"x")
            newer = await cfg.set(b"new")
            seen: list[Versioned | None] = []
            async with aclosing(cfg.watch()) as stream:
                seen.append(await anext(stream))
                await anyio.run_process([consul, "snapshot", "restore", str(snapshot)], env=env)
                with anyio.fail_after(scaled(10)):
                    seen.append(await anext(stream))
        assert seen == [Versioned(b"new", newer), Versioned(b"old", old)]


@pytest.mark.asyncio
async def test_unreachable_first_host_is_skipped(
    consul_server: ConsulProcess, consul_url: str, scaled: Callable[[float], float]
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    url = f"consul://{dead},{consul_server.address}/{namespace(consul_url)}"
    async with coordination.connect(url, **OPTIONS) as coord:
        held = await coord.lock("failover").acquire(timeout=scaled(5))
        await held.release()


@pytest.mark.asyncio
async def test_tls_options(consul_url: str, tmp_path: Any) -> None:
    with pytest.raises(Unavailable) as info:  # HTTPS to a plain-HTTP agent
        async with coordination.connect(consul_url, tls=True, timeout=3):
            pass
    assert isinstance(info.value.__cause__, aiohttp.ClientError)  # the client's error, kept
    with pytest.raises(InvalidURL, match="option 'ca_file': cannot load"):
        coordination.connect(consul_url, ca_file=str(tmp_path / "missing.pem"))
