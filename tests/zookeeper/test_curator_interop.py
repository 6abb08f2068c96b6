"""Apache Curator and this SDK share locks and elections on the same znodes, both ways.

The Curator side is a real Curator (tests/zookeeper/curator: InterProcessMutex,
LeaderSelector, LeaderLatch) in its own JVM, reporting in the holder protocol. The SDK names
its nodes Curator's way with ``naming=curator`` (``latch`` beside a LeaderLatch); whatever its
naming, it counts Curator's nodes as contenders.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import tempfile
from collections.abc import Callable

import anyio
import pytest
from kazoo.client import KazooClient  # type: ignore[import-untyped]

import coordination
from coordination import Leader, Leadership
from coordination.testing.holder import HolderProcess, read_spans
from coordination.testing.servers import ZooKeeperProcess

from .conftest import (
    CuratorPeer,
    acquire_once_released,
    curator_participants,
    in_thread,
    options,
    until_contenders,
    znode,
)

pytestmark = pytest.mark.asyncio

JVM_START = 30.0  # seconds (scaled) for a JVM to start, connect and report


async def test_lock_curator_then_sdk_then_curator(
    curator: CuratorPeer,
    curator_command: list[str],
    zookeeper_server: ZooKeeperProcess,
    kazoo: KazooClient,
    zk_url: str,
    scaled: Callable[[float], float],
) -> None:
    path = znode(zk_url, "shared")
    async with curator(path, "mutex", "--commands", label="curator-1") as first:
        by_curator = await first.next("held", scaled(JVM_START))
        async with coordination.connect(
            zk_url, identity="sdk-holder", naming="curator", **options()
        ) as coord:
            lock = coord.lock("shared")
            assert await lock.try_acquire() is None, "a lock Curator holds is not free"
            held = await acquire_once_released(
                lock, kazoo, path, lambda: first.send("release"), scaled, "Curator"
            )
            assert held.token > (by_curator.token or 0)
            (node,) = await in_thread(kazoo.get_children, path)
            assert node.startswith("_c_"), f"not Curator's naming: {node}"
            assert "-lock-" in node, f"not Curator's naming: {node}"

            # A Curator mutex waits behind the SDK's holding, and gets it on the release.
            async with curator(path, "mutex", "--commands", label="curator-2") as second:
                await second.next("acquiring", scaled(JVM_START))
                await until_contenders(kazoo, path, 2, scaled)
                queue = await curator_participants(
                    curator_command, zookeeper_server, path, "mutex", scaled(JVM_START)
                )
                assert queue[0] == (True, "sdk-holder"), f"Curator's own order puts the SDK behind: {queue}"
                assert not second.seen("held"), "Curator took a lock the SDK holds"
                await held.release()
                taken = await second.next("held", scaled(10))
                assert (taken.token or 0) > held.token
                assert await lock.try_acquire() is None
                await second.send("release")
                await second.next("released", scaled(10))
            again = await lock.try_acquire()
            assert again is not None
            assert again.token > (taken.token or 0)
            await again.release()


async def test_kazoo_naming_still_refuses_curator_held_locks_and_warns(
    curator: CuratorPeer, zk_url: str, scaled: Callable[[float], float], caplog: pytest.LogCaptureFixture
) -> None:
    """The SDK counts Curator's nodes whatever its own naming; with kazoo's it says why
    Curator may not count its own."""
    path = znode(zk_url, "warned")
    async with curator(path, "mutex", "--commands") as peer:
        await peer.next("held", scaled(JVM_START))
        async with coordination.connect(zk_url, **options()) as coord:
            with caplog.at_level(logging.WARNING, logger="coordination.zookeeper"):
                assert await coord.lock("warned").try_acquire() is None
                election = coord.election("warned")
                leader = await election.leader()
                assert leader is not None, "the SDK sees a Curator holder as the leader of the name"
        warnings = [r.getMessage() for r in caplog.records if "Curator contenders" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert "naming=curator" in warnings[0]


@pytest.mark.parametrize(("recipe", "naming"), [("selector", "curator"), ("latch", "latch")])
async def test_election_curator_then_sdk_then_curator(
    curator: CuratorPeer,
    curator_command: list[str],
    zookeeper_server: ZooKeeperProcess,
    kazoo: KazooClient,
    zk_url: str,
    scaled: Callable[[float], float],
    recipe: str,
    naming: str,
) -> None:
    path = znode(zk_url, "vote")

    async def participants() -> list[tuple[bool, str]]:
        return await curator_participants(curator_command, zookeeper_server, path, recipe, scaled(JVM_START))

    async with coordination.connect(zk_url, naming=naming, **options()) as coord:
        election = coord.election("vote")
        async with curator(path, recipe, "--commands", "--id", "curator-leader", label="curator-1") as first:
            leading = await first.next("held", scaled(JVM_START))
            assert await election.leader() == Leader(b"curator-leader", leading.token or 0), (
                "the SDK sees Curator's leader, its participant id as the value"
            )
            got: list[Leadership] = []

            async def campaign() -> None:
                got.append(await election.campaign(b"sdk-leader"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(campaign)
                await until_contenders(kazoo, path, 2, scaled)
                assert not got, "Curator leads: the SDK must wait"
                assert await participants() == [(True, "curator-leader"), (False, "sdk-leader")]
                await first.send("release")
            (leadership,) = got
            assert leadership.token > (leading.token or 0)
        assert await participants() == [(True, "sdk-leader")], "Curator sees the SDK's leader"
        await leadership.proclaim(b"sdk-leader-v2")
        assert await participants() == [(True, "sdk-leader-v2")]

        # A Curator candidate waits behind the SDK's leader and takes over when it resigns.
        async with curator(path, recipe, "--commands", "--id", "curator-second", label="curator-2") as second:
            await second.next("acquiring", scaled(JVM_START))
            await until_contenders(kazoo, path, 2, scaled)
            assert await participants() == [(True, "sdk-leader-v2"), (False, "curator-second")], (
                "Curator's own order puts its candidate behind the SDK's leader"
            )
            assert not second.seen("held"), "Curator led while the SDK leads"
            await leadership.resign()
            taken = await second.next("held", scaled(10))
            assert await election.leader() == Leader(b"curator-second", taken.token or 0)
            assert (taken.token or 0) > leadership.token
            await second.send("release")
            await second.next("released", scaled(10))


async def test_mixed_contention_loop_never_overlaps(
    curator: CuratorPeer,
    zk_url: str,
    scaled: Callable[[float], float],
    request: pytest.FixtureRequest,
) -> None:
    """Two Curator InterProcessMutex processes and two SDK processes take one lock 20 times
    each: no two critical sections overlap (spans with monotonic times in a shared log)."""
    rounds, name = 20, "mixed"
    path = znode(zk_url, name)
    sdk_url = f"{zk_url}?naming=curator&ttl=3&timeout=5"
    loop = ["--loop", "--count", str(rounds), "--hold", "0.005:0.03"]
    with tempfile.TemporaryDirectory(prefix="coordination-curator-mixed-") as folder:
        log = os.path.join(folder, "spans")
        peers: list[HolderProcess] = []
        async with anyio.create_task_group() as tg:
            for i in range(2):
                tg.start_soon(
                    _run_until_exit,
                    curator(path, "mutex", *loop, "--spans", log, "--label", f"curator-{i}"),
                    peers,
                    scaled(180),
                )
                tg.start_soon(
                    _run_until_exit,
                    HolderProcess.start(
                        sdk_url, name, *loop, "--spans", log, "--label", f"sdk-{i}", label=f"sdk-{i}"
                    ),
                    peers,
                    scaled(180),
                )
        spans = read_spans(log)
    overlaps = [
        (a.label, a.token, b.label, b.token)
        for i, a in enumerate(spans)
        for b in spans[i + 1 :]
        if a.end is not None and b.start < a.end and a.label != b.label
    ]
    request.node.user_properties.extend([("sections", len(spans)), ("overlaps", len(overlaps))])
    assert all(peer.returncode == 0 for peer in peers), [(p.label, p.returncode) for p in peers]
    assert not overlaps, f"{len(overlaps)} overlapping critical sections, e.g. {overlaps[:3]}"
    assert len(spans) == 4 * rounds, f"{len(spans)} critical sections, not {4 * rounds}"
    assert all(span.end is not None for span in spans)
    assert {span.label for span in spans} == {"curator-0", "curator-1", "sdk-0", "sdk-1"}
    tokens = [span.token for span in spans]
    assert all(x < y for x, y in itertools.pairwise(tokens)), "tokens increase in the order held"


async def _run_until_exit(
    starting: contextlib.AbstractAsyncContextManager[HolderProcess],
    peers: list[HolderProcess],
    timeout: float,
) -> None:
    async with starting as peer:
        peers.append(peer)
        await peer.wait(timeout)
