"""The fixture base class a backend fills in, and the harness the suite's tests use."""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    aclosing,
    asynccontextmanager,
    contextmanager,
)
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar

import anyio
import pytest
from anyio.abc import TaskGroup

import coordination
from coordination import Capability, Coordinator, SessionState, Versioned
from coordination.abc import HISTORY_RESET, HistoryReset, Kind, ResumePoint, parse_url

from .holder import HolderEvent, HolderProcess
from .plugin import CAPABILITY_SKIP_PREFIX, FIXTURE_CAPABILITY, NOT_RUN_PREFIX, timeout_multiplier
from .proxy import FaultProxy
from .servers import ServerCluster, ServerProcess

__all__ = ["ClusterHarness", "CoordinationFixtures", "Harness", "Recorder", "SharedCluster", "WatchTap"]

T = TypeVar("T")


def _with_hosts(url: str, hosts: str) -> str:
    """``url`` with its ``host:port`` list replaced by ``hosts`` (user info, path and query kept)."""
    scheme, sep, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    if "?" in authority:  # no path: the query follows the authority
        authority, _, query = authority.partition("?")
        tail, slash = "?" + query, ""
    userinfo, at, _ = authority.rpartition("@")
    return f"{scheme}{sep}{userinfo}{at}{hosts}{slash}{tail}"


def not_run(reason: str) -> NoReturn:
    """Skip a test because the fixture or backend cannot run it, named in the summary."""
    pytest.skip(f"{NOT_RUN_PREFIX} {reason}")


def _with_namespace(url: str, namespace: str) -> str:
    """``url`` with ``namespace`` appended to its path (before the query)."""
    parsed = parse_url(url)
    head, sep, query = url.partition("?")
    if parsed.namespace:
        head = head.rstrip("/") + "/" + namespace
    else:
        scheme, _, rest = head.partition("://")
        head = f"{scheme}://{rest.split('/', 1)[0]}/{namespace}"
    return head + sep + query


class Recorder(Generic[T]):
    """Records every item a stream yields (run it in a task); :meth:`until` waits for one."""

    def __init__(self, harness: Harness, items: AsyncIterator[T]) -> None:
        self.seen: list[T] = []
        self._harness = harness
        self._items = items
        self._changed = anyio.Event()

    async def run(self) -> None:
        async for item in self._items:
            self.seen.append(item)
            changed, self._changed = self._changed, anyio.Event()
            changed.set()

    async def until(self, expected: T, what: str, seconds: float = 5) -> None:
        """Wait until the last item seen equals ``expected``."""

        async def wait() -> None:
            while not self.seen or self.seen[-1] != expected:
                await self._changed.wait()

        await self._harness.within(seconds, wait(), what)


class WatchTap:
    """What a coordinator's backend yields to config watches, before the core filters it.

    The core drops items whose version is not above the last one it yielded, so a backend
    whose watch went backwards would look right from ``config.watch()``. The tap records
    each stream ``Backend.watch`` starts (the core restarts it after errors), item by item.
    """

    def __init__(self, coord: Coordinator) -> None:
        self.streams: list[list[Versioned | HistoryReset | None]] = []
        backend = coord.driver
        original = backend.watch

        async def watch(key: str, resume: ResumePoint) -> AsyncIterator[Versioned | HistoryReset | None]:
            items: list[Versioned | HistoryReset | None] = []
            self.streams.append(items)
            stream = original(key, resume)
            try:
                async for item in stream:
                    items.append(item)
                    yield item
            finally:
                close = getattr(stream, "aclose", None)
                if close is not None:
                    await close()

        setattr(backend, "watch", watch)  # noqa: B010 - on this instance only

    def backwards(self) -> list[str]:
        """Every item whose version is below one the backend yielded before it (across
        restarts of the stream), unless a ``HISTORY_RESET`` came in between."""
        found = []
        highest = -1
        for number, stream in enumerate(self.streams):
            for item in stream:
                if item is HISTORY_RESET:
                    highest = -1
                elif isinstance(item, Versioned):
                    if item.version < highest:
                        found.append(f"stream {number}: version {item.version} after {highest}")
                    highest = max(highest, item.version)
        return found


@dataclass
class ClusterHarness:
    """What :meth:`Harness.cluster` gives: a running cluster, a fault proxy in front of each
    of its endpoints, and harnesses on it (the test's namespace and options)."""

    cluster: ServerCluster[Any]
    proxies: list[FaultProxy]
    """One :class:`~coordination.testing.proxy.FaultProxy` per endpoint, index-aligned with
    ``cluster.endpoints``."""
    via: Harness
    """A harness whose URL lists every proxy (in endpoint order): for the client under test."""
    direct: Harness
    """A harness whose URL lists every endpoint directly: for the other clients."""

    def talked_to(self) -> int:
        """The index (in ``cluster.endpoints``) of the endpoint that clients of :attr:`via`
        talk to now: the one whose proxy has the most open connections (ties: the most
        traffic). AssertionError if no proxy has any."""
        best = max(
            range(len(self.proxies)),
            key=lambda i: (self.proxies[i].open_connections, self.proxies[i].chunks_up),
        )
        if self.proxies[best].open_connections == 0:
            raise AssertionError("no client has an open connection through the cluster's proxies")
        return best

    def connected_elsewhere(self, index: int) -> bool:
        """Whether some proxy other than endpoint ``index``'s has an open connection."""
        return any(proxy.open_connections for i, proxy in enumerate(self.proxies) if i != index)

    async def heal(self, seconds: float) -> None:
        """Resume paused nodes, start stopped ones (on their data) and wait, up to
        ``seconds`` (scaled), until the cluster is healthy."""
        await _heal_cluster(self.cluster, self.direct.t(seconds))


async def _heal_cluster(cluster: ServerCluster[Any], timeout: float) -> None:
    """Resume paused nodes, start stopped ones (together: a node may wait for a quorum that
    the others make) and wait until the cluster is healthy."""
    for node in cluster.members:
        if node.paused:
            node.resume()
    stopped = [node for node in cluster.members if not node.running]
    async with anyio.create_task_group() as tg:
        for node in stopped:
            tg.start_soon(anyio.to_thread.run_sync, node.start)
    await anyio.to_thread.run_sync(lambda: cluster.wait_healthy(timeout))


class Harness:
    """What a conformance test gets: sessions on the backend under test, and helpers.

    Each test gets its own namespace, so tests never see each other's names.
    """

    def __init__(
        self,
        fixtures: CoordinationFixtures,
        url: str,
        scale: float,
        options: dict[str, Any],
        server: ServerProcess | None = None,
    ) -> None:
        self.fixtures = fixtures
        self.server = server
        """The server under test where the fixture controls it, else ``None``."""
        self.url = url
        self.scale = scale
        self.options = options
        self.backend_class = coordination.find_backend(parse_url(url).scheme)

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self.backend_class.capabilities

    def t(self, seconds: float) -> float:
        """``seconds`` scaled by the suite's timeout multiplier."""
        return seconds * self.scale

    def url_with_options(self, **options: Any) -> str:
        """The test's URL with the suite's options (overridden by ``options``) in its query,
        for a client in another process."""
        merged = {**self.options, **options}
        query = "&".join(f"{key}={urllib.parse.quote(str(value))}" for key, value in merged.items())
        return f"{self.url}{'&' if '?' in self.url else '?'}{query}" if query else self.url

    def derive(
        self,
        *,
        url: str | None = None,
        options: dict[str, Any] | None = None,
        server: ServerProcess | None = None,
    ) -> Harness:
        """A harness like this one with another URL, options or server (same namespace and scale)."""
        return Harness(
            self.fixtures,
            self.url if url is None else url,
            self.scale,
            dict(self.options if options is None else options),
            self.server if server is None else server,
        )

    @property
    def scheme(self) -> str:
        return self.backend_class.scheme

    @asynccontextmanager
    async def proxied(self) -> AsyncIterator[tuple[FaultProxy, Harness]]:
        """A :class:`~coordination.testing.proxy.FaultProxy` in front of the server, and a
        harness whose URL goes through it (same namespace and options).

        The URL's first host is proxied; the proxied URL names only the proxy. A URL without
        a ``host:port`` (such as ``memory://``) skips the test, naming the reason.
        """
        hosts = parse_url(self.url).hosts
        if not hosts or hosts[0][1] is None:
            not_run(f"a fault proxy needs a host:port in the URL ({self.scheme})")
        host, port = hosts[0]
        assert port is not None
        async with FaultProxy(host, port) as proxy:
            yield proxy, self.derive(url=_with_hosts(self.url, proxy.address))

    @asynccontextmanager
    async def cluster(self) -> AsyncIterator[ClusterHarness]:
        """A running server cluster from :meth:`CoordinationFixtures.new_cluster`, a fault
        proxy in front of each of its endpoints, and harnesses through the proxies and
        directly (:class:`ClusterHarness`).

        A cluster that is not started yet is started (in a thread) and closed at the end. A
        cluster whose nodes already run is lent (a fixture reusing one cluster for several
        tests): every node is resumed and started again and the cluster healthy before the
        test, and again after it; it is not closed. Without a cluster the test is reported
        as not run, naming the reason.
        """
        cluster = self.fixtures.new_cluster(self)
        if cluster is None:
            not_run(f"the fixture gives no cluster ({self.scheme})")
        lent = cluster.running
        healthy = self.t(90)
        try:
            if lent:
                await _heal_cluster(cluster, healthy)
            else:
                await anyio.to_thread.run_sync(cluster.start)
            endpoints = cluster.endpoints
            async with AsyncExitStack() as stack:
                proxies = [
                    await stack.enter_async_context(FaultProxy(endpoint.host, endpoint.port))
                    for endpoint in endpoints
                ]
                yield ClusterHarness(
                    cluster,
                    proxies,
                    self.derive(url=_with_hosts(self.url, ",".join(proxy.address for proxy in proxies))),
                    self.derive(url=_with_hosts(self.url, ",".join(node.address for node in endpoints))),
                )
        finally:
            with anyio.CancelScope(shield=True):
                if lent:
                    await _heal_cluster(cluster, healthy)
                else:
                    await anyio.to_thread.run_sync(cluster.close)

    @asynccontextmanager
    async def dedicated_server(self) -> AsyncIterator[Harness]:
        """A harness on a server of this test's own, for faults that stop, kill or restart it.

        The fixture's :meth:`CoordinationFixtures.new_server` makes it; it is closed at the
        end. A fixture that gives none lends its shared server (``server``) instead, resumed
        and started again at the end. Without either, the test is skipped, naming the reason.
        """
        server = self.fixtures.new_server(self)
        if server is None:
            shared = self.server
            if shared is None:
                not_run(f"the fixture gives no server control ({self.scheme})")
            try:
                yield self
            finally:
                with anyio.CancelScope(shield=True):
                    if shared.paused:
                        shared.resume()
                    if not shared.running:
                        await anyio.to_thread.run_sync(shared.start)
            return
        try:
            await anyio.to_thread.run_sync(server.start)
            yield self.derive(url=_with_hosts(self.url, server.address), server=server)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(server.close)

    def holder(
        self,
        name: str,
        *arguments: str,
        label: str = "holder",
        on_event: Callable[[HolderEvent], None] | None = None,
    ) -> AbstractAsyncContextManager[HolderProcess]:
        """A lock holder process (:mod:`coordination.testing.holder`) on this harness's URL and
        options; killed at the end of the block if it still runs."""
        return HolderProcess.start(self.url_with_options(), name, *arguments, label=label, on_event=on_event)

    @property
    def failover_bound(self) -> float:
        """Seconds within which a crashed holder's lock must pass to another session."""
        return self.fixtures.failover_bound(self.options)

    @property
    def takeover_floor(self) -> float:
        """Seconds before which no other session may take a crashed or stopped holder's lock."""
        return self.fixtures.takeover_floor(self.options)

    async def wakeups(self, coords: Sequence[Coordinator]) -> int | None:
        """Wake-ups of waiters on ``coords`` so far (:meth:`CoordinationFixtures.wakeups`)."""
        return await self.fixtures.wakeups(self, coords)

    async def watches(self, coord: Coordinator) -> int | None:
        """Server-side watches of ``coord``'s client now (:meth:`CoordinationFixtures.watches`)."""
        return await self.fixtures.watches(self, coord)

    async def remove_owner(self, kind: Kind, name: str) -> None:
        """Delete the owner of ``name``'s key or node as an operator would
        (:meth:`CoordinationFixtures.remove_owner`); the test is reported as not run if the
        fixture cannot, and fails if there was no owner."""
        removed = await self.fixtures.remove_owner(self, kind, name)
        if removed is None:
            not_run(f"the fixture cannot delete an owner's key or node from outside ({self.scheme})")
        assert removed, f"{kind} {name!r} had no owner to delete"

    def connect(self, **options: Any) -> Coordinator:
        """An unopened coordinator on the test's namespace (the suite's options, overridden)."""
        return coordination.connect(self.url, **{**self.options, **options})

    @asynccontextmanager
    async def session(self, **options: Any) -> AsyncIterator[Coordinator]:
        """One open coordinator (its own session), closed at the end of the block."""
        async with self.connect(**options) as coord:
            yield coord

    @asynccontextmanager
    async def sessions(self, n: int, **options: Any) -> AsyncIterator[list[Coordinator]]:
        """``n`` independent open coordinators, closed at the end of the block."""
        async with AsyncExitStack() as stack:
            yield [await stack.enter_async_context(self.connect(**options)) for _ in range(n)]

    async def expire(self, coord: Coordinator) -> str:
        """Force ``coord``'s current session to expire from outside; return its id.

        Needs ``EXPIRE_SESSION``, declared by the backend or given by the fixture (mark the
        test ``@pytest.mark.requires(Capability.EXPIRE_SESSION)``); else the test is skipped,
        naming the capability."""
        if Capability.EXPIRE_SESSION not in self.capabilities | self.fixtures.fixture_capabilities:
            pytest.skip(f"{CAPABILITY_SKIP_PREFIX} {Capability.EXPIRE_SESSION.name} ({self.scheme})")
        session_id = coord.session_id
        assert session_id is not None, "the coordinator has no session to expire"
        await self.fixtures.expire_session(self, coord, session_id)
        return session_id

    async def expire_and_recover(self, coord: Coordinator, seconds: float = 15) -> str:
        """Expire ``coord``'s session from outside, then wait for LOST and a new CONNECTED one."""

        async def recover() -> str:
            async with aclosing(coord.states()) as states:
                await anext(states)  # subscribed from here on: no change can be missed
                old = await self.expire(coord)
                lost = False
                async for state in states:
                    lost = lost or state is SessionState.LOST
                    if lost and state is SessionState.CONNECTED:
                        return old
            raise AssertionError("unreachable")

        return await self.within(seconds, recover(), "LOST then a new CONNECTED session")

    def record(self, tg: TaskGroup, items: AsyncIterator[T]) -> Recorder[T]:
        """Start recording ``items`` in a task of ``tg``."""
        recorder = Recorder(self, items)
        tg.start_soon(recorder.run)
        return recorder

    async def within(self, seconds: float, awaitable: Awaitable[T], what: str) -> T:
        """Await ``awaitable``, failing the test if it takes longer than ``t(seconds)``."""
        with anyio.move_on_after(self.t(seconds)):
            return await awaitable
        pytest.fail(f"{what} did not happen within {self.t(seconds):g}s")

    @contextmanager
    def deadline(self, seconds: float, what: str) -> Iterator[None]:
        """Run the block (a task group, say), failing the test if it takes longer than
        ``t(seconds)``: every wait in a test is bounded by the suite's own message, never
        only by pytest's timeout."""
        with anyio.move_on_after(self.t(seconds)) as scope:
            yield
        if scope.cancelled_caught:
            pytest.fail(f"{what} did not happen within {self.t(seconds):g}s")

    async def wait_state(self, coord: Coordinator, state: SessionState, seconds: float = 10) -> None:
        """Wait until ``coord`` reaches ``state``."""

        async def wait() -> None:
            async with aclosing(coord.states()) as states:
                async for current in states:
                    if current is state:
                        return

        await self.within(seconds, wait(), f"session state {state.name}")


class CoordinationFixtures:
    """Fixtures for the backend under test; the conformance mixins read them.

    A backend's conformance module joins each mixin with its subclass of this::

        class TestLock(LockTests, EtcdFixtures): pass

    Override :meth:`coordination_url` (required) and, where ``Backend.expire_session``
    cannot do it, :meth:`expire_session`. :meth:`session_options` sets connect options
    such as a short ``ttl`` for fast expiry tests.

    The fault suite (:class:`~coordination.testing.faults.FaultTests`) also reads
    :meth:`fault_options`, :meth:`new_server` (a server of a test's own to pause, kill and
    restart), :meth:`leftovers` (what cancelled or failed acquires left on the server) and,
    where the backend compacts its history, :attr:`history_compaction` and :meth:`compact`.
    The cluster fault suite (:class:`~coordination.testing.cluster.ClusterFaultTests`)
    reads :meth:`new_cluster` (a cluster to kill, cut off and restart nodes of) and
    :meth:`cluster_options`. What a fixture does not give is reported by name, never
    skipped silently.
    """

    @pytest.fixture
    def coordination_url(self) -> str:
        """The URL of the backend under test (each test adds its own namespace)."""
        raise NotImplementedError("override the coordination_url fixture in your fixture class")

    @pytest.fixture
    def server(self) -> ServerProcess | None:
        """The server under test, for fault tests (stop, kill, pause, resume, restart).

        ``None`` (the default) when the fixture cannot control the server, as with
        ``--coordination-url``; override it with the
        :class:`~coordination.testing.servers.ServerProcess` the fixture started.
        """
        return None

    @pytest.fixture
    def session_options(self) -> dict[str, Any]:
        """Options every test session is opened with (override for a backend's bounds)."""
        return {"ttl": 3.0, "timeout": 5.0}

    def failover_bound(self, options: dict[str, Any]) -> float:
        """How soon a crashed holder's lock must be free again: the session TTL plus one
        second by default (override where the backend adds to it, like Consul's lock-delay)."""
        return float(options.get("ttl", 10.0)) + 1.0

    def fault_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The session options of the fault suite (:class:`~coordination.testing.faults.FaultTests`):
        ``options`` with a 2 s TTL and operation timeout, so that losses come fast."""
        return {**options, "ttl": 2.0, "timeout": 2.0}

    def new_cluster(self, harness: Harness) -> ServerCluster[Any] | None:
        """A server cluster for the cluster fault suite
        (:class:`~coordination.testing.cluster.ClusterFaultTests`), whose nodes it kills,
        cuts off and restarts: a new one, not started (the suite starts and closes it), or a
        running one the fixture reuses for several tests (the suite brings every node back
        and waits until it is healthy before and after each test, and leaves it running).

        ``None`` (the default): the cluster tests are reported as not run. The
        :class:`SharedCluster` mixin lends one cluster to every test of a module.
        """
        return None

    def cluster_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The session options of the cluster fault suite: ``options`` with a 5 s TTL (long
        enough for a client to move to another node before its session can expire) and a
        3 s operation timeout."""
        return {**options, "ttl": 5.0, "timeout": 3.0}

    def new_server(self, harness: Harness) -> ServerProcess | None:
        """A new, not yet started server like the one under test, for one fault test that
        pauses, kills or restarts it (the suite starts and closes it). It must keep its data
        across :meth:`~coordination.testing.servers.ServerProcess.restart`.

        ``None`` (the default): the fault tests use ``server`` (shared) or report that the
        fixture gives no server control.
        """
        return None

    async def leftovers(self, harness: Harness, session_ids: Collection[str] = ()) -> list[str] | None:
        """What is left on the server: every contender (lock or election node or key) under
        ``harness``'s namespace, and every session of ``session_ids`` the server still
        keeps, one description each.

        The fault suite checks that cancelled acquires and lost replies leave nothing.
        ``None`` (the default): the fixture cannot tell, and the suite says so.
        """
        return None

    fixture_capabilities: frozenset[Capability] = frozenset()
    """Capabilities the fixture gives the suite its own way although the backend does not
    declare them, e.g. ``EXPIRE_SESSION`` where :meth:`expire_session` ends a session from
    outside without ``Backend.expire_session``. The tests that use them run, and the summary
    says which capabilities came from the fixture."""

    async def wakeups(self, harness: Harness, coords: Sequence[Coordinator]) -> int | None:
        """How many times waiters on ``coords`` woke up so far to look again whether they own
        the lock or lead (watch events, blocking queries answered, polls).

        The hand-over tests use it to tell a watch from a poll (no wake-up while nothing
        changes) and, under ``SINGLE_WAKEUP``, one wake-up per release from a herd. The
        default sums ``Backend.wakeups`` of each coordinator's backend; ``None`` when the
        backend does not count them (those checks are then reported as not run).
        """
        counts = [coord.driver.wakeups for coord in coords]
        return None if None in counts else sum(count or 0 for count in counts)

    async def watches(self, harness: Harness, coord: Coordinator) -> int | None:
        """How many watches the server holds now for ``coord``'s client (ZooKeeper watches,
        etcd watchers, Consul blocking queries), counted by the server or the store, not by
        the client. A count of the whole server is fine where the test holds no other watch:
        the suite compares it with the count before its watch started.

        The group tests check with it that a watch of 1,000 members is one watch, not one per
        member, and not none (a poll). ``None`` (the default): the fixture cannot tell, and
        that check is reported as not run.
        """
        return None

    async def remove_owner(self, harness: Harness, kind: Kind, name: str) -> bool | None:
        """Delete the key or node of the current owner of lock or election ``name`` (in
        ``harness``'s namespace) from outside, with the backend's own tool, as an operator
        would (``etcdctl del``, kazoo or zkCli, ``consul kv delete``), while the owner's
        session lives on; whether there was an owner.

        The guarded-write tests check with it that the server, not the client, refuses a
        write guarded by a holding that is gone. ``None`` (the default): the fixture cannot,
        and those tests are reported as not run.
        """
        return None

    def takeover_floor(self, options: dict[str, Any]) -> float:
        """The earliest (in seconds) another session may take the lock of a holder whose process
        was killed or stopped: half the TTL by default. A session renewed at least every third
        (or half) of its TTL cannot end sooner than that after its holder stopped; a contender
        that got the lock earlier was let in while the holder's session was alive."""
        return float(options.get("ttl", 10.0)) / 2

    history_compaction = False
    """Whether :meth:`compact` applies: the backend drops old history that watches need."""

    async def compact(self, harness: Harness) -> None:
        """Compact the server's history up to its current version (etcd's compaction)."""
        raise NotImplementedError("set history_compaction and override compact()")

    async def expire_session(self, harness: Harness, coord: Coordinator, session_id: str) -> None:
        """End ``session_id`` (the session of ``coord``) from outside, as the server would.

        The default asks the backend from a second connection
        (``Backend.expire_session``), which needs :attr:`Capability.EXPIRE_SESSION`.
        """
        async with harness.session() as other:
            await other.expire_session(session_id)

    @pytest.fixture
    def harness(
        self,
        request: pytest.FixtureRequest,
        coordination_url: str,
        session_options: dict[str, Any],
        server: ServerProcess | None,
    ) -> Harness:
        url = _with_namespace(coordination_url, f"conformance-{uuid.uuid4().hex[:12]}")
        harness = Harness(self, url, timeout_multiplier(request.config), dict(session_options), server)
        for marker in request.node.iter_markers("requires"):
            for capability in marker.args:
                if capability in harness.capabilities:
                    continue
                if capability in self.fixture_capabilities:
                    request.node.user_properties.append(
                        (FIXTURE_CAPABILITY, f"{capability.name} ({harness.scheme})")
                    )
                    continue
                pytest.skip(f"{CAPABILITY_SKIP_PREFIX} {capability.name} ({harness.backend_class.scheme})")
        return harness


class SharedCluster:
    """A mixin for a fixture class whose cluster tests share one running cluster, put before
    the backend's fixture class::

        @pytest.fixture(scope="module")
        def shared_cluster() -> Iterator[EtcdCluster]:
            with EtcdCluster() as cluster:
                yield cluster

        class TestClusterFaults(ClusterFaultTests, SharedCluster, EtcdFixtures): pass

    The test module (or a conftest) supplies the fixture ``shared_cluster``, a started
    cluster. Each test gets it lent: every node running and the cluster healthy before and
    after the test (see :meth:`Harness.cluster`); the URL under test is the cluster's.
    """

    @pytest.fixture
    def coordination_url(self, shared_cluster: ServerCluster[Any]) -> str:
        return shared_cluster.url

    @pytest.fixture
    def server(self) -> None:
        return None  # the cluster's nodes are controlled through ClusterHarness, not one server

    @pytest.fixture(autouse=True)
    def _lend_shared_cluster(self, shared_cluster: ServerCluster[Any]) -> None:
        self._shared_cluster = shared_cluster

    def new_cluster(self, harness: Harness) -> ServerCluster[Any]:
        return self._shared_cluster
