"""The cluster fault suite: what holds on a 3-node cluster when nodes die or are cut off.

Where a quorum stays reachable from the client, a held lock (or leadership) survives: the
client moves to another node before its session can expire. Where none is, the holder
learns it lost before anyone else can acquire. A backend's test module joins
:class:`ClusterFaultTests` with a fixture class whose
:meth:`~coordination.testing.CoordinationFixtures.new_cluster` gives a cluster
(:class:`~coordination.testing.servers.ServerCluster`)::

    class TestClusterFaults(ClusterFaultTests, MyClusterFixtures): pass

Each test runs for a lock and for an election. The holder under test, ``H``, is a holder
process (:mod:`coordination.testing.holder`) whose URL lists a
:class:`~coordination.testing.proxy.FaultProxy` in front of every endpoint of the cluster;
two contender processes, on the endpoints directly, wait with short holds in a loop. All of
them append their spans to one log (``--spans``), from which every test asserts, across
processes: no two holders' spans overlap, and tokens strictly increase in acquisition
order. Sessions use :meth:`~coordination.testing.CoordinationFixtures.cluster_options`
(a 5 s TTL by default).

Every test is marked ``faults`` and ``cluster`` (``pytest -m cluster``). Its figures
(``kept``, ``suspended_seconds``, ``moved_after_seconds``, ...) go to the test's
``user_properties`` and the plugin's summary.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

import anyio
import pytest

from .checker import FencedResource
from .fixtures import ClusterHarness, Harness
from .holder import HolderEvent, HolderProcess, Span, read_spans

__all__ = ["ClusterFaultTests"]

asyncio = pytest.mark.asyncio
Kind = Literal["lock", "election"]
kinds = pytest.mark.parametrize("kind", ["lock", "election"])

CONTENDERS = 2
CONTENDER_HOLD = "0.05:0.2"
"""How long a contender holds, in seconds (a random time in this range)."""


def _is_state(state: str, after: float = float("-inf")) -> Callable[[HolderEvent], bool]:
    return lambda event: event.kind == "state" and event.detail == state and event.at >= after


def _is_loss(event: HolderEvent) -> bool:
    return event.kind in ("cancelled", "lost") or (event.kind == "state" and event.detail == "LOST")


def _suspended_seconds(states: list[HolderEvent], until: float) -> float:
    """How long the holder was SUSPENDED in total, from its state events."""
    total = 0.0
    for state, following in itertools.zip_longest(states, states[1:]):
        if state.detail == "SUSPENDED":
            total += (following.at if following is not None else until) - state.at
    return total


class _Scene:
    """``H`` (through the proxies) holding, contenders (direct) waiting, one span log."""

    def __init__(self, c: ClusterHarness, kind: Kind, spans: Path, request: pytest.FixtureRequest) -> None:
        self.c = c
        self.request = request
        self.kind = kind
        self.spans = spans
        self.name = f"cluster-{kind}"
        self.holder: HolderProcess | None = None
        self.first: HolderEvent | None = None
        self.contenders: list[HolderProcess] = []
        self.taken: list[tuple[str, HolderEvent]] = []
        """``held`` events of the contenders, with their labels."""
        self._taken_changed = anyio.Event()

    @property
    def h(self) -> HolderProcess:
        assert self.holder is not None
        return self.holder

    @property
    def token(self) -> int:
        assert self.first is not None
        assert self.first.token is not None
        return self.first.token

    def _arguments(self, label: str) -> list[str]:
        kind = ["--election", label] if self.kind == "election" else []
        return [*kind, "--spans", str(self.spans), "--label", label]

    def _on_contender_event(self, label: str) -> Callable[[HolderEvent], None]:
        def seen(event: HolderEvent) -> None:
            if event.kind == "held":
                self.taken.append((label, event))
                changed, self._taken_changed = self._taken_changed, anyio.Event()
                changed.set()

        return seen

    @asynccontextmanager
    async def run(self, *holder_options: str) -> AsyncIterator[_Scene]:
        """Start ``H`` and wait until it holds, then the contenders and wait until they wait."""
        via, direct = self.c.via, self.c.direct
        async with AsyncExitStack() as stack:
            self.holder = await stack.enter_async_context(
                via.holder(self.name, "--commands", *holder_options, *self._arguments("H"), label="H")
            )
            self.first = await self.h.next("held", via.t(30))
            for i in range(CONTENDERS):
                label = f"C{i}"
                contender = await stack.enter_async_context(
                    direct.holder(
                        self.name,
                        "--loop",
                        "--hold",
                        CONTENDER_HOLD,
                        *self._arguments(label),
                        label=label,
                        on_event=self._on_contender_event(label),
                    )
                )
                self.contenders.append(contender)
            for contender in self.contenders:
                await contender.next("acquiring", direct.t(30))
            yield self
            # Kill the contenders (and H) before the span log is read: no span grows after.
            for process in [*self.contenders, self.h]:
                process.kill()
            for process in [*self.contenders, self.h]:
                await process.wait(direct.t(10))

    async def taken_after(self, after: float, seconds: float, what: str) -> tuple[str, HolderEvent]:
        """The first contender ``held`` event at or after ``after``."""

        async def wait() -> tuple[str, HolderEvent]:
            while True:
                for label, event in self.taken:
                    if event.at >= after:
                        return label, event
                await self._taken_changed.wait()

        return await self.c.direct.within(seconds, wait(), what)

    def _fail_lost(self, loss: HolderEvent, instead: str = "") -> None:
        self.request.node.user_properties.append(("kept", False))
        pytest.fail(
            f"H lost its {self.kind} (token {self.token}) although a quorum stayed reachable: "
            f"{loss.kind} {loss.detail} {loss.at - self.first_at:.2f}s after it held"
            f"{instead}; H's states: {self._states()}"
        )

    async def no_loss_until(self, deadline: float) -> None:
        """Watch ``H`` until ``deadline`` (monotonic): fail at once if it reports a loss."""
        loss = next((event for event in self.h.events if _is_loss(event)), None)
        remaining = deadline - time.monotonic()
        if loss is None and remaining > 0:
            with anyio.move_on_after(remaining):
                loss = await self.h.first(_is_loss, remaining + 1, "a loss")
        if loss is not None:
            self._fail_lost(loss)

    async def state(self, state: str, after: float, seconds: float, why: str) -> HolderEvent:
        """H's next ``state`` at or after ``after``; fails at once on a loss instead."""
        wanted = _is_state(state, after)
        try:
            event = await self.h.first(lambda e: _is_loss(e) or wanted(e), self.c.via.t(seconds), state)
        except TimeoutError:
            pytest.fail(
                f"H did not show {state} within {self.c.via.t(seconds):g}s {why}; H's states: "
                f"{self._states()}; H's connections per endpoint now: "
                f"{[proxy.open_connections for proxy in self.c.proxies]}"
            )
        if _is_loss(event):
            self._fail_lost(event, f" (instead of {state})")
        return event

    @property
    def first_at(self) -> float:
        assert self.first is not None
        return self.first.at

    def _states(self) -> str:
        return ", ".join(f"{e.detail}@{e.at - self.first_at:+.2f}" for e in self.h.states())

    async def moved_off(self, index: int, began: float, seconds: float, why: str) -> float:
        """Wait until ``H`` talks through a node other than endpoint ``index`` and is
        CONNECTED; the time it was first seen so (from a bounded look at the proxies: no event
        says which node a client talks to). A SUSPENDED on the way must be followed by
        CONNECTED; a loss fails at once."""
        c = self.c

        async def look() -> float:
            while True:
                loss = next((e for e in self.h.events if _is_loss(e) and e.at >= began), None)
                if loss is not None:
                    self._fail_lost(loss)
                last = self.h.states()[-1]
                if c.connected_elsewhere(index) and last.detail == "CONNECTED":
                    return time.monotonic()
                await anyio.sleep(0.01)

        with anyio.move_on_after(c.via.t(seconds)):
            return await look()
        pytest.fail(
            f"H did not move to another node within {c.via.t(seconds):g}s {why}; H's states: "
            f"{self._states()}; H's connections per endpoint now: "
            f"{[proxy.open_connections for proxy in c.proxies]}"
        )

    async def release(self) -> HolderEvent:
        """Tell ``H`` to release; its ``releasing`` event (checks it released, not lost)."""
        await self.h.send("release")
        releasing = await self.h.next("releasing", self.c.via.t(10))
        await self.h.next("released", self.c.via.t(10))
        status = await self.h.wait(self.c.via.t(10))
        assert status == 0, f"H exited with status {status} after its release"
        return releasing


class ClusterFaultTests:
    """A cluster's nodes killed, cut off and restarted under a holder: kept where a quorum
    stays reachable, lost (and known first by the holder) where none does."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [
        pytest.mark.faults,
        pytest.mark.cluster,
        pytest.mark.timeout(300),
    ]

    @pytest.fixture
    def cluster_harness(self, harness: Harness) -> Harness:
        """The test's harness with the fixture's cluster options (a 5 s TTL)."""
        return harness.derive(options=harness.fixtures.cluster_options(harness.options))

    # -- what every test checks -----------------------------------------------------------

    @staticmethod
    def _figures(request: pytest.FixtureRequest, **figures: Any) -> None:
        request.node.user_properties.extend(figures.items())

    def _check_spans(self, request: pytest.FixtureRequest, spans: list[Span], ended: float) -> None:
        """No two holders' spans overlap; tokens strictly increase in acquisition order."""
        resource = FencedResource()
        for span in spans:
            end = span.end if span.end is not None else ended
            resource.record(span.token, span.label, span.start, end, check=False)
        overlaps = resource.overlaps()
        self._figures(request, overlaps=len(overlaps))
        assert not overlaps, f"{len(overlaps)} overlapping holding(s), e.g. " + "; ".join(
            f"{a.holder} token {a.token} {a.start:.3f}..{a.end:.3f} and "
            f"{b.holder} token {b.token} {b.start:.3f}..{b.end:.3f}"
            for a, b in overlaps[:3]
        )
        order = [(span.label, span.token) for span in spans][:20]
        assert all(x.token < y.token for x, y in itertools.pairwise(spans)), (
            f"tokens do not strictly increase in acquisition order: {order}"
        )

    def _check_kept(self, request: pytest.FixtureRequest, scene: _Scene, releasing: HolderEvent) -> None:
        """H held one span, from its first ``held`` to its release, with no loss reported."""
        spans = read_spans(scene.spans)
        mine = [span for span in spans if span.label == "H"]
        assert [(s.token, s.how) for s in mine] == [(scene.token, "released")], (
            f"H's spans: {mine} (it should have held token {scene.token} until its release)"
        )
        assert not [e for e in scene.h.events if _is_loss(e)], f"H reported a loss: {scene.h.events}"
        self._check_spans(request, spans, time.monotonic())
        assert mine[0].end == releasing.at

    # -- a node killed or cut off while a quorum stays reachable ------------------------------

    async def _kept(
        self,
        h: Harness,
        request: pytest.FixtureRequest,
        tmp_path: Path,
        kind: Kind,
        fault: Callable[[ClusterHarness, _Scene], Awaitable[float]],
    ) -> None:
        """Run ``fault`` under ``H`` (it returns when the fault began); H keeps its holding for
        a TTL past it at least, then releases, and a contender takes over promptly."""
        ttl = float(h.options["ttl"])
        async with h.cluster() as c, _Scene(c, kind, tmp_path / "spans.log", request).run() as scene:
            began = await fault(c, scene)
            # H's local deadline would pass within a TTL of the fault without a keepalive
            # acknowledged through another node: no loss until then (and none later).
            await scene.no_loss_until(max(time.monotonic(), began + ttl + 0.5))
            states = scene.h.states(after=scene.first_at)
            self._figures(request, kept=True)
            if not any(key == "suspended_seconds" for key, _ in request.node.user_properties):
                self._figures(
                    request, suspended_seconds=round(_suspended_seconds(states, time.monotonic()), 3)
                )
            assert scene.h.states()[-1].detail == "CONNECTED", f"H's states: {scene._states()}"
            releasing = await scene.release()
            label, taken = await scene.taken_after(releasing.at, 10, "a contender taking over from H")
            self._figures(request, handover_seconds=round(taken.at - releasing.at, 3))
            assert taken.token is not None
            assert taken.token > scene.token, f"{label} took token {taken.token}, not above H's {scene.token}"
        self._check_kept(request, scene, releasing)

    @asyncio
    @kinds
    async def test_leader_killed(
        self, cluster_harness: Harness, request: pytest.FixtureRequest, tmp_path: Path, kind: Kind
    ) -> None:
        """SIGKILL the cluster's leader under a holding: the cluster elects another, the holder
        keeps holding, and hands over to a contender when it releases."""
        h = cluster_harness

        async def fault(c: ClusterHarness, scene: _Scene) -> float:
            leader = await anyio.to_thread.run_sync(lambda: c.cluster.leader(h.t(30)))
            node = c.cluster.nodes[leader]
            mine = c.cluster.endpoints[c.talked_to()] is node
            began = time.monotonic()
            await anyio.to_thread.run_sync(node.kill)
            elected = await anyio.to_thread.run_sync(lambda: c.cluster.leader(h.t(30)))
            assert elected != leader, "the killed node is still the leader"
            self._figures(
                request, leader_elected_seconds=round(time.monotonic() - began, 3), holder_on_leader=mine
            )
            if mine:  # H's own node failed: it moves to another
                why = "after its node (the leader) was killed"
                index = c.cluster.endpoints.index(node)
                moved = await scene.moved_off(index, began, float(h.options["ttl"]) + 5, why)
                self._figures(request, moved_after_seconds=round(moved - began, 3))
            await c.heal(60)
            return began

        await self._kept(h, request, tmp_path, kind, fault)

    async def _client_node_fault(
        self,
        h: Harness,
        request: pytest.FixtureRequest,
        tmp_path: Path,
        kind: Kind,
        how: Literal["kill", "blackhole"],
    ) -> None:
        async def fault(c: ClusterHarness, scene: _Scene) -> float:
            index = c.talked_to()
            endpoint, proxy = c.cluster.endpoints[index], c.proxies[index]
            began = time.monotonic()
            if how == "kill":
                await anyio.to_thread.run_sync(endpoint.kill)
            else:
                proxy.blackhole()
            try:
                ttl = float(h.options["ttl"])
                why = f"after its node ({how}) failed"
                if how == "blackhole":
                    # Nothing answers and nothing closes: a keepalive goes unanswered, so H
                    # must show SUSPENDED before it moves.
                    suspended = await scene.state("SUSPENDED", began, ttl + 5, why)
                    connected = await scene.state("CONNECTED", suspended.at, ttl + 15, why)
                    self._figures(request, suspended_seconds=round(connected.at - suspended.at, 3))
                # A killed node closes its connections: a client may move to another node before
                # its next keepalive is due and never be SUSPENDED (etcd's gRPC does).
                moved = await scene.moved_off(index, began, ttl + 15, why)
                self._figures(request, moved_after_seconds=round(moved - began, 3))
                await scene.no_loss_until(began + ttl + 0.5)
            finally:
                with anyio.CancelScope(shield=True):
                    if how == "kill":
                        await c.heal(60)
                    else:
                        proxy.heal()
            return began

        await self._kept(h, request, tmp_path, kind, fault)

    @asyncio
    @kinds
    async def test_client_node_killed(
        self, cluster_harness: Harness, request: pytest.FixtureRequest, tmp_path: Path, kind: Kind
    ) -> None:
        """SIGKILL the node the holder talks to: it moves to another node (CONNECTED there;
        SUSPENDED on the way if a keepalive failed) and keeps its holding."""
        await self._client_node_fault(cluster_harness, request, tmp_path, kind, "kill")

    @asyncio
    @kinds
    async def test_client_node_blackholed(
        self, cluster_harness: Harness, request: pytest.FixtureRequest, tmp_path: Path, kind: Kind
    ) -> None:
        """Blackhole the holder's connections to its node (nothing answers, nothing closes): it
        shows SUSPENDED, moves to another node and keeps its holding."""
        await self._client_node_fault(cluster_harness, request, tmp_path, kind, "blackhole")

    @asyncio
    @kinds
    async def test_rolling_restart(
        self, cluster_harness: Harness, request: pytest.FixtureRequest, tmp_path: Path, kind: Kind
    ) -> None:
        """Restart every server in turn (waiting for health in between), then the client
        agents (killed and started: an agent that leaves gracefully takes the sessions made
        through it along): the holder keeps its holding throughout."""
        h = cluster_harness

        async def fault(c: ClusterHarness, scene: _Scene) -> float:
            cluster = c.cluster
            restarts: list[Callable[[], object]] = [
                functools.partial(cluster.restart_node, index, graceful=True)
                for index in range(len(cluster.nodes))
            ]
            restarts += [functools.partial(agent.restart, graceful=False) for agent in cluster.clients]
            for restart in restarts:
                await anyio.to_thread.run_sync(restart)
                await anyio.to_thread.run_sync(functools.partial(cluster.wait_healthy, h.t(60)))
                await scene.no_loss_until(time.monotonic())
            # The last restart is the fault whose TTL the holder must outlive.
            return time.monotonic()

        await self._kept(h, request, tmp_path, kind, fault)

    # -- quorum lost ---------------------------------------------------------------------

    @asyncio
    @kinds
    async def test_quorum_lost(
        self, cluster_harness: Harness, request: pytest.FixtureRequest, tmp_path: Path, kind: Kind
    ) -> None:
        """Kill a majority of the servers (all but the holder's own node where it talks to a
        server): the holder learns it lost (body cancelled, loss raised, LOST) before anyone
        else holds; past the TTL the servers come back, a contender takes over with a higher
        token, and the holder's coordinator opens a new session by itself."""
        h = cluster_harness
        ttl = float(h.options["ttl"])
        async with (
            h.cluster() as c,
            _Scene(c, kind, tmp_path / "spans.log", request).run("--loop", "--rest", "3600") as scene,
        ):
            index = c.talked_to()
            mine = c.cluster.endpoints[index]
            nodes = c.cluster.nodes
            leader = await anyio.to_thread.run_sync(lambda: c.cluster.leader(h.t(30)))
            # The leader first, never H's own node: H stays connected to a node without quorum.
            order = sorted((i for i, node in enumerate(nodes) if node is not mine), key=lambda i: i != leader)
            victims = [nodes[i] for i in order[: len(nodes) - len(nodes) // 2]]
            began = time.monotonic()
            try:
                for node in victims:
                    await anyio.to_thread.run_sync(node.kill)
                lost = await scene.h.first(_is_state("LOST", began), h.t(ttl + 5), "LOST")
                cancelled = await scene.h.first(lambda e: e.kind == "cancelled", h.t(5), "cancelled")
                raised = await scene.h.next("lost", h.t(5))
                self._figures(request, lost_after_quorum_seconds=round(lost.at - began, 3))
                # No keepalive could be acknowledged after the quorum went: the local deadline
                # (at most a TTL after the last acknowledged one) must have lost the session.
                assert lost.at - began <= ttl + h.t(0.5), (
                    f"H learned it lost {lost.at - began:.2f}s after the quorum went, past its "
                    f"{ttl:g}s TTL: its local deadline did not end the session"
                )
                early = [(label, e) for label, e in scene.taken if e.at >= began]
                assert early == [], f"a contender held while the quorum was down: {early}"
                # Keep the quorum down past the TTL: a deliberate fault duration, so that the
                # servers could have expired every session of before the outage.
                await anyio.sleep(max(0.0, began + ttl * 1.5 - time.monotonic()))
            finally:
                with anyio.CancelScope(shield=True):
                    back = time.monotonic()
                    await c.heal(90)  # the victims start together: each waits for a quorum
            label, taken = await scene.taken_after(
                began, h.failover_bound + 30, "a contender holding after the quorum came back"
            )
            self._figures(request, handover_seconds=round(taken.at - back, 3))
            assert taken.token is not None
            assert taken.token > scene.token, f"{label} took token {taken.token}, not above H's {scene.token}"
            assert cancelled.at <= raised.at
            assert max(cancelled.at, raised.at, lost.at) < taken.at, "a contender held before H knew it lost"
            await scene.h.first(_is_state("CONNECTED", lost.at), h.t(60), "CONNECTED on a new session")
        spans = read_spans(scene.spans)
        mine = [span for span in spans if span.label == "H"]
        assert [(s.token, s.how) for s in mine] == [(scene.token, "lost")], f"H's spans: {mine}"
        self._check_spans(request, spans, time.monotonic())
