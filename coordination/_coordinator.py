"""The coordinator: what ``connect()`` returns, the user's handle on one backend connection.

A facade over the :class:`~coordination._engine.Engine` (sessions, keepalive, acquiring):
it holds the public properties, makes the primitives, and opens and closes the engine.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from types import TracebackType

from ._engine import Engine
from ._names import validate_name
from ._types import SessionState
from .abc import Backend
from .capabilities import Capability
from .primitives import Config, Counter, Election, Group, Lock, RWLock, Semaphore

__all__ = ["Coordinator"]


class Coordinator:
    """A connection to a coordination backend, made by :func:`coordination.connect`.

    Use it as ``async with connect(url) as coord:``; leaving the block releases
    everything and ends the session. It keeps one session alive in the background and
    opens a new one by itself after a loss.
    """

    def __init__(self, backend: Backend, *, ttl: float, timeout: float, identity: str | None) -> None:
        self._engine = Engine(backend, ttl=ttl, timeout=timeout, identity=identity)

    def __repr__(self) -> str:
        hosts = ",".join(f"{h}:{p}" if p else h for h, p in self._engine.backend.url.hosts)
        return f"<Coordinator {self.backend}://{hosts}/{self.namespace} {self.state.name}>"

    # -- public properties ---------------------------------------------------------------

    @property
    def backend(self) -> str:
        """The backend's name, e.g. ``"etcd"``."""
        return self._engine.backend.scheme

    @property
    def capabilities(self) -> frozenset[Capability]:
        """The capabilities this backend declares."""
        return self._engine.backend.capabilities

    @property
    def state(self) -> SessionState:
        """The session state: CONNECTED, SUSPENDED or LOST."""
        return self._engine.state

    @property
    def session_id(self) -> str | None:
        """The backend's id of the current session (for logs and operators), if any."""
        session = self._engine.session
        return session.bs.id if session is not None and not session.lost.is_set() else None

    @property
    def identity(self) -> str:
        """The holder identity recorded with this coordinator's locks."""
        return self._engine.identity

    @property
    def namespace(self) -> str:
        """The key namespace from the URL path ("" for none)."""
        return self._engine.backend.url.namespace

    @property
    def ttl(self) -> float:
        """The session time to live requested, in seconds."""
        return self._engine.ttl

    def states(self) -> AsyncGenerator[SessionState, None]:
        """Yield the current session state, then every change."""
        return self._engine.states()

    # -- primitives ------------------------------------------------------------------------

    def lock(self, name: str) -> Lock:
        """A distributed lock named ``name`` (no I/O until it is acquired)."""
        return Lock(self._engine, validate_name(name))

    def election(self, name: str) -> Election:
        """A leader election named ``name`` (no I/O until used)."""
        return Election(self._engine, validate_name(name))

    def config(self, name: str) -> Config:
        """A watched config value named ``name`` (no I/O until used)."""
        return Config(self._engine, validate_name(name))

    def group(self, name: str) -> Group:
        """A group named ``name``: join it, list its members, watch them (no I/O until used)."""
        return Group(self._engine, validate_name(name))

    def semaphore(self, name: str, limit: int) -> Semaphore:
        """A distributed semaphore named ``name`` with at most ``limit`` holders (no I/O
        until acquired); every holder must use the same ``limit``."""
        return Semaphore(self._engine, validate_name(name), limit)

    def rwlock(self, name: str) -> RWLock:
        """A distributed read/write lock named ``name``: ``rw.read()``, ``rw.write()``."""
        return RWLock(self._engine, validate_name(name))

    def counter(self, name: str) -> Counter:
        """A shared integer named ``name``: ``await counter.add(1)``, ``await counter.get()``."""
        return Counter(self._engine, validate_name(name))

    # -- operators -------------------------------------------------------------------------

    async def expire_session(self, session_id: str) -> None:
        """End the session ``session_id`` as the server would on expiry.

        Its locks and leaderships are free at once (on Consul, after the lock-delay); its
        client learns it lost at its next keepalive. For an operator evicting a stuck holder,
        for tests and demos. A backend with :attr:`Capability.EXPIRE_SESSION` ends any
        session; ZooKeeper ends only this coordinator's own (``coord.session_id``); where the
        backend cannot, :class:`~coordination.Unsupported`.
        """
        engine = self._engine
        engine.check_open()
        await engine.call(engine.backend.expire_session(session_id), f"expiring session {session_id}")

    @property
    def deadline(self) -> float | None:
        """Until when (on :func:`time.monotonic`'s clock) the current session's locks and
        leaderships are certainly this coordinator's: the send time of the last acknowledged
        keepalive plus the TTL, less a safety margin. The body of a holding is cancelled once
        it passes without a newer keepalive; ``None`` before the first session."""
        session = self._engine.session
        return None if session is None else session.deadline

    @property
    def driver(self) -> Backend:
        """The :class:`coordination.abc.Backend` this coordinator drives: for a backend's
        own tests and the conformance suite (wake-up counts, its raw watch streams), not for
        applications."""
        return self._engine.backend

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Coordinator:
        await self._engine.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return await self._engine.close(exc_type, exc, tb)
