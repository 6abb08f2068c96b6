"""The fixture base class a backend fills in, and the harness the suite's tests use."""

from __future__ import annotations

import os
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from typing import Any, Generic, TypeVar

import anyio
import pytest
from anyio.abc import TaskGroup

import coordination
from coordination import Capability, Coordinator, SessionState
from coordination._url import parse_url

from .plugin import CAPABILITY_SKIP_PREFIX
from .servers import ServerProcess

__all__ = ["CoordinationFixtures", "Harness", "Recorder"]

T = TypeVar("T")


def _timeout_multiplier(config: pytest.Config) -> float:
    value = config.getoption("coordination_timeout_multiplier", default=None)
    if value is None:
        value = float(os.environ.get("COORDINATION_TIMEOUT_MULTIPLIER", "1"))
    if value <= 0:
        raise pytest.UsageError("the coordination timeout multiplier must be positive")
    return float(value)


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
        self.backend_class = coordination._find_backend(parse_url(url).scheme)

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

    @property
    def failover_bound(self) -> float:
        """Seconds within which a crashed holder's lock must pass to another session."""
        return self.fixtures.failover_bound(self.options)

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
        """Force ``coord``'s current session to expire from outside; return its id."""
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

    async def expire_session(self, harness: Harness, coord: Coordinator, session_id: str) -> None:
        """End ``session_id`` (the session of ``coord``) from outside, as the server would.

        The default asks the backend from a second connection
        (``Backend.expire_session``), which needs :attr:`Capability.EXPIRE_SESSION`.
        """
        async with harness.session() as other:
            await other._backend.expire_session(session_id)

    @pytest.fixture
    def harness(
        self,
        request: pytest.FixtureRequest,
        coordination_url: str,
        session_options: dict[str, Any],
        server: ServerProcess | None,
    ) -> Harness:
        url = _with_namespace(coordination_url, f"conformance-{uuid.uuid4().hex[:12]}")
        harness = Harness(self, url, _timeout_multiplier(request.config), dict(session_options), server)
        for marker in request.node.iter_markers("requires"):
            for capability in marker.args:
                if capability not in harness.capabilities:
                    pytest.skip(
                        f"{CAPABILITY_SKIP_PREFIX} {capability.name} ({harness.backend_class.scheme})"
                    )
        return harness
