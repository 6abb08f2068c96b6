"""The client layer: one ZooKeeper connection and session, on aiozk's Session.

aiozk keeps the wire protocol, the connection, the session handshake, heartbeats and watch
dispatch. :class:`ZooKeeperClient` subclasses its ``Session`` to make it strict where
coordination needs it:

* a request is sent once: aiozk would re-send it after a lost connection, and a create
  whose reply was lost would run twice and leave an orphan node;
* a connection the server closed is noticed at once (aiozk waits for a ping to time out),
  and quietly: a reconnect is no error;
* a handshake that fails is a connection failure; only the server answering that it does
  not know the session is an expiry; no ``srvr`` probe precedes the handshake;
* a connection on which nothing arrives while a keepalive (:meth:`ZooKeeperClient.probe`)
  waits is dropped as stalled, so the session moves to a new one before it times out;
* with ``renew=False`` an expired session is never replaced: the client stays LOST and every
  request raises :class:`~coordination.SessionExpired`;
* every transition of the session state is reported to listeners, synchronously;
* every background task (the repair loop, each connection's read loop, the heartbeat) runs
  in the task group the client is given, under a cancel scope of its own, and
  :meth:`ZooKeeperClient.close` ends the session and leaves no task, connection or watch
  callback behind.

All of the subclassing of aiozk is here, in this module; :data:`AIOZK_INTERNALS` and
:data:`AIOZK_INSTANCE_ATTRIBUTES` list what it overrides and uses, and :func:`check_aiozk`
refuses, at import, an aiozk that lacks any of it (aiozk is pinned to 0.32).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import random
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import aiozk  # type: ignore[import-untyped]
import anyio
from aiozk import exc, protocol
from aiozk.connection import Connection  # type: ignore[import-untyped]
from aiozk.session import Session  # type: ignore[import-untyped]
from aiozk.states import SessionStateMachine, States  # type: ignore[import-untyped]
from anyio.abc import TaskGroup

from coordination.abc import certificate_refusal, get_logger, mapped_error
from coordination.exceptions import CoordinationError, NotHeld, PermissionDenied, SessionExpired, Unavailable

log = get_logger("coordination.zookeeper")

CONNECTED: str = States.CONNECTED
SUSPENDED: str = States.SUSPENDED
LOST: str = States.LOST

CREATED: int = protocol.WatchEvent.CREATED
DELETED: int = protocol.WatchEvent.DELETED
DATA_CHANGED: int = protocol.WatchEvent.DATA_CHANGED
CHILDREN_CHANGED: int = protocol.WatchEvent.CHILDREN_CHANGED

# Server answers the recipes handle themselves.
NoNode: type[Exception] = exc.NoNode
NodeExists: type[Exception] = exc.NodeExists
BadVersion: type[Exception] = exc.BadVersion
NotEmpty: type[Exception] = exc.NotEmpty

ERRORS: Mapping[type[BaseException], type[CoordinationError]] = {
    exc.NoAuth: PermissionDenied,
    exc.AuthFailed: PermissionDenied,
    exc.SessionExpired: SessionExpired,
    exc.ConnectError: Unavailable,
    exc.ConnectionLoss: Unavailable,
    exc.OperationTimeout: Unavailable,
    exc.UnfinishedRead: Unavailable,
    exc.TimeoutError: Unavailable,
    exc.SessionMoved: Unavailable,
    OSError: Unavailable,
    exc.ZKError: CoordinationError,
}
"""aiozk's errors as public ones: every reply that is an error becomes one of these, in this
module, except the :data:`ANSWERS` the recipes act on."""

ANSWERS = (NoNode, NodeExists, BadVersion, NotEmpty)
"""Errors that answer the request (the node is absent, exists, has another version, has
children): raised as aiozk's own, for the recipes to catch."""

_PERMISSIONS = {"r": "read", "w": "write", "c": "create", "d": "delete", "a": "admin"}

ACL_CHOICES = "open, creator, read, or scheme:id:perms (perms from rwcda), comma-separated"


def parse_acl(text: str, *, authenticated: bool) -> tuple[Any, ...]:
    """The ACL of the ``acl`` option: comma-separated entries, each ``open`` (anyone may do
    anything: ZooKeeper's OPEN_ACL_UNSAFE), ``creator`` (only the users this client
    authenticated as: CREATOR_ALL_ACL), ``read`` (anyone may read: READ_ACL_UNSAFE) or
    ``scheme:id:perms`` (for example ``digest:bob:<base64 sha1>:rwcda`` or
    ``ip:10.0.0.0/8:r``). ValueError says what is wrong."""
    entries = []
    for entry in (part.strip() for part in text.split(",")):
        if entry == "open":
            entries.append(protocol.UNRESTRICTED_ACCESS)
        elif entry == "creator":
            if not authenticated:
                raise ValueError("'creator' needs a user to authenticate as (user:password@ in the URL)")
            entries.append(protocol.AUTHED_UNRESTRICTED)
        elif entry == "read":
            entries.append(protocol.WORLD_READABLE)
        else:
            scheme, _, rest = entry.partition(":")
            ident, _, perms = rest.rpartition(":")
            if not scheme or not ident or not perms or set(perms) - set(_PERMISSIONS):
                raise ValueError(f"entry {entry!r} is not one of {ACL_CHOICES}")
            entries.append(
                protocol.ACL.make(
                    scheme, ident, **{name: letter in perms for letter, name in _PERMISSIONS.items()}
                )
            )
    return tuple(entries)


@dataclass(frozen=True)
class Access:
    """How a client reaches ZooKeeper and who it is there: TLS (a context, and the name the
    servers' certificates must carry, else each host's own), a digest user, and the ACL of
    the nodes it creates. The password is never shown."""

    tls: ssl.SSLContext | None = None
    server_name: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    acl: Sequence[Any] = (protocol.UNRESTRICTED_ACCESS,)
    certificate: str = "no client certificate"
    """Which client certificate TLS presents, for the message of a refused handshake."""

    @property
    def who(self) -> str:
        """Whom the server sees, for error messages: a user name, never the password."""
        return f"digest user {self.user!r}" if self.user is not None else "an unauthenticated client"


def raise_public(error: BaseException, refused: str | None = None) -> NoReturn:
    """Raise ``error`` as its public error (see :data:`ERRORS`); an answer the recipes act on
    (:data:`ANSWERS`) and a coordination error as they are. ``refused`` says which request,
    on which znode, by whom, for a refusal (NoAuth)."""
    if isinstance(error, (*ANSWERS, CoordinationError)):
        raise error
    public = mapped_error(error, ERRORS)
    if public is None:
        raise error
    if public is PermissionDenied and refused is not None:
        raise public(
            f"ZooKeeper refused {refused} ({type(error).__name__}: an ACL does not allow it)"
        ) from error
    raise public(f"{type(error).__name__}: {error}") from error


@dataclass(frozen=True)
class Stat:
    """The parts of a znode's stat the recipes use."""

    czxid: int
    mzxid: int
    version: int
    ephemeral_owner: int


def _stat(raw: Any) -> Stat:
    return Stat(
        int(raw.created_zxid), int(raw.last_modified_zxid), int(raw.version), int(raw.ephemeral_owner)
    )


def parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


class _StateMachine(SessionStateMachine):  # type: ignore[misc]
    """aiozk's state machine, reporting every transition; invalid ones are ignored, not raised."""

    def __init__(self, client: ZooKeeperClient) -> None:
        super().__init__(client)
        self._client = client

    def transition_to(self, state: str) -> None:
        previous = self.current_state
        if (previous, state) not in self.valid_transitions:
            return
        super().transition_to(state)
        self._client._transitioned(previous, state)


# fmt: off
AIOZK_INTERNALS: Mapping[str, tuple[type, tuple[str, ...]]] = {
    "Session": (
        Session,
        (
            "repair_loop", "send", "start", "close", "set_heartbeat", "create_heartbeat", "heartbeat",
            "event_dispatch", "add_watch_callback", "remove_watch_callback", "set_existing_watches",
        ),
    ),
    "Connection": (
        Connection,
        (
            "connect", "_read", "send_connect", "read_response", "send", "read_loop", "close",
            "abort",
        ),
    ),
    "SessionStateMachine": (SessionStateMachine, ("transition_to", "valid_transitions")),
}
"""The aiozk classes this module subclasses, and what of theirs it overrides or calls."""

AIOZK_INSTANCE_ATTRIBUTES: Mapping[str, tuple[str, ...]] = {
    "Session": (
        "conn", "session_id", "password", "timeout", "last_zxid", "xid", "started", "closing",
        "read_timeout", "heartbeat_handle", "watch_callbacks",
    ),
    "Connection": (
        "host", "port", "closing", "pending", "pending_specials", "read_timeout", "reader",
        "writer", "start_read_only",
    ),
}
# fmt: on
"""What this module reads or sets on aiozk's objects, as aiozk's ``__init__`` makes them."""


def aiozk_mismatches() -> list[str]:
    """What this module needs of aiozk's internals and the installed aiozk lacks (none: [])."""
    missing = [
        f"{name}.{attribute}"
        for name, (cls, attributes) in AIOZK_INTERNALS.items()
        for attribute in attributes
        if not hasattr(cls, attribute)
    ]
    try:  # aiozk's constructors do no I/O
        made = {
            "Session": Session("localhost:2181", 10, None, False, None),
            "Connection": Connection("localhost", 2181, None, None),
        }
    except TypeError as error:
        return [*missing, f"the constructors' signatures changed ({error})"]
    missing += [
        f"{name}().{attribute}"
        for name, attributes in AIOZK_INSTANCE_ATTRIBUTES.items()
        for attribute in attributes
        if not hasattr(made[name], attribute)
    ]
    return missing


def check_aiozk() -> None:
    """Raise ImportError naming what changed if the installed aiozk lacks what this module
    builds on (it subclasses aiozk's Session and Connection; pinned to aiozk 0.32)."""
    missing = aiozk_mismatches()
    if missing:
        version = getattr(aiozk, "__version__", "?")
        raise ImportError(
            f"coordination-zookeeper builds on aiozk 0.32's internals; aiozk {version} lacks "
            f"{', '.join(missing)}: install aiozk>=0.32,<0.33"
        )


check_aiozk()

_SIZE = struct.Struct("!i")
_REPLY_HEADER = struct.Struct("!iqi")


def _children_reply(payload: bytes) -> Any:
    """A GetChildren2 reply, parsed without aiozk's per-item machinery (queues are long)."""
    (count,) = _SIZE.unpack_from(payload, 0)
    offset, children = 4, []
    for _ in range(max(count, 0)):
        (length,) = _SIZE.unpack_from(payload, offset)
        offset += 4
        children.append(payload[offset : offset + length].decode())
        offset += length
    stat, _ = protocol.stat.Stat.parse(payload, offset)
    return protocol.GetChildren2Response(children=children, stat=stat)


class _Connection(Connection):  # type: ignore[misc]
    """aiozk's connection, with three changes.

    * No ``srvr`` probe before the handshake: servers may not allow that four-letter word,
      and it costs a second TCP connection (the client never asks for a read-only session,
      so it has no use for the answer).
    * Reads wait with a monotonic timeout, without a task per read, and queue listings are
      parsed in one loop: a waiter lists a queue that may be thousands long.
    * ``frames`` counts what arrives, the signs of life :meth:`ZooKeeperClient.probe` uses.
    """

    frames = 0
    reading: _Task | None = None
    """The read loop, in the client's task group (aiozk's ``start_read_loop`` is not used)."""

    tls: ssl.SSLContext | None = None
    server_name: str | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            self.host,
            self.port,
            ssl=self.tls,
            server_hostname=(self.server_name or self.host) if self.tls is not None else None,
        )
        self.start_read_only = False

    async def authenticate(self, user: str, password: str) -> None:
        """Add the digest credential ``user:password`` to this connection's session, before
        the read loop starts; PermissionDenied naming the user if the server refuses it."""
        request = protocol.AuthRequest(type=0, scheme="digest", auth=f"{user}:{password}".encode())
        payload = request.serialize(protocol.AUTH_XID)
        self.opcode_xref[protocol.AUTH_XID] = request.opcode
        self.writer.write(_SIZE.pack(len(payload)) + payload)
        try:
            xid, _, response = await self.read_response()
        except (ConnectionAbortedError, exc.UnfinishedRead):
            raise ConnectionError(f"{self.host}:{self.port} closed the connection before answering") from None
        if isinstance(response, exc.AuthFailed):
            raise PermissionDenied(
                f"ZooKeeper at {self.host}:{self.port} refused the digest credentials of user {user!r}"
            )
        if isinstance(response, BaseException):
            raise response
        if xid != protocol.AUTH_XID:
            raise ConnectionError(f"{self.host}:{self.port} answered the authentication with xid {xid}")

    async def _read(self, size: int = -1) -> bytes:
        try:
            async with asyncio.timeout(self.read_timeout):
                return bytes(await self.reader.readexactly(size))
        except (TimeoutError, asyncio.IncompleteReadError) as error:
            raise exc.UnfinishedRead from error

    async def send_connect(self, request: Any) -> tuple[Any, Any] | None:
        """The handshake; ``None`` if the server hung up instead of answering."""
        payload = request.serialize()
        self.writer.write(_SIZE.pack(len(payload)) + payload)
        try:
            _, zxid, response = await self.read_response(initial_connect=True)
        except (ConnectionAbortedError, exc.UnfinishedRead):
            return None
        return zxid, response

    async def read_response(self, initial_connect: bool = False) -> tuple[Any, Any, Any]:
        try:
            (size,) = _SIZE.unpack(await self.reader.readexactly(_SIZE.size))
        except (asyncio.IncompleteReadError, OSError):
            # The connection closed or broke: aiozk's read loop ends quietly on this one.
            raise ConnectionAbortedError from None
        self.frames += 1
        if initial_connect or self.pending_specials[protocol.CLOSE_XID]:
            return None, None, protocol.ConnectResponse.deserialize(await self._read(size))
        xid, zxid, error = _REPLY_HEADER.unpack(await self._read(_REPLY_HEADER.size))
        if error:
            self.opcode_xref.pop(xid, None)
            return xid, zxid, exc.get_response_error(error)
        payload = await self._read(size - _REPLY_HEADER.size)
        if xid == protocol.WATCH_XID:
            return xid, zxid, protocol.WatchEvent.deserialize(payload)
        opcode = self.opcode_xref.pop(xid)
        if opcode == protocol.GetChildren2Request.opcode:
            return xid, zxid, _children_reply(payload)
        return xid, zxid, protocol.response_xref[opcode].deserialize(payload)


class _Task:
    """One background task of a client, in the client's task group: cancel it, see it end."""

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.ended = anyio.Event()

    def cancel(self) -> None:
        self.scope.cancel()


class ZooKeeperClient(Session):  # type: ignore[misc]
    """One connection to a ZooKeeper ensemble and the session on it (see the module docstring).

    ``renew=True`` replaces an expired session by a new one (for reads and watches);
    ``renew=False`` keeps exactly one session for the client's whole life (for locks).
    Background tasks run in ``tg``, which must outlive :meth:`close` (the backend's).
    """

    # What this class uses of aiozk's Session, typed.
    hosts: list[tuple[str, str | int]]
    conn: Any
    session_id: int | None
    password: bytes
    timeout: float
    last_zxid: int | None
    xid: int
    started: bool
    closing: bool
    read_timeout: float | None
    heartbeat_handle: asyncio.TimerHandle | None
    watch_callbacks: dict[tuple[int, str], set[Callable[[str], None]]]

    def __init__(
        self,
        hosts: Iterable[tuple[str, int]],
        timeout: float,
        *,
        renew: bool,
        tg: TaskGroup,
        access: Access = Access(),
    ) -> None:
        self.access = access
        servers = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in hosts)
        super().__init__(servers, timeout, None, False, None)
        self.state = _StateMachine(self)
        self.requested_timeout = timeout
        self.renew = renew
        self.expired = False
        """``renew=False`` only: the server ended the session; the client stays LOST."""
        self._changed = anyio.Event()
        self._listeners: set[Callable[[str, str], None]] = set()
        self._tg = tg
        self._tasks: set[_Task] = set()
        self._heartbeat: _Task | None = None
        self._conns: set[Any] = set()
        self._failed_rounds = 0
        self._last_error: BaseException | None = None
        self._down_since: float | None = None
        self._closed = False

    # -- state ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return bool(self.state.current_state == CONNECTED)

    @property
    def session_hex(self) -> str:
        return f"0x{self.session_id:x}" if self.session_id else "(none)"

    def add_listener(self, listener: Callable[[str, str], None]) -> None:
        """Call ``listener(previous, new)`` at every state transition (CONNECTED, SUSPENDED, LOST)."""
        self._listeners.add(listener)

    def remove_listener(self, listener: Callable[[str, str], None]) -> None:
        self._listeners.discard(listener)

    async def changed(self) -> None:
        """Wait for the next state transition (or failed connection round)."""
        await self._changed.wait()

    def _poke(self) -> None:
        event, self._changed = self._changed, anyio.Event()
        event.set()

    async def expire_from_outside(self, timeout: float) -> None:
        """End this client's session as the server would on expiry: attach to it from a second
        connection (with its id and password), then close it; return once this client saw it
        end. ZooKeeper has no call to end a session by id; this is the classic way (kazoo's
        test harness does the same).

        Both requests go out in one write, so the server has the close queued before this
        client (whose connection it drops on the attach) can reconnect and take the session
        back; should it still win, try again: five attempts within ``timeout``.
        """
        sid = self.session_id
        if sid is None:
            raise SessionExpired("the ZooKeeper session is already gone")
        host, port = self.conn.host, self.conn.port

        def ended() -> bool:  # expired, replaced (renew=True), or closed
            return self.expired or self.session_id != sid or self.closing

        attempt = timeout / 10  # each waits twice at most: five attempts fit in ``timeout``
        for _ in range(5):
            try:
                await _attach_and_close(host, port, sid, self.password, attempt, self.access)
            except OSError as exc:
                raise Unavailable(f"could not reach {host}:{port} to end session 0x{sid:x}: {exc}") from exc
            with anyio.move_on_after(attempt):
                while not ended():
                    await self.changed()
                return
        raise Unavailable(f"ZooKeeper session 0x{sid:x} kept coming back after five closes")

    def _transitioned(self, previous: str, state: str) -> None:
        if state == CONNECTED:
            self._down_since = None
        elif self._down_since is None:
            self._down_since = time.monotonic()
        self._poke()
        for listener in list(self._listeners):
            try:
                listener(previous, state)
            except Exception:  # one broken listener must not stop the state machine
                log.exception("a ZooKeeper session state listener failed")

    def _check_usable(self) -> None:
        if self.expired:
            raise SessionExpired(f"the ZooKeeper session {self.session_hex} expired")
        if self.closing or not self.started:
            raise Unavailable("the ZooKeeper client is closed")

    async def wait_connected(self) -> None:
        """Wait until connected; SessionExpired once the session ended (``renew=False``)."""
        while not self.connected:
            self._check_usable()
            await self.changed()

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and open the session.

        Raises :class:`~coordination.Unavailable` if one round over every server failed;
        later disconnects are repaired in the background.
        """
        self.started = True
        self._spawn(self.repair_loop)
        try:
            while not self.connected:
                if isinstance(self._last_error, PermissionDenied):
                    raise PermissionDenied(str(self._last_error))
                if self._failed_rounds:
                    raise Unavailable(
                        f"could not connect to ZooKeeper at {self._servers()}: {self._last_error!r}"
                    ) from self._last_error
                await self.changed()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close()
            raise

    def _servers(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.hosts)

    def _spawn(self, run: Callable[[], Awaitable[object]], ended: Callable[[], None] | None = None) -> _Task:
        """Run ``run()`` in the client's task group until it returns or :meth:`close`; then
        call ``ended()``. An error is logged, never raised into the group."""
        task = _Task()
        self._tasks.add(task)

        async def body() -> None:
            try:
                with task.scope:
                    await run()
            except Exception:
                log.exception("a background task of the ZooKeeper client failed")
            finally:
                self._tasks.discard(task)
                task.ended.set()
                if ended is not None:
                    ended()

        self._tg.start_soon(body)
        return task

    def create_heartbeat(self) -> None:
        """aiozk's heartbeat timer fired: ping, in the task group (one at a time)."""
        if self.closing or (self._heartbeat is not None and not self._heartbeat.ended.is_set()):
            return
        self._heartbeat = self._spawn(self.heartbeat)

    async def close(self) -> None:
        """End the session on the server and release everything. Idempotent; never raises."""
        if self._closed:
            return
        self._closed = True
        was_connected = self.connected
        self.closing = True
        try:
            if was_connected:
                with anyio.move_on_after(min(self.timeout, 2.0)), contextlib.suppress(Exception):
                    await self._send_now(protocol.CloseRequest())
        finally:
            for conn in list(self._conns):
                self._drop(conn)
            for task in list(self._tasks):
                task.cancel()
            with anyio.CancelScope(shield=True):
                for task in list(self._tasks):
                    await task.ended.wait()
            if self.heartbeat_handle is not None:  # the heartbeat re-arms itself as it ends
                self.heartbeat_handle.cancel()
                self.heartbeat_handle = None
            self._heartbeat = None
            self.watch_callbacks.clear()
            self.state.transition_to(LOST)
            self._listeners.clear()
            self._poke()

    # -- connection repair (replaces aiozk's repair_loop) --------------------------------

    async def repair_loop(self) -> None:
        delay = 0.05
        while not self.closing:
            while self.connected:
                await self.changed()
            if self.closing or self.expired:
                return
            try:
                if await self._reconnect():
                    delay = 0.05
                    continue
            except Exception:  # never let the loop that reconnects die
                log.exception("reconnecting to ZooKeeper failed")
            self._poke()
            await anyio.sleep(delay)
            delay = min(delay * 2, 1.0, max(0.05, self.requested_timeout / 4))

    async def _reconnect(self) -> bool:
        """One round over the servers; True once connected (to the session, or a new one)."""
        if self.conn is not None:
            self._drop(self.conn)
        if (
            self.session_id
            and self._down_since is not None
            and time.monotonic() - self._down_since > self.timeout
        ):
            # No server heard from us for a whole session timeout: the session is gone.
            self._session_ended("no server could be reached within the session timeout")
            if self.expired:
                return False
        for host, port in random.sample(self.hosts, len(self.hosts)):
            conn = _Connection(host, port, watch_handler=self.event_dispatch, read_timeout=self.read_timeout)
            conn.tls, conn.server_name = self.access.tls, self.access.server_name
            self._conns.add(conn)
            try:
                with anyio.fail_after(max(1.0, self.requested_timeout / (3 * len(self.hosts)))):
                    await conn.connect()
                    reply = await conn.send_connect(
                        protocol.ConnectRequest(
                            protocol_version=0,
                            last_seen_zxid=self.last_zxid or 0,
                            timeout=int(self.requested_timeout * 1000),
                            session_id=self.session_id or 0,
                            password=self.password,
                            read_only=False,
                        )
                    )
                    if reply is None:
                        raise ConnectionError(f"{host}:{port} closed the connection during the handshake")
                    if reply[1].session_id != 0 and self.access.user is not None:
                        # Before the session is used: every request on it carries the user.
                        await conn.authenticate(self.access.user, self.access.password or "")
            except Exception as failure:
                error: Exception = failure
                refusal = certificate_refusal(error) if self.access.tls is not None else None
                if refusal is not None:  # the server's TLS alert: it refused our certificate
                    error = PermissionDenied(
                        f"ZooKeeper at {host}:{port} refused the TLS connection: {refusal} "
                        f"(as {self.access.certificate})"
                    )
                    error.__cause__ = failure
                log.log(
                    logging.WARNING if isinstance(error, PermissionDenied) else logging.DEBUG,
                    "connecting to %s:%s failed: %r",
                    host,
                    port,
                    error,
                )
                self._last_error = error
                self._drop(conn)
                continue
            response = reply[1]
            if response.session_id == 0:
                self._drop(conn)
                self._session_ended("the server no longer knows the session")
                return False
            self.session_id, self.password = response.session_id, response.password
            self.timeout = response.timeout / 1000
            self.conn = conn
            conn.reading = self._spawn(conn.read_loop, functools.partial(self._read_loop_ended, conn))
            self._failed_rounds, self._last_error = 0, None
            log.debug("connected to %s:%s, session %s", host, port, self.session_hex)
            self.state.transition_to(CONNECTED)
            self.set_heartbeat()
            try:
                await self.set_existing_watches()
            except Exception as error:  # the connection broke again: the next round repeats this
                log.debug("re-setting watches failed: %r", error)
            return True
        self._failed_rounds += 1
        return False

    def _session_ended(self, why: str) -> None:
        log.info("ZooKeeper session %s ended: %s", self.session_hex, why)
        if self.renew:
            self.session_id, self.password, self.last_zxid = None, b"\x00", None
        else:
            self.expired = True
        self.state.transition_to(LOST)

    def _drop(self, conn: Any) -> None:
        """Close ``conn`` now: fail its pending requests, stop its read loop, close its socket."""
        self._conns.discard(conn)
        conn.closing = True
        # Fail the pending requests, but leave them where the read loop looks for them: it may
        # still read a reply already buffered, and a missing entry would crash it.
        pending = [*conn.pending.values(), *itertools.chain.from_iterable(conn.pending_specials.values())]
        for future in pending:
            if not future.done():
                future.set_exception(exc.ConnectError(conn.host, conn.port))
        if conn.reading is not None:
            conn.reading.cancel()
        if conn.writer is not None:
            if conn.tls is not None:
                # Now: a TLS close would wait (up to 30 s) for the server's close_notify,
                # keeping the socket open after the client is gone.
                conn.writer.transport.abort()
            else:
                conn.writer.close()
        if conn is self.conn and not self.closing:
            self.state.transition_to(SUSPENDED)

    def _read_loop_ended(self, conn: Any) -> None:
        if not conn.closing and not self.closing:
            log.info("ZooKeeper connection to %s:%s closed", conn.host, conn.port)
            self._drop(conn)

    def event_dispatch(self, event: Any) -> None:
        """Watch events go to the callbacks of their path; session events end or suspend it."""
        if event.type:
            for callback in list(self.watch_callbacks.get((event.type, event.path), ())):
                callback(event.path)
        elif event.state in (protocol.WatchEvent.SESSION_EXPIRED, protocol.WatchEvent.AUTH_FAILED):
            self._session_ended(f"session event {event.state}")
            if self.conn is not None:
                self._drop(self.conn)
        elif event.state == protocol.WatchEvent.DISCONNECTED and self.conn is not None:
            self._drop(self.conn)

    def on_events(self, path: str, types: Iterable[int], callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` on watch events of ``types`` for ``path``; returns the remover."""
        kinds = tuple(types)

        def fire(_path: str) -> None:
            callback()

        for kind in kinds:
            self.add_watch_callback(kind, path, fire)

        def remove() -> None:
            for kind in kinds:
                if fire in self.watch_callbacks.get((kind, path), ()):
                    self.remove_watch_callback(kind, path, fire)

        return remove

    # -- requests ------------------------------------------------------------------------

    async def send(self, request: Any) -> Any:
        """Send ``request`` once and return its response (replaces aiozk's retrying send).

        Waits for the connection first. :class:`~coordination.Unavailable` means the reply
        was lost with the connection: the request may or may not have been applied.
        """
        await self.wait_connected()
        return (await self._send_now(request))[0]

    async def send_all(self, *requests: Any) -> list[Any]:
        """Send ``requests`` together (pipelined, applied in order); their responses.

        The first error raises, as from :meth:`send`.
        """
        await self.wait_connected()
        return await self._send_now(*requests)

    def _write(self, requests: Iterable[Any]) -> tuple[Any, list[asyncio.Future[Any]]]:
        """Send ``requests`` on the connection; their futures (errors raised as public ones)."""
        conn = self.conn
        futures = []
        try:
            for request in requests:
                self.xid = self.xid % 0x7FFFFFFF + 1
                futures.append(conn.send(request, xid=self.xid))
        except Exception as error:
            raise_public(error)
        return conn, futures

    def _refused(self, request: Any) -> str:
        """``request`` as a refusal names it: the operation, its znode, and the user."""
        operation = type(request).__name__.removesuffix("Request").rstrip("2")
        path = getattr(request, "path", None)
        return f"{operation}{f' of {path!r}' if path else ''} for {self.access.who}"

    def _responses(self, conn: Any, results: list[Any], requests: Sequence[Any] = ()) -> list[Any]:
        """The responses in ``results``; the first error raises, a lost connection as Unavailable."""
        for result in results:
            if isinstance(result, exc.ConnectError):
                if conn is self.conn and not conn.closing:
                    self._drop(conn)  # nothing more goes out on it: later requests wait for the next one
                lost = Unavailable(f"the connection to ZooKeeper was lost before the reply ({result})")
                raise lost from result
        for index, result in enumerate(results):
            if isinstance(result, BaseException):
                raise_public(result, self._refused(requests[index]) if index < len(requests) else None)
        zxid = max(zxid or 0 for zxid, _ in results)
        if zxid > (self.last_zxid or 0):
            self.last_zxid = zxid
        self.set_heartbeat()
        return [response for _, response in results]

    async def _send_now(self, *requests: Any) -> list[Any]:
        conn, futures = self._write(requests)
        if len(futures) == 1:
            try:
                results: list[Any] = [await futures[0]]
            except Exception as error:
                results = [error]
        else:
            results = await asyncio.gather(*futures, return_exceptions=True)
        return self._responses(conn, results, requests)

    async def probe(self, timeout: float) -> None:
        """One round trip that renews the session.

        A connection on which not a single frame arrives for ``timeout`` is stalled: drop it
        (the client reconnects, to another server if there is one) and raise Unavailable.
        One that is only slow (replies to earlier requests still arrive) is waited for.
        """
        await self.wait_connected()
        conn, (future,) = self._write([protocol.ExistsRequest(path="/", watch=False)])
        try:
            while not future.done():
                frames = conn.frames
                await asyncio.wait([future], timeout=timeout)
                if not future.done() and conn.frames == frames and conn is self.conn and not conn.closing:
                    log.info("nothing from %s:%s for %.2fs: reconnecting", conn.host, conn.port, timeout)
                    self._drop(conn)  # fails the request with ConnectError
        finally:
            future.cancel()  # a no-op once done; the caller gave up otherwise
        self._responses(conn, [future.exception() or future.result()])

    async def _read(self, request: Any, sync: bool) -> Any:
        """``request``, after a sync if asked: the read then sees every write committed before it."""
        if not sync:
            return await self.send(request)
        return (await self.send_all(protocol.SyncRequest(path="/"), request))[1]

    async def guarded(self, guard: str | None, *requests: Any) -> list[Any]:
        """Send ``requests``; with ``guard`` (a node's path) as one ``multi`` of a check that
        the node exists, then ``requests``: applied only if it does, else NotHeld (nothing
        applied). Their responses; a request's own error raises as from :meth:`send`."""
        if guard is None:
            return await self.send_all(*requests)
        multi = protocol.TransactionRequest()
        multi.add(protocol.CheckVersionRequest(path=guard, version=-1))
        for request in requests:
            multi.add(request)
        reply = await self.send(multi)
        check, *results = reply.responses
        if isinstance(check, NoNode):
            raise NotHeld(f"the node {guard!r} is gone")
        if isinstance(check, BaseException) and not isinstance(check, exc.RolledBack):
            # the check itself failed otherwise (the others say so too)
            raise_public(check, self._refused(multi.requests[0]))
        for request, response in zip(requests, results, strict=True):  # the check passed
            if isinstance(response, BaseException) and not isinstance(response, exc.RolledBack):
                raise_public(response, self._refused(request))
        return list(results)

    async def create(
        self,
        path: str,
        data: bytes | None,
        *,
        ephemeral: bool = False,
        sequential: bool = False,
        guard: str | None = None,
    ) -> tuple[str, Stat]:
        request = protocol.Create2Request(path=path, data=data, acl=list(self.access.acl))
        request.set_flags(ephemeral=ephemeral, sequential=sequential)
        if guard is None:
            response = await self.send(request)
            return str(response.path), _stat(response.stat)
        # In a multi the server answers a create without its stat: a write of the same data
        # in the same transaction (one zxid) gives it.
        assert not sequential, "a guarded create names its node"
        created, written = await self.guarded(
            guard, request, protocol.SetDataRequest(path=path, data=data, version=0)
        )
        return str(created.path), _stat(written.stat)

    async def create_and_list(
        self, path: str, data: bytes | None, *, ephemeral: bool, sequential: bool, make_parents: bool
    ) -> tuple[str, Stat, list[str]]:
        """Create ``path`` and list its parent's children, in one round trip: the requests are
        pipelined, so the listing is taken just after the create. With ``make_parents`` the
        missing ancestors are created first, in the same round trip."""
        parent = parent_of(path)
        ancestors = []
        if make_parents:
            parts = parent.strip("/").split("/")
            ancestors = [
                protocol.Create2Request(path="/" + "/".join(parts[: i + 1]), acl=list(self.access.acl))
                for i in range(len(parts))
            ]
            for request in ancestors:
                request.set_flags()
        create = protocol.Create2Request(path=path, data=data, acl=list(self.access.acl))
        create.set_flags(ephemeral=ephemeral, sequential=sequential)
        await self.wait_connected()
        listing = protocol.GetChildren2Request(path=parent, watch=False)
        conn, futures = self._write([*ancestors, create, listing])
        results: list[Any] = await asyncio.gather(*futures, return_exceptions=True)
        made = [(None, None) if isinstance(r, NodeExists) else r for r in results[: len(ancestors)]]
        requests = [*ancestors, create, listing]
        created, listed = self._responses(conn, [*made, *results[len(ancestors) :]], requests)[
            len(ancestors) :
        ]
        return str(created.path), _stat(created.stat), [str(child) for child in listed.children]

    async def ensure_path(self, path: str) -> None:
        """Create ``path`` and its missing ancestors as empty persistent znodes (null data)."""
        if path == "/":
            return
        try:
            await self.create(path, None)
        except NodeExists:
            return
        except NoNode:
            await self.ensure_path(parent_of(path))
            with contextlib.suppress(NodeExists):
                await self.create(path, None)

    async def get(self, path: str, *, watch: bool = False, sync: bool = False) -> tuple[bytes | None, Stat]:
        response = await self._read(protocol.GetDataRequest(path=path, watch=watch), sync)
        data = response.data
        return (None if data is None else bytes(data)), _stat(response.stat)

    async def exists(self, path: str, *, watch: bool = False) -> Stat | None:
        try:
            response = await self.send(protocol.ExistsRequest(path=path, watch=watch))
        except NoNode:
            return None
        return _stat(response.stat)

    async def children(self, path: str, *, watch: bool = False, sync: bool = False) -> list[str]:
        response = await self._read(protocol.GetChildren2Request(path=path, watch=watch), sync)
        return [str(child) for child in response.children]

    async def set_data(
        self, path: str, data: bytes | None, version: int = -1, *, guard: str | None = None
    ) -> Stat:
        (response,) = await self.guarded(
            guard, protocol.SetDataRequest(path=path, data=data, version=version)
        )
        return _stat(response.stat)

    async def delete(self, path: str, version: int = -1, *, guard: str | None = None) -> None:
        await self.guarded(guard, protocol.DeleteRequest(path=path, version=version))


async def _attach_and_close(
    host: str, port: int, session_id: int, password: bytes, timeout: float, access: Access
) -> None:
    """Attach to session ``session_id`` on a new connection (with the client's TLS) and close
    it, in one write."""

    def frame(payload: bytes) -> bytes:
        return struct.pack("!i", len(payload)) + payload

    attach = protocol.ConnectRequest(
        protocol_version=0,
        last_seen_zxid=0,
        timeout=10_000,
        session_id=session_id,
        password=password,
        read_only=False,
    )
    close = protocol.CloseRequest()
    stream: anyio.abc.ByteStream
    if access.tls is None:
        stream = await anyio.connect_tcp(host, port)
    else:
        name = access.server_name or host
        stream = await anyio.connect_tcp(host, port, ssl_context=access.tls, tls_hostname=name)
    async with stream:
        await stream.send(frame(attach.serialize()) + frame(close.serialize(1)))
        with anyio.move_on_after(timeout):  # the server hangs up once the session is closed
            try:
                while await stream.receive():
                    pass
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
