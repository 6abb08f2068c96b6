"""The engine below the primitives: sessions, holdings and the session state machine.

Everything here is shared by every backend: the keepalive loop and the local loss deadline,
replacing a lost session, acquiring with clean cancellation (and withdrawing what was left),
the guarded ``async with`` body of a holding, and restarting broken streams with one backoff.
The user-facing objects sit above it: :mod:`coordination.primitives` (locks, elections,
config values) and :mod:`coordination._coordinator` (the ``Coordinator`` facade). Imports run
one way: ``__init__`` → ``_coordinator`` → ``primitives`` → ``_engine`` → ``abc``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from ._log import bind, get_logger
from ._metrics import Metrics
from ._types import SessionState
from ._url import default_identity
from .abc import Backend, BackendSession, Backoff, Kind, Queued, ResumePoint
from .exceptions import (
    AcquireTimeout,
    CoordinationError,
    LeadershipLost,
    LockLost,
    NotHeld,
    OperationTimeout,
    PermissionDenied,
    SessionExpired,
    Unavailable,
)

__all__ = ["Contender", "Engine", "Holding", "Membership", "Session", "reply_budget", "safety_margin"]

log = get_logger("coordination")

T = TypeVar("T")
H = TypeVar("H", bound="Holding")

_TRANSIENT = (Unavailable, OperationTimeout)


def safety_margin(ttl: float) -> float:
    """How long before the server-side expiry a session counts as lost locally."""
    return ttl / 10


def reply_budget(ttl: float, timeout: float) -> float:
    """How long a keepalive may go unanswered before the session counts as SUSPENDED and
    the keepalive is sent again, to another node: a fifth of the TTL (at most ``timeout``)."""
    return min(timeout, max(ttl / 5, 0.05))


def _enqueue(
    bs: BackendSession[Any], kind: Kind, key: str, value: bytes, limit: int
) -> Awaitable[Queued[Any]]:
    """The backend hook that joins a contender queue of ``kind``."""
    if kind == "semaphore":
        return bs.enqueue_semaphore(key, value, limit)
    if kind == "read" or kind == "write":
        return bs.enqueue_rw(kind, key, value)
    return bs.enqueue(kind, key, value)


class Session:
    """The core's view of one backend session: its deadline, holdings and waiting ops."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.backend_session: BackendSession[Any] | None = None
        self.deadline = -math.inf
        self.lost = anyio.Event()
        self.lost_reason = ""
        self.holdings: set[Holding] = set()
        self.ops: set[anyio.CancelScope] = set()
        self.turns: dict[str, list[Contender]] = {}
        """Per slot (``BackendSession.slot``), this session's contenders in arrival order;
        the first one is on the server, the others wait for their turn."""

    def queue_up(self, slot: str | None) -> Contender:
        """A new contender, in turn for ``slot`` behind this session's others there."""
        contender = Contender(slot)
        if slot is None:
            contender.turn.set()
            return contender
        queue = self.turns.setdefault(slot, [])
        queue.append(contender)
        if len(queue) == 1:
            contender.turn.set()
        return contender

    def pass_turn(self, contender: Contender) -> None:
        """``contender`` has left the server (or never got there): the next one's turn."""
        queue = self.turns.get(contender.slot or "")
        if queue is None or contender not in queue:
            return
        first = queue[0] is contender
        queue.remove(contender)
        if not queue:
            del self.turns[contender.slot or ""]
        elif first:
            queue[0].turn.set()

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
        session_id = self.backend_session.id if self.backend_session else None
        log.log(
            logging.WARNING if self.holdings else logging.INFO,
            "session %s lost: %s",
            session_id or "?",
            reason,
            extra={"session_id": session_id},
        )
        for scope in self.ops:
            scope.cancel()
        holdings, self.holdings = self.holdings, set()
        for holding in holdings:
            holding._lose(reason)
        self._engine._on_lost(self)

    # SessionMonitor, called by the backend
    def suspended(self) -> None:
        self._engine._on_suspended(self)

    def resumed(self) -> None:
        self._engine._on_resumed(self)

    def expired(self) -> None:
        self.lose("the server expired the session")


class Contender:
    """A contender as the engine sees it: its turn in the session, and the backend's own
    contender (``handle``) once it is on the server."""

    __slots__ = ("handle", "slot", "turn")

    def __init__(self, slot: str | None) -> None:
        self.slot = slot
        self.turn = anyio.Event()
        self.handle: Any = None


class Holding:
    """What HeldLock and Leadership share: a token, loss tracking and the guarded body."""

    _what: ClassVar[str]
    _kind: ClassVar[Kind]
    _lost_error: ClassVar[type[LockLost | LeadershipLost]]

    def __init__(
        self, engine: Engine, session: Session, contender: Contender, name: str, token: int, value: bytes
    ) -> None:
        self._engine = engine
        self._session = session
        self._contender = contender
        self.name = name
        """The lock or election name."""
        self.token = token
        """The fencing token: strictly increases across successive holders of this name."""
        self.identity = engine.identity
        """The holder identity (the coordinator's ``identity`` option)."""
        self._ended = anyio.Event()
        self._lost_reason: str | None = None
        self._released = False
        self._scopes: list[anyio.CancelScope] = []
        self._since = time.monotonic()  # when it was granted (election.run times terms from it)

    def __repr__(self) -> str:
        state = "held" if self.held else "lost" if self.lost else "released"
        return f"<{type(self).__name__} {self.name!r} token={self.token} {state}>"

    @property
    def held(self) -> bool:
        """True until released or lost; checks the session's local deadline against the clock."""
        return not self._released and self._lost_reason is None and self._session.live()

    @property
    def lost(self) -> bool:
        """True once lost (its session ended before it was released)."""
        return self._lost_reason is not None

    async def wait_lost(self) -> None:
        """Wait until this is lost, or released; ``lost`` tells which."""
        await self._ended.wait()

    def _bound(self) -> contextlib.AbstractContextManager[None]:
        """Log records within are about this holding (:func:`coordination._log.bind`)."""
        return bind(self._engine, self.name, self.token)

    def _lose(self, reason: str) -> None:
        if self._released or self._lost_reason is not None:
            return
        self._lost_reason = reason
        self._ended.set()
        # Ended by closing the coordinator is not a loss anyone should be alerted to.
        lost = not self._engine._closing
        self._engine.metrics.ended(self._kind, self.name, time.monotonic() - self._since, lost=lost)
        for scope in self._scopes:
            scope.cancel()

    def _lost_exc(self) -> CoordinationError:
        return self._lost_error(
            f"{self._what} {self.name!r} (token {self.token}) was lost: {self._lost_reason}",
            name=self.name,
            token=self.token,
            reason=self._lost_reason,
        )

    def _released_exc(self) -> NotHeld:
        return NotHeld(
            f"{self._what} {self.name!r} (token {self.token}) was already released",
            name=self.name,
            token=self.token,
            reason="released",
        )

    def _check_held(self) -> None:
        """Raise unless held: the loss error once lost, NotHeld once released."""
        if self._released:
            raise self._released_exc()
        if not self.held:
            raise self._lost_exc()

    async def _guarded(self, write: Callable[[BackendSession[Any], Any], Awaitable[T]], what: str) -> T:
        """One config write that the server applies only while this is still the owner.

        Raises NotHeld once released, before any I/O, and the loss error once known lost
        (before any I/O too) or when the server refused the write on its ownership check:
        then this is lost from here on (its body cancelled, its contender withdrawn).
        """
        self._check_held()
        session = self._session
        try:
            with self._bound():
                return await self._engine.call(write(session.bs, self._contender.handle), what)
        except NotHeld as exc:
            refused: CoordinationError = exc
            await self._refused(f"the server refused a write guarded by it ({exc})")
        except SessionExpired as exc:
            refused = exc
            session.lose(f"the server expired the session ({exc})")
        if self._released:  # released while the write was in flight
            raise self._released_exc() from refused
        raise self._lost_exc() from refused

    async def _refused(self, reason: str) -> None:
        """The server says this is no longer the owner although its session lives (an
        operator deleted its key or node, say): lose it and withdraw what is left of it."""
        if self._released or self._lost_reason is not None:
            return
        self._session.holdings.discard(self)
        self._lose(reason)
        with self._bound():
            try:
                await self._engine.withdraw(self._session, self._contender)
            except CoordinationError as exc:  # the loss error is what the caller must see
                log.warning("withdrawing %s %r after a refused write failed: %r", self._what, self.name, exc)

    async def _end(self) -> None:
        self._check_held()
        self._released = True
        self._ended.set()
        self._engine.metrics.ended(self._kind, self.name, time.monotonic() - self._since, lost=False)
        self._session.holdings.discard(self)
        with self._bound():
            await self._engine.withdraw(self._session, self._contender)

    async def _proclaim(self, value: bytes) -> None:
        """Replace the value on the server (an election's leader value), keeping the token."""
        self._check_held()
        with self._bound():
            await self._engine.call(
                self._session.bs.proclaim(self._contender.handle, value), f"proclaiming on {self.name!r}"
            )

    # -- the guarded ``async with`` body ---------------------------------------------------

    async def __aenter__(self) -> Self:
        """Guard a body with this holding: cancelled on loss, released at exit.

        ``async with await lock.acquire(timeout=5) as held:`` is ``async with lock`` with a
        timeout. If the holding is lost, the body is cancelled and the loss error
        (:class:`~coordination.LockLost` / :class:`~coordination.LeadershipLost`) is raised
        at its exit.
        """
        scope = anyio.CancelScope()
        scope.__enter__()
        self._scopes.append(scope)
        if not self.held:
            scope.cancel()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        scope = self._scopes.pop()
        swallowed = bool(scope.__exit__(exc_type, exc, tb))
        if self._released:  # released inside the body
            return swallowed
        if not self.held:
            if not swallowed and isinstance(exc, anyio.get_cancelled_exc_class()):
                # Cancelled from outside as it was lost: the cancellation goes on (a plain
                # asyncio cancel is delivered once, and must not become a loss to handle).
                return False
            raise self._lost_exc() from (None if swallowed else exc)
        with anyio.CancelScope(shield=True):
            await self._end()
        return swallowed


class Membership:
    """This coordinator's member of a group: on the server while a session lives, joined
    again by itself on the next session after a loss (membership is not exclusive, so a
    re-join is safe), until :meth:`leave` or the coordinator closes.

    ``async with group.join(value) as member:`` leaves at the end of the block;
    ``member = await group.join(value)`` lasts until ``await member.leave()``.
    """

    def __init__(self, engine: Engine, group: str, member_id: str, value: bytes) -> None:
        self._engine = engine
        self.group = group
        """The group's name."""
        self.id = member_id
        """The member's id in the group: unique, and the same across re-joins."""
        self.value = value
        """The value it joined with."""
        self._key = engine.key(group)
        self._session: Session | None = None  # the session its entry is on, while live
        self._joined = anyio.Event()  # set by each join that reached the server
        self._ended = anyio.Event()  # the keeper task ended
        self._scope = anyio.CancelScope()
        self._error: Exception | None = None  # why the keeper gave up
        self._left = False
        self._started = False  # the keeper task runs (or ran)

    def __repr__(self) -> str:
        state = "left" if self._left else "joined" if self.joined else "joining"
        return f"<Membership {self.group!r} id={self.id} {state}>"

    @property
    def joined(self) -> bool:
        """True while the member is on the server on a live session (False between a lost
        session and the re-join on the next one, and after :meth:`leave`)."""
        session = self._session
        return not self._left and session is not None and session.live()

    async def leave(self) -> None:
        """Leave the group: the entry is removed now (it would go with the session anyway).
        Leaving twice is harmless."""
        if self._left:
            return
        self._left = True
        with anyio.CancelScope(shield=True):
            self._scope.cancel()
            if self._started:  # else it never will: it sees _left first
                await self._ended.wait()
            session, self._session = self._session, None
            if session is not None and not session.lost.is_set():
                await self._engine.leave(session, self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.leave()


class Engine:
    """One backend connection and its session state machine, below the user-facing objects.

    The :class:`~coordination.Coordinator` is its facade; locks, elections and config values
    call it. It keeps one session alive in the background and opens a new one by itself
    after a loss; every background task lives in its task group.
    """

    def __init__(self, backend: Backend, *, ttl: float, timeout: float, identity: str | None) -> None:
        self._backend = backend
        self._ttl = ttl
        self._timeout = timeout
        self._identity = identity or default_identity()
        self.metrics = Metrics(backend.scheme)
        """The OpenTelemetry instruments (no-ops without the ``otel`` extra)."""
        self._state = SessionState.LOST
        self._session: Session | None = None
        self._ready: anyio.Event | None = None  # set while a live session is installed
        self._subscribers: set[MemoryObjectSendStream[SessionState]] = set()
        self._tg: TaskGroup | None = None
        self._supervisor: anyio.CancelScope | None = None
        self._closing = False
        self._refused: PermissionDenied | None = None  # why no new session could be opened

    @property
    def backend(self) -> Backend:
        """The backend client this engine drives."""
        return self._backend

    @property
    def identity(self) -> str:
        """The holder identity recorded with locks."""
        return self._identity

    @property
    def ttl(self) -> float:
        return self._ttl

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def session(self) -> Session | None:
        """The current session, live or lost (``None`` before the first one)."""
        return self._session

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

    @property
    def session_id(self) -> str | None:
        """The id of the session installed last (lost or not), for log records."""
        session = self._session
        return session.backend_session.id if session is not None and session.backend_session else None

    def key(self, name: str) -> str:
        """``name`` joined with the URL's namespace: what the backend's hooks receive."""
        namespace = self._backend.url.namespace
        return f"{namespace}/{name}" if namespace else name

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and open the first session; start supervising it."""
        if self._tg is not None or self._closing:
            raise RuntimeError("a Coordinator can be entered only once; call connect() again")
        self._ready, self._supervisor = anyio.Event(), anyio.CancelScope()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._backend.background = tg
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
        tg.start_soon(self._bound, self._supervise, session)

    async def close(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        """Release everything, end the session and close the backend (``__aexit__``'s work)."""
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

    async def _connect(self) -> Session:
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

    async def _open_session(self) -> Session:
        """Open one backend session; Unavailable if its grant came too late to be renewed in time."""
        session = Session(self)
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

    def _install(self, session: Session) -> None:
        self._session = session
        self._set_state(SessionState.CONNECTED)
        assert self._ready is not None
        self._ready.set()

    async def _bound(self, function: Callable[..., Awaitable[None]], *args: Any) -> None:
        """A background task: its log records are about this coordinator (and any name bound
        where it was started)."""
        with bind(self):
            await function(*args)

    async def _supervise(self, session: Session) -> None:
        assert self._supervisor is not None
        with self._supervisor:
            while True:
                await self._keep(session)
                assert self._tg is not None
                retry_for = 2 * max(self._ttl, session.bs.ttl) + self._timeout
                self._tg.start_soon(self._bound, self._close_session, session, retry_for)
                session = await self._reopen()
                self._install(session)

    async def _keep(self, session: Session) -> None:
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

    async def _keepalive(self, session: Session) -> None:
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
            self.metrics.keepalive(time.monotonic() - sent)
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

    async def _reopen(self) -> Session:
        backoff, failures = Backoff(), 0
        while True:
            try:
                session = await self._open_session()
            except PermissionDenied as exc:
                # The credentials were revoked or an ACL changed: retried (an operator may
                # mend it), but loudly, and the operations waiting for a session say why.
                failures += 1
                if self._refused is None or failures == 1:
                    log.error("opening a new session was refused, retrying: %s", exc)
                self._refused = exc
                await backoff.wait()
                continue
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
            self._refused = None
            return session

    async def _close_session(self, session: Session, retry_for: float = 0.0) -> None:
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
        self.metrics.transition(state.name)
        for send in self._subscribers:
            send.send_nowait(state)

    def _on_suspended(self, session: Session) -> None:
        if session is self._session and not session.lost.is_set():
            self._set_state(SessionState.SUSPENDED)

    def _on_resumed(self, session: Session) -> None:
        if session is self._session and session.live():
            self._set_state(SessionState.CONNECTED)

    def _on_lost(self, session: Session) -> None:
        if session is self._session:
            self._ready = anyio.Event()
            self._set_state(SessionState.LOST)

    # -- operations ------------------------------------------------------------------------

    async def call(self, awaitable: Awaitable[T], what: str) -> T:
        """Await one backend request, bounded by the operation timeout. A refusal names the
        operation refused (the backend's message names the credential, key or path)."""
        with bind(self), anyio.move_on_after(self._timeout):
            try:
                return await awaitable
            except PermissionDenied as exc:
                raise PermissionDenied(f"{what} was refused: {exc}") from exc
        raise OperationTimeout(f"{what} took longer than the {self._timeout:g}s operation timeout")

    def check_open(self) -> None:
        """Raise RuntimeError unless inside ``async with`` (before any I/O)."""
        if self._tg is None or self._closing:
            raise RuntimeError("the coordinator is not open: use 'async with coordination.connect(...)'")

    async def _live_session(self) -> Session:
        self.check_open()
        session = self._session
        if session is not None and not session.lost.is_set():
            return session
        with anyio.move_on_after(self._timeout):
            assert self._ready is not None
            await self._ready.wait()
            assert self._session is not None
            return self._session
        if self._refused is not None:
            raise PermissionDenied(f"no session could be opened: {self._refused}") from self._refused
        raise Unavailable(f"no session could be opened within {self._timeout:g}s")

    async def acquire(
        self,
        kind: Kind,
        name: str,
        value: bytes,
        *,
        blocking: bool,
        timeout: float | None,
        holding: type[H],
        limit: int = 1,
    ) -> H | None:
        """Enqueue ``value`` under ``name`` and wait to own it; return a ``holding`` of it.
        (``limit``: a semaphore's number of holders.)

        A lost session restarts the attempt on the next one; a blocking attempt waits for it
        however long the server is out of reach (bounded only by ``timeout``). A timeout, a
        cancellation or a failure withdraws the contender so it cannot block others.
        """
        key = self.key(name)
        backoff, asked = Backoff(), time.monotonic()
        with bind(self, name), anyio.move_on_after(math.inf if timeout is None else timeout):
            while True:
                try:
                    session = await self._live_session()
                except Unavailable:
                    if not blocking:
                        raise
                    continue  # it waited an operation timeout for the next session: wait on
                try:
                    held = await self._attempt(session, kind, name, key, value, blocking, holding, limit)
                except _TRANSIENT:
                    if not blocking:
                        raise
                    await backoff.wait()
                    continue
                if held is not None:
                    self.metrics.acquired(kind, name, time.monotonic() - asked)
                    return held
                if not blocking and not session.lost.is_set():
                    return None
        raise AcquireTimeout(f"could not get {kind} {name!r} within {timeout:g}s", name=name, timeout=timeout)

    async def _attempt(
        self,
        session: Session,
        kind: Kind,
        name: str,
        key: str,
        value: bytes,
        blocking: bool,
        holding: type[H],
        limit: int,
    ) -> H | None:
        """One try on one session; ``None`` if not owner (or the session was lost)."""
        bs = session.bs
        contender: Contender | None = None
        scope = anyio.CancelScope()
        session.ops.add(scope)
        try:
            with scope:
                contender = session.queue_up(bs.slot(kind, key))
                if not contender.turn.is_set():
                    if not blocking:
                        return None  # another contender of this session is ahead
                    await contender.turn.wait()
                queued = await self.call(_enqueue(bs, kind, key, value, limit), f"joining {kind} {key!r}")
                contender.handle, token = queued
                if token is None and blocking:
                    token = await bs.wait_owner(contender.handle)
                if token is not None and session.live():
                    # Cancelled while the backend finished the grant: the caller will not get
                    # this lock, so it must not be kept (the finally below withdraws it).
                    await anyio.lowlevel.checkpoint_if_cancelled()
                    held = holding(self, session, contender, name, token, value)
                    session.holdings.add(held)
                    contender = None
                    return held
        except SessionExpired as exc:
            session.lose(f"the server expired the session ({exc})")
        finally:
            session.ops.discard(scope)
            if contender is not None:
                await self.withdraw(session, contender)
        return None

    async def withdraw(self, session: Session, contender: Contender) -> None:
        """Withdraw a contender now, trying again through a reconnect for up to the operation
        timeout; if the backend is still unreachable, keep trying in the background. The
        session's next contender for the same slot gets its turn once this one is gone."""
        if contender.handle is None:  # never reached the server (enqueue cleans up after itself)
            session.pass_turn(contender)
            return
        with anyio.CancelScope(shield=True):
            deadline, backoff = time.monotonic() + self._timeout, Backoff()
            while True:
                try:
                    with anyio.fail_after(max(deadline - time.monotonic(), 0.0)):
                        await session.bs.withdraw(contender.handle)
                    break
                except SessionExpired:
                    break
                except (*_TRANSIENT, TimeoutError) as exc:
                    if session.lost.is_set() or self._tg is None:
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= backoff.delay:
                        log.info("withdraw failed, retrying in the background: %r", exc)
                        self._tg.start_soon(self._bound, self._withdraw_later, session, contender)
                        return
                    await backoff.wait(at_most=remaining)
            session.pass_turn(contender)

    async def _withdraw_later(self, session: Session, contender: Contender) -> None:
        backoff = Backoff(first=0.1)
        try:
            while not session.lost.is_set():
                await backoff.wait()
                try:
                    await self.call(session.bs.withdraw(contender.handle), "withdrawing")
                    return
                except SessionExpired:
                    return
                except _TRANSIENT:
                    pass
        finally:
            session.pass_turn(contender)

    # -- group members ---------------------------------------------------------------------

    async def join(self, membership: Membership) -> None:
        """Put ``membership`` on the server and keep it there (re-joining on every new
        session) in a task of the coordinator's own; return once it first joined. Raises
        :class:`~coordination.OperationTimeout` (leaving nothing behind) if it could not join
        within the operation timeout."""
        self.check_open()
        assert self._tg is not None
        self._tg.start_soon(self._bound, self._keep_member, membership)
        with anyio.move_on_after(self._timeout):
            async with anyio.create_task_group() as tg:

                async def ended() -> None:
                    await membership._ended.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(ended)
                await membership._joined.wait()
                tg.cancel_scope.cancel()
        if membership._joined.is_set():
            return
        await membership.leave()
        if membership._error is not None:
            raise membership._error
        raise OperationTimeout(
            f"could not join group {membership.group!r} within the {self._timeout:g}s operation timeout"
        )

    async def _keep_member(self, membership: Membership) -> None:
        if membership._left:
            return
        membership._started = True
        backoff = Backoff()
        what = f"joining group {membership.group!r}"
        try:
            with membership._scope:
                while True:
                    session = await self._next_session()
                    try:
                        # Shielded: a leave() waits for a join in flight, then removes what
                        # it made, so a cancelled join cannot leave a member behind.
                        with anyio.CancelScope(shield=True):
                            await self.call(
                                session.bs.join(membership._key, membership.id, membership.value), what
                            )
                    except SessionExpired as exc:
                        session.lose(f"the server expired the session ({exc})")
                        continue
                    except _TRANSIENT as exc:
                        log.info("%s failed, retrying: %r", what, exc)
                        await backoff.wait()
                        continue
                    except Exception as exc:  # Unsupported, PermissionDenied, a backend's bug
                        # Never raised here: it would end the coordinator. join() raises it,
                        # or, on a re-join, it is logged and the member stays out.
                        membership._error = exc
                        if membership._joined.is_set():
                            log.error(
                                "group %r: member %s cannot join again: %r",
                                membership.group,
                                membership.id,
                                exc,
                            )
                        return
                    backoff.reset()
                    membership._session = session
                    membership._joined.set()
                    await session.lost.wait()
                    membership._session = None
                    log.info(
                        "group %r: member %s joins again on the next session", membership.group, membership.id
                    )
        finally:
            membership._ended.set()

    async def _next_session(self) -> Session:
        """The live session, waiting as long as it takes for one to be installed."""
        while True:
            session = self._session
            if session is not None and not session.lost.is_set():
                return session
            assert self._ready is not None
            await self._ready.wait()

    async def leave(self, session: Session, membership: Membership) -> None:
        """Remove ``membership``'s entry from ``session`` now, trying again for up to the
        operation timeout; after that the session's end removes it."""
        deadline, backoff = time.monotonic() + self._timeout, Backoff()
        while not session.lost.is_set():
            try:
                with anyio.fail_after(max(deadline - time.monotonic(), 0.0)):
                    await session.bs.leave(membership._key, membership.id)
                return
            except SessionExpired:
                return
            except (*_TRANSIENT, TimeoutError) as exc:
                remaining = deadline - time.monotonic()
                if remaining <= backoff.delay:
                    log.info("leaving group %r failed, retrying in the background: %r", membership.group, exc)
                    if self._tg is not None:
                        self._tg.start_soon(self._bound, self._leave_later, session, membership)
                    return
                await backoff.wait(at_most=remaining)

    async def _leave_later(self, session: Session, membership: Membership) -> None:
        backoff = Backoff(first=0.1)
        while not session.lost.is_set():
            await backoff.wait()
            try:
                await self.call(session.bs.leave(membership._key, membership.id), "leaving a group")
                return
            except SessionExpired:
                return
            except _TRANSIENT:
                pass

    async def stream(self, factory: Callable[[ResumePoint], AsyncIterator[T]], what: str) -> AsyncIterator[T]:
        """Iterate a backend stream, restarting it after a transient failure or a lost session,
        from where it left off (one :class:`~coordination.abc.ResumePoint` for all its
        restarts), until the coordinator is closed. The one retry layer for streams."""
        self.check_open()
        backoff, resume = Backoff(), ResumePoint()
        while True:
            items = factory(resume)
            try:
                async for item in items:
                    backoff.reset()
                    yield item
            except (*_TRANSIENT, SessionExpired) as exc:
                if self._closing or self._tg is None:
                    raise Unavailable(f"{what} ended: the coordinator was closed") from exc
                log.info(
                    "%s broke, restarting in %.2fs: %r",
                    what,
                    backoff.delay,
                    exc,
                    extra={"session_id": self.session_id},
                )
            finally:
                aclose = getattr(items, "aclose", None)
                if aclose is not None:
                    await aclose()
            await backoff.wait()
