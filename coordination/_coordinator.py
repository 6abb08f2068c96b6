"""The coordinator: one backend connection and its session state machine.

Everything here is shared by every backend: the keepalive loop and the local loss
deadline, replacing a lost session, acquiring with clean cancellation, and restarting
broken watch streams.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from ._names import validate_name
from ._types import SessionState
from ._url import default_identity
from .abc import Backend, BackendSession, Kind
from .capabilities import Capability
from .exceptions import AcquireTimeout, OperationTimeout, SessionExpired, Unavailable

if TYPE_CHECKING:
    from .primitives import Config, Election, Lock, _Holding

__all__ = ["Coordinator"]

log = logging.getLogger("coordination")

T = TypeVar("T")
H = TypeVar("H", bound="_Holding")

_TRANSIENT = (Unavailable, OperationTimeout)


def safety_margin(ttl: float) -> float:
    """How long before the server-side expiry a session counts as lost locally."""
    return ttl / 10


def reply_budget(ttl: float, timeout: float) -> float:
    """How long a keepalive may go unanswered before the session counts as SUSPENDED and
    the keepalive is sent again, to another node: a fifth of the TTL (at most ``timeout``)."""
    return min(timeout, max(ttl / 5, 0.05))


class Backoff:
    """Pauses between retries, doubling from ``first`` up to ``longest`` seconds."""

    def __init__(self, first: float = 0.05, longest: float = 2.0) -> None:
        self.first = first
        self.longest = longest
        self.delay = first

    def reset(self) -> None:
        self.delay = self.first

    async def wait(self, at_most: float = math.inf) -> None:
        """Pause for the current delay (but not longer than ``at_most``), then double it."""
        await anyio.sleep(min(self.delay, at_most))
        self.delay = min(self.delay * 2, self.longest)


class _Session:
    """The core's view of one backend session: its deadline, holdings and waiting ops."""

    def __init__(self, coord: Coordinator) -> None:
        self._coord = coord
        self.backend_session: BackendSession[Any] | None = None
        self.deadline = -math.inf
        self.lost = anyio.Event()
        self.lost_reason = ""
        self.holdings: set[_Holding] = set()
        self.ops: set[anyio.CancelScope] = set()

    @property
    def bs(self) -> BackendSession[Any]:
        assert self.backend_session is not None
        return self.backend_session

    def live(self) -> bool:
        """True while not lost and before the local deadline (checked against the clock).

        A passed deadline loses the session here and now, even before the watchdog runs
        (it may not have, if the event loop was blocked).
        """
        if self.lost.is_set():
            return False
        if time.monotonic() >= self.deadline:
            self.lose("the local deadline passed without an acknowledged keepalive")
            return False
        return True

    def extend(self, sent: float, granted: float) -> bool:
        """Move the deadline after a keepalive sent at ``sent``; False if it came too late."""
        if time.monotonic() >= self.deadline:
            self.lose("the local deadline passed before a keepalive was acknowledged")
            return False
        self.deadline = max(self.deadline, sent + granted - safety_margin(granted))
        return True

    def lose(self, reason: str) -> None:
        """Mark the session lost: cancel waiting ops, lose every holding, tell the coordinator."""
        if self.lost.is_set():
            return
        self.lost_reason = reason
        self.lost.set()
        log.log(
            logging.WARNING if self.holdings else logging.INFO,
            "session %s lost: %s",
            self.backend_session.id if self.backend_session else "?",
            reason,
        )
        for scope in self.ops:
            scope.cancel()
        holdings, self.holdings = self.holdings, set()
        for holding in holdings:
            holding._lose(reason)
        self._coord._on_lost(self)

    # SessionMonitor, called by the backend
    def suspended(self) -> None:
        self._coord._on_suspended(self)

    def resumed(self) -> None:
        self._coord._on_resumed(self)

    def expired(self) -> None:
        self.lose("the server expired the session")


class Coordinator:
    """A connection to a coordination backend, made by :func:`coordination.connect`.

    Use it as ``async with connect(url) as coord:``; leaving the block releases
    everything and ends the session. It keeps one session alive in the background and
    opens a new one by itself after a loss.
    """

    def __init__(self, backend: Backend, *, ttl: float, timeout: float, identity: str | None) -> None:
        self._backend = backend
        self._ttl = ttl
        self._timeout = timeout
        self._identity = identity or default_identity()
        self._state = SessionState.LOST
        self._session: _Session | None = None
        self._ready: anyio.Event | None = None  # set while a live session is installed
        self._subscribers: set[MemoryObjectSendStream[SessionState]] = set()
        self._tg: TaskGroup | None = None
        self._supervisor: anyio.CancelScope | None = None
        self._closing = False

    def __repr__(self) -> str:
        hosts = ",".join(f"{h}:{p}" if p else h for h, p in self._backend.url.hosts)
        return f"<Coordinator {self.backend}://{hosts}/{self.namespace} {self._state.name}>"

    # -- public properties ---------------------------------------------------------------

    @property
    def backend(self) -> str:
        """The backend's name, e.g. ``"etcd"``."""
        return self._backend.scheme

    @property
    def capabilities(self) -> frozenset[Capability]:
        """The capabilities this backend declares."""
        return self._backend.capabilities

    @property
    def state(self) -> SessionState:
        """The session state: CONNECTED, SUSPENDED or LOST."""
        return self._state

    @property
    def session_id(self) -> str | None:
        """The backend's id of the current session (for logs and operators), if any."""
        session = self._session
        return session.bs.id if session is not None and not session.lost.is_set() else None

    @property
    def identity(self) -> str:
        """The holder identity recorded with this coordinator's locks."""
        return self._identity

    @property
    def namespace(self) -> str:
        """The key namespace from the URL path ("" for none)."""
        return self._backend.url.namespace

    @property
    def ttl(self) -> float:
        """The session time to live requested, in seconds."""
        return self._ttl

    async def states(self) -> AsyncGenerator[SessionState, None]:
        """Yield the current session state, then every change."""
        send, receive = anyio.create_memory_object_stream[SessionState](math.inf)
        self._subscribers.add(send)
        try:
            with send, receive:
                yield self._state
                async for state in receive:
                    yield state
        finally:
            self._subscribers.discard(send)

    # -- primitives ------------------------------------------------------------------------

    def lock(self, name: str) -> Lock:
        """A distributed lock named ``name`` (no I/O until it is acquired)."""
        from .primitives import Lock

        return Lock(self, validate_name(name))

    def election(self, name: str) -> Election:
        """A leader election named ``name`` (no I/O until used)."""
        from .primitives import Election

        return Election(self, validate_name(name))

    def config(self, name: str) -> Config:
        """A watched config value named ``name`` (no I/O until used)."""
        from .primitives import Config

        return Config(self, validate_name(name))

    def _key(self, name: str) -> str:
        namespace = self._backend.url.namespace
        return f"{namespace}/{name}" if namespace else name

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Coordinator:
        if self._tg is not None or self._closing:
            raise RuntimeError("a Coordinator can be entered only once; call connect() again")
        self._ready, self._supervisor = anyio.Event(), anyio.CancelScope()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        try:
            session = await self._connect()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._backend.aclose()
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)  # the error propagates as itself, not in a group
            raise
        self._tg = tg
        self._install(session)
        tg.start_soon(self._supervise, session)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        tg = self._tg
        assert tg is not None, "__aexit__ without __aenter__"
        self._closing = True
        assert self._supervisor is not None
        self._supervisor.cancel()
        with anyio.CancelScope(shield=True):
            session = self._session
            if session is not None:
                session.lose("the coordinator was closed")
                await self._close_session(session)
            with anyio.move_on_after(self._timeout):
                await self._backend.aclose()
        for send in self._subscribers:
            send.close()
        tg.cancel_scope.cancel()
        if exc is not None and not isinstance(exc, anyio.get_cancelled_exc_class()):
            # Let the body's own exception propagate as itself, not wrapped in a group.
            await tg.__aexit__(None, None, None)
            return False
        return await tg.__aexit__(exc_type, exc, tb)

    # -- session supervision ---------------------------------------------------------------

    async def _connect(self) -> _Session:
        """Open the backend and its first session, trying again while the server is starting
        or briefly out of reach, until the operation timeout runs out (then the last error)."""
        deadline = time.monotonic() + self._timeout
        backoff, opened = Backoff(longest=1.0), False
        last: Exception | None = None
        while True:
            try:
                with anyio.fail_after(max(deadline - time.monotonic(), 0.0)):
                    if not opened:
                        await self._backend.open()
                        opened = True
                    return await self._open_session()
            except _TRANSIENT as exc:
                if last is None:
                    log.info("connecting failed, retrying for up to %.3gs: %r", self._timeout, exc)
                last = exc
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                await backoff.wait(at_most=remaining)
            except TimeoutError:
                if last is not None:
                    raise last from last.__cause__
                raise OperationTimeout(
                    f"connecting took longer than the {self._timeout:g}s operation timeout"
                ) from None

    async def _open_session(self) -> _Session:
        """Open one backend session; Unavailable if its grant came too late to be renewed in time."""
        session = _Session(self)
        sent = time.monotonic()
        bs = await self.call(self._backend.open_session(self._ttl, session), "opening a session")
        if not hasattr(bs, "keepalive_interval"):
            bs.keepalive_interval = bs.ttl / 3
        session.backend_session = bs
        session.deadline = sent + bs.ttl - safety_margin(bs.ttl)
        if session.deadline - time.monotonic() < reply_budget(bs.ttl, self._timeout):
            # The grant took so long that no keepalive could be answered before the local
            # deadline: installing the session would show CONNECTED, then LOST at once.
            await self._close_session(session)
            raise Unavailable(
                f"the grant of session {bs.id} came {time.monotonic() - sent:.3g}s after it was asked"
                f" for, too late to renew it within its {bs.ttl:g}s TTL"
            )
        return session

    def _install(self, session: _Session) -> None:
        self._session = session
        self._set_state(SessionState.CONNECTED)
        assert self._ready is not None
        self._ready.set()

    async def _supervise(self, session: _Session) -> None:
        assert self._supervisor is not None
        with self._supervisor:
            while True:
                await self._keep(session)
                assert self._tg is not None
                retry_for = 2 * max(self._ttl, session.bs.ttl) + self._timeout
                self._tg.start_soon(self._close_session, session, retry_for)
                session = await self._reopen()
                self._install(session)

    async def _keep(self, session: _Session) -> None:
        """Keep ``session`` alive until it is lost; the watchdog enforces the deadline."""

        async def keepalive() -> None:
            try:
                await self._keepalive(session)
            except Exception as exc:  # never let a dead keepalive leave the deadline unwatched
                log.exception("the keepalive of session %s failed", session.bs.id)
                session.lose(f"its keepalive failed: {exc!r}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(keepalive)
            while not session.lost.is_set():
                remaining = session.deadline - time.monotonic()
                if remaining <= 0:
                    session.lose("the local deadline passed without an acknowledged keepalive")
                    break
                with anyio.move_on_after(remaining):
                    await session.lost.wait()
            tg.cancel_scope.cancel()

    async def _keepalive(self, session: _Session) -> None:
        bs = session.bs
        # Unanswered for a fifth of the TTL: SUSPENDED, well before the deadline, and the
        # backend moves to another node of its cluster before the next attempt.
        reply_within = reply_budget(bs.ttl, self._timeout)
        retry_every = max(0.05, min(bs.keepalive_interval, bs.ttl / 10))
        failing = False
        while True:
            if failing:
                # At most ten attempts per TTL while the server is out of reach.
                await anyio.sleep(retry_every)
            else:
                # Never so late that the reply could not come before the local deadline: a
                # session whose grant was answered late (after an outage) has little TTL left.
                due = session.deadline - reply_within - time.monotonic()
                await anyio.sleep(max(min(bs.keepalive_interval, due), 0.0))
            sent = time.monotonic()
            try:
                with anyio.fail_after(reply_within):
                    granted = await bs.keepalive()
            except SessionExpired as exc:
                session.lose(f"the server expired the session ({exc})")
                return
            except (*_TRANSIENT, TimeoutError, OSError) as exc:
                if isinstance(exc, TimeoutError):
                    exc = OperationTimeout(f"no reply within {reply_within:.3g}s")
                # Logged once per outage, not at every attempt.
                log.log(
                    logging.DEBUG if failing else logging.INFO,
                    "keepalive of session %s failed: %r",
                    bs.id,
                    exc,
                )
                failing = True
                self._on_suspended(session)
                await self._failover(f"a keepalive of session {bs.id} failed: {exc}")
                continue
            if not session.extend(sent, granted):
                return
            if failing:
                log.info("keepalive of session %s answered again", bs.id)
            failing = False
            self._on_resumed(session)

    async def _failover(self, reason: str) -> None:
        """Let the backend move to another node; bounded, and never fatal to the keepalive."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._timeout):
            try:
                await self._backend.failover(reason)
            except Exception as exc:
                log.info("moving to another node failed: %r", exc)

    async def _reopen(self) -> _Session:
        backoff, failures = Backoff(), 0
        while True:
            try:
                session = await self._open_session()
            except (*_TRANSIENT, SessionExpired) as exc:
                failures += 1
                # Logged once per outage (then at debug level), not at every attempt.
                log.log(
                    logging.INFO if failures == 1 else logging.DEBUG,
                    "opening a new session failed, retrying: %r",
                    exc,
                )
                await backoff.wait()
                continue
            if failures:
                log.info("opened session %s after %d failed attempts", session.bs.id, failures)
            return session

    async def _close_session(self, session: _Session, retry_for: float = 0.0) -> None:
        """End ``session`` on the server, best effort (the server expires it at its TTL anyway).

        With ``retry_for``, try again while the server is out of reach, for that long: until a
        session lost locally is closed, the server keeps its locks from everyone (up to twice
        its TTL, then Consul's lock-delay), although nobody uses them any more.
        """
        backoff, give_up, failures = Backoff(first=0.1), time.monotonic() + retry_for, 0
        while True:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._timeout):
                try:
                    await session.bs.close()
                    return
                except _TRANSIENT as exc:
                    failures += 1
                    if failures == 1:
                        log.info("closing session %s failed: %r", session.bs.id, exc)
                except Exception as exc:
                    log.info("closing session %s failed: %r", session.bs.id, exc)
                    return
            if time.monotonic() >= give_up:
                return
            await backoff.wait()

    def _set_state(self, state: SessionState) -> None:
        if state is self._state:
            return
        self._state = state
        for send in self._subscribers:
            send.send_nowait(state)

    def _on_suspended(self, session: _Session) -> None:
        if session is self._session and not session.lost.is_set():
            self._set_state(SessionState.SUSPENDED)

    def _on_resumed(self, session: _Session) -> None:
        if session is self._session and session.live():
            self._set_state(SessionState.CONNECTED)

    def _on_lost(self, session: _Session) -> None:
        if session is self._session:
            self._ready = anyio.Event()
            self._set_state(SessionState.LOST)

    # -- operations ------------------------------------------------------------------------

    async def call(self, awaitable: Awaitable[T], what: str) -> T:
        """Await one backend request, bounded by the operation timeout."""
        with anyio.move_on_after(self._timeout):
            return await awaitable
        raise OperationTimeout(f"{what} took longer than the {self._timeout:g}s operation timeout")

    def check_open(self) -> None:
        """Raise RuntimeError unless inside ``async with`` (before any I/O)."""
        if self._tg is None or self._closing:
            raise RuntimeError("the coordinator is not open: use 'async with coordination.connect(...)'")

    async def _live_session(self) -> _Session:
        self.check_open()
        session = self._session
        if session is not None and not session.lost.is_set():
            return session
        with anyio.move_on_after(self._timeout):
            assert self._ready is not None
            await self._ready.wait()
            assert self._session is not None
            return self._session
        raise Unavailable(f"no session could be opened within {self._timeout:g}s")

    async def acquire(
        self,
        kind: Kind,
        name: str,
        value: bytes,
        *,
        blocking: bool,
        timeout: float | None,
        make: Callable[[_Session, Any, int], H],
    ) -> H | None:
        """Enqueue ``value`` under ``name`` and wait to own it; ``make`` builds the holding.

        A lost session restarts the attempt on the next one; a blocking attempt waits for it
        however long the server is out of reach (bounded only by ``timeout``). A timeout, a
        cancellation or a failure withdraws the contender so it cannot block others.
        """
        key = self._key(name)
        backoff = Backoff()
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            while True:
                try:
                    session = await self._live_session()
                except Unavailable:
                    if not blocking:
                        raise
                    continue  # it waited an operation timeout for the next session: wait on
                try:
                    holding = await self._attempt(session, kind, key, value, blocking, make)
                except _TRANSIENT:
                    if not blocking:
                        raise
                    await backoff.wait()
                    continue
                if holding is not None or (not blocking and not session.lost.is_set()):
                    return holding
        raise AcquireTimeout(f"could not get {kind} {name!r} within {timeout:g}s")

    async def _attempt(
        self,
        session: _Session,
        kind: Kind,
        key: str,
        value: bytes,
        blocking: bool,
        make: Callable[[_Session, Any, int], H],
    ) -> H | None:
        """One try on one session; ``None`` if not owner (or the session was lost)."""
        contender: Any = None
        scope = anyio.CancelScope()
        session.ops.add(scope)
        try:
            with scope:
                contender = await self.call(session.bs.enqueue(kind, key, value), f"joining {kind} {key!r}")
                if blocking:
                    token = await session.bs.wait_owner(contender, blocking=True)
                else:
                    token = await self.call(
                        session.bs.wait_owner(contender, blocking=False), f"checking {kind} {key!r}"
                    )
                if token is not None and session.live():
                    # Cancelled while the backend finished the grant: the caller will not get
                    # this lock, so it must not be kept (the finally below withdraws it).
                    await anyio.lowlevel.checkpoint_if_cancelled()
                    holding = make(session, contender, token)
                    session.holdings.add(holding)
                    contender = None
                    return holding
        except SessionExpired as exc:
            session.lose(f"the server expired the session ({exc})")
        finally:
            session.ops.discard(scope)
            if contender is not None:
                await self.withdraw(session, contender)
        return None

    async def withdraw(self, session: _Session, contender: Any) -> None:
        """Withdraw a contender now, trying again through a reconnect for up to the operation
        timeout; if the backend is still unreachable, keep trying in the background."""
        with anyio.CancelScope(shield=True):
            deadline, backoff = time.monotonic() + self._timeout, Backoff()
            while True:
                try:
                    with anyio.fail_after(max(deadline - time.monotonic(), 0.0)):
                        await session.bs.withdraw(contender)
                    return
                except SessionExpired:
                    return
                except (*_TRANSIENT, TimeoutError) as exc:
                    if session.lost.is_set() or self._tg is None:
                        return
                    remaining = deadline - time.monotonic()
                    if remaining <= backoff.delay:
                        log.info("withdraw failed, retrying in the background: %r", exc)
                        self._tg.start_soon(self._withdraw_later, session, contender)
                        return
                    await backoff.wait(at_most=remaining)

    async def _withdraw_later(self, session: _Session, contender: Any) -> None:
        backoff = Backoff(first=0.1)
        while not session.lost.is_set():
            await backoff.wait()
            try:
                await self.call(session.bs.withdraw(contender), "withdrawing")
                return
            except SessionExpired:
                return
            except _TRANSIENT:
                pass

    async def stream(self, factory: Callable[[], AsyncIterator[T]], what: str) -> AsyncIterator[T]:
        """Iterate a backend stream, restarting it after a transient failure or a lost session."""
        self.check_open()
        backoff = Backoff()
        while True:
            items = factory()
            try:
                async for item in items:
                    backoff.reset()
                    yield item
            except (*_TRANSIENT, SessionExpired) as exc:
                log.info("%s broke, restarting in %.2fs: %r", what, backoff.delay, exc)
            finally:
                aclose = getattr(items, "aclose", None)
                if aclose is not None:
                    await aclose()
            await backoff.wait()
