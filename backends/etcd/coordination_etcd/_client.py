"""A narrow, typed layer over aetcd's generated gRPC stubs (etcd API v3).

aetcd's high-level ``Client`` cannot do what the etcd recipes need: it has no TLS, its
``refresh_lease`` opens a new keepalive stream for every renewal, its ranges cannot sort,
limit or bound by create revision (inside a transaction or out), and its watcher takes a
cancelled watch creation for a success. So this module drives the stubs and messages of
``aetcd.rpc`` directly: one channel, unary calls with a deadline, one long-lived keepalive
stream per lease, and one gRPC stream per watch. No background task is started here.

Every gRPC error leaves this module as a :mod:`coordination` error, the original kept as
``__cause__``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from typing import Any, Literal, Protocol, TypeVar

import anyio
import grpc  # type: ignore[import-untyped]
from aetcd import rpc  # type: ignore[import-untyped]

from coordination.abc import map_errors
from coordination.exceptions import (
    CoordinationError,
    OperationTimeout,
    PermissionDenied,
    SessionExpired,
    Unavailable,
)

__all__ = [
    "PUT",
    "DELETE",
    "Compacted",
    "EtcdClient",
    "Event",
    "KeepAliveStream",
    "KeyValue",
    "RangeResponse",
    "TxnResponse",
    "WatchStream",
    "compare_create",
    "compare_mod",
    "delete_op",
    "open_channel",
    "prefix_end",
    "put_op",
    "range_op",
    "range_request",
    "rpc_errors",
]

Message = Any
"""A protobuf message of ``aetcd.rpc`` (the generated code carries no types)."""

T = TypeVar("T")

PUT = 0
DELETE = 1

_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    # Find a dead connection that never closed (a partition, a frozen peer) between requests.
    # etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time).
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # Reconnect quickly once a member is back, instead of backing off for up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


# -- the parts of etcd's messages this package reads ---------------------------------------


class KeyValue(Protocol):
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


class Header(Protocol):
    revision: int


class RangeResponse(Protocol):
    header: Header
    kvs: Sequence[KeyValue]
    more: bool


class _DeleteRangeResponse(Protocol):
    deleted: int


class _ResponseOp(Protocol):
    response_range: RangeResponse
    response_delete_range: _DeleteRangeResponse


class TxnResponse(Protocol):
    header: Header
    succeeded: bool
    responses: Sequence[_ResponseOp]


class Event(Protocol):
    type: int
    kv: KeyValue


# -- errors --------------------------------------------------------------------------------


class Compacted(Exception):
    """A watch's start revision was compacted away: re-read, then watch from that read on."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revisions below {compact_revision} were compacted")
        self.compact_revision = compact_revision


def _public_error(exc: Any, what: str, user: str | None) -> CoordinationError:
    code = exc.code()
    details = exc.details() or getattr(code, "name", str(code))
    message = f"etcd {what}: {details}"
    # etcd answers a wrong password with INVALID_ARGUMENT "authentication failed", a missing
    # or stale token with UNAUTHENTICATED, and a role without the key with PERMISSION_DENIED.
    if (
        code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
        or "authentication failed" in details
    ):
        who = f"user {user!r}" if user is not None else "no user (the 'user' option is not set)"
        return PermissionDenied(f"{message} (as {who})")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return OperationTimeout(message)
    if code == grpc.StatusCode.NOT_FOUND and "lease not found" in details:
        return SessionExpired(message)
    return Unavailable(message)


@contextlib.contextmanager
def rpc_errors(what: str, user: str | None = None) -> Iterator[None]:
    """Raise gRPC and socket errors as coordination errors (mostly :class:`Unavailable`);
    a refusal names the ``user`` the request was sent as."""
    with map_errors(
        {
            grpc.RpcError: Unavailable,
            grpc.aio.BaseError: Unavailable,
            asyncio.InvalidStateError: Unavailable,  # a write to a stream that already ended
            OSError: Unavailable,
        }
    ):
        try:
            yield
        except grpc.aio.AioRpcError as exc:
            raise _public_error(exc, what, user) from exc


async def grpc_await(awaitable: Awaitable[T]) -> T:
    """Await a gRPC call or stream operation so that anyio's cancellation stays anyio's.

    When a cancellation reaches a gRPC call, grpc.aio swallows it, cancels the RPC and
    raises a new, bare ``CancelledError``, which anyio's cancel scopes do not recognise as
    theirs (``move_on_after`` would let it escape). A checkpoint lets the cancelling scope
    deliver its own cancellation instead; a cancellation from outside anyio stays as it is.
    """
    try:
        return await awaitable
    except asyncio.CancelledError:
        await anyio.lowlevel.checkpoint()
        task = asyncio.current_task()
        if task is not None and not task.cancelling():
            # Nobody cancelled this task: gRPC cancelled the call itself, as it does to every
            # call on a channel being closed (see EtcdClient.replace_channel).
            raise Unavailable("the etcd call was cancelled with its channel") from None
        raise


# -- requests ------------------------------------------------------------------------------


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def range_request(
    key: bytes,
    *,
    prefix: bool = False,
    order: Literal["first", "last"] | None = None,
    limit: int = 0,
    keys_only: bool = False,
    min_create_revision: int = 0,
    max_create_revision: int = 0,
) -> Message:
    """A range over ``key`` (or every key under it), optionally in create-revision order."""
    request = rpc.RangeRequest(
        key=key,
        limit=limit,
        keys_only=keys_only,
        min_create_revision=min_create_revision,
        max_create_revision=max_create_revision,
    )
    if prefix:
        request.range_end = prefix_end(key)
    if order is not None:
        request.sort_target = rpc.RangeRequest.CREATE
        request.sort_order = rpc.RangeRequest.ASCEND if order == "first" else rpc.RangeRequest.DESCEND
    return request


def range_op(request: Message) -> Message:
    return rpc.RequestOp(request_range=request)


def put_op(key: bytes, value: bytes, lease: int = 0) -> Message:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def delete_op(key: bytes) -> Message:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))


def compare_create(key: bytes, revision: int) -> Message:
    """True if ``key``'s create revision is ``revision`` (0: the key does not exist)."""
    return rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=key, create_revision=revision)


def compare_lease(key: bytes, lease: int) -> Message:
    """True if ``key`` is bound to ``lease``."""
    return rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.LEASE, key=key, lease=lease)


def members_prefix(group: str) -> bytes:
    """Where the members of ``group`` are: ``<group>@members/<id>``. ``@`` is in no name, so
    the keys are under no lock's or election's prefix (``<name>/``), where etcd's own
    recipes would count them as contenders, and no name's key is under this prefix."""
    return group.encode() + b"@members/"


def compare_mod(key: bytes, revision: int) -> Message:
    """True if ``key`` was last modified at ``revision``."""
    return rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, key=key, mod_revision=revision)


def compare_version(key: bytes, expected: int | None) -> Message:
    """A config value's compare-and-set condition: ``key`` was last modified at revision
    ``expected`` (its version), or, for ``None``, does not exist."""
    return compare_create(key, 0) if expected is None else compare_mod(key, expected)


# -- the client ----------------------------------------------------------------------------


def open_channel(target: str, credentials: Any | None, server_name: str | None) -> Any:
    """A gRPC channel to ``target`` (TLS when ``credentials`` are given)."""
    options: list[tuple[str, Any]] = list(_CHANNEL_OPTIONS)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)


class _Calls:
    """The calls and streams under way on a client's channel, to abandon when it is replaced.

    A member that hangs (a partition, a frozen host) leaves its connection open: gRPC would
    wait for its own keepalive to time out before failing the calls on it. Abandoned calls
    raise :class:`~coordination.Unavailable` at once and are retried on the new channel, and
    so does every later call of a stream that began on the old one.

    Only reads and streams are tracked: a write abandoned on a member that hangs could still
    be applied there later, after the clean-up that its failure leads to. Writes run on the
    old channel until their own deadline.
    """

    def __init__(self) -> None:
        self._scopes: set[anyio.CancelScope] = set()
        self.abandoned = False

    @contextlib.contextmanager
    def track(self, what: str) -> Iterator[None]:
        if self.abandoned:
            raise Unavailable(f"etcd {what}: the stream began on a connection since abandoned")
        scope = anyio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                yield
        finally:
            self._scopes.discard(scope)
        if scope.cancelled_caught:
            raise Unavailable(f"etcd {what}: abandoned with the connection to a member that did not answer")

    def abandon(self) -> None:
        self.abandoned = True
        scopes, self._scopes = self._scopes, set()
        for scope in scopes:
            scope.cancel()


class KeepAliveStream:
    """One ``LeaseKeepAlive`` stream: a renewal is one request and its reply on it.

    etcd checks the auth token when a stream starts (3.5.35 also counts a renewal as a use
    of it): a stream refused for an expired token is opened again with a fresh one, once.
    """

    def __init__(self, client: EtcdClient) -> None:
        self._client = client
        self._calls = client._calls
        self._call = client._lease.LeaseKeepAlive(metadata=client._metadata)

    async def round_trip(self, lease_id: int) -> int:
        """Renew ``lease_id`` once; return the TTL etcd granted (0 or less: the lease is gone)."""
        reply = await self._renew(lease_id)
        if reply is None:  # the token expired
            self._call.cancel()
            await self._client.authenticate()
            self._call = self._client._lease.LeaseKeepAlive(metadata=self._client._metadata)
            reply = await self._renew(lease_id)
            if reply is None:
                raise Unavailable("etcd keepalive: the auth token was refused right after login")
        return int(reply.TTL)

    async def _renew(self, lease_id: int) -> Any:
        """The reply to one renewal, or None when etcd refused the stream's token."""
        with self._calls.track("keepalive"), rpc_errors("keepalive", self._client.user):
            try:
                await grpc_await(self._call.write(rpc.LeaseKeepAliveRequest(ID=lease_id)))
                reply = await grpc_await(self._call.read())
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAUTHENTICATED or not self._client.has_user:
                    raise
                return None
        if reply is grpc.aio.EOF:
            raise Unavailable("etcd closed the keepalive stream")
        return reply

    def close(self) -> None:
        self._call.cancel()


class WatchStream:
    """The events of one created watch, a batch (one revision or more) at a time.

    ``revision`` is etcd's revision when it created the watch.
    """

    def __init__(self, call: Any, revision: int, calls: _Calls) -> None:
        self._call = call
        self.revision = revision
        self._calls = calls

    def __aiter__(self) -> WatchStream:
        return self

    async def __anext__(self) -> Sequence[Event]:
        while True:
            with self._calls.track("watching"), rpc_errors("watching"):
                reply = await grpc_await(self._call.read())
            if reply is grpc.aio.EOF:
                raise Unavailable("etcd closed the watch stream")
            if reply.compact_revision:
                raise Compacted(reply.compact_revision)
            if reply.canceled:
                raise Unavailable(f"etcd cancelled the watch: {reply.cancel_reason or 'no reason given'}")
            if reply.events:
                events: Sequence[Event] = reply.events
                return events


class EtcdClient:
    """The requests the etcd backend makes, over one channel, typed and error-mapped.

    Unary calls carry the operation ``timeout`` as their gRPC deadline. With a user, the
    auth token is fetched by :meth:`authenticate` and fetched again when etcd says it
    expired.
    """

    def __init__(self, channel: Any, *, timeout: float, user: str | None, password: str | None) -> None:
        self._calls = _Calls()
        self._retired: Any = None
        self._use(channel)
        self.timeout = timeout
        self._user = user
        self._password = password
        self._metadata: tuple[tuple[str, str], ...] | None = None

    def _use(self, channel: Any) -> None:
        self._channel = channel
        self._kv = rpc.KVStub(channel)
        self._lease = rpc.LeaseStub(channel)
        self._watch = rpc.WatchStub(channel)
        self._auth = rpc.AuthStub(channel)

    async def replace_channel(self, channel: Any) -> None:
        """Send every request from now on over ``channel`` and abandon the reads and streams
        under way on the old one (they raise Unavailable). The old channel is closed at the
        next replacement (or :meth:`close`): writes still under way on it end at their
        deadline, not earlier."""
        old, calls = self._channel, self._calls
        retired, self._retired = self._retired, old
        self._calls = _Calls()
        self._use(channel)
        calls.abandon()
        if retired is not None:
            with anyio.CancelScope(shield=True):
                await retired.close()

    async def close(self) -> None:
        """Close the channel, ending every call and stream on it."""
        retired, self._retired = self._retired, None
        if retired is not None:
            await retired.close()
        await self._channel.close()

    @property
    def has_user(self) -> bool:
        """Whether requests carry a user's auth token."""
        return self._user is not None

    @property
    def user(self) -> str | None:
        """The user requests are sent as (a name, never the password)."""
        return self._user

    async def authenticate(self) -> None:
        """Get an auth token for the user (nothing to do without one)."""
        if self._user is None:
            return
        with self._calls.track("authentication"), rpc_errors("authentication", self._user):
            request = rpc.AuthenticateRequest(name=self._user, password=self._password or "")
            reply = await grpc_await(self._auth.Authenticate(request, timeout=self.timeout))
        self._metadata = (("token", str(reply.token)),)

    async def _unary(
        self, method: Any, request: Message, what: str, *, write: bool = True, wait_for_ready: bool = False
    ) -> Any:
        """One unary call with the operation deadline; a read (``write=False``) is abandoned
        with its channel (see :class:`_Calls`), a write is not."""
        kw = {"timeout": self.timeout, "wait_for_ready": wait_for_ready}
        tracked = contextlib.nullcontext() if write else self._calls.track(what)
        with tracked, rpc_errors(what, self._user):
            try:
                return await grpc_await(method(request, metadata=self._metadata, **kw))
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAUTHENTICATED or self._user is None:
                    raise
            await self.authenticate()  # the token expired: fetch a new one and retry once
            return await grpc_await(method(request, metadata=self._metadata, **kw))

    # -- key-value -------------------------------------------------------------------------

    async def range(self, request: Message, *, wait_for_ready: bool = False) -> RangeResponse:
        """A read; with ``wait_for_ready`` it waits (up to the deadline) for a connection
        instead of failing at once while there is none (also :meth:`txn`): for clean-ups."""
        reply: RangeResponse = await self._unary(
            self._kv.Range, request, "range", write=False, wait_for_ready=wait_for_ready
        )
        return reply

    async def txn(
        self,
        compare: Sequence[Message],
        success: Sequence[Message],
        failure: Sequence[Message] = (),
        *,
        wait_for_ready: bool = False,
    ) -> TxnResponse:
        request = rpc.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))
        reply: TxnResponse = await self._unary(
            self._kv.Txn, request, "transaction", wait_for_ready=wait_for_ready
        )
        return reply

    async def put(self, key: bytes, value: bytes) -> int:
        """Write ``key``; return the revision of the write."""
        reply = await self._unary(self._kv.Put, rpc.PutRequest(key=key, value=value), "put")
        return int(reply.header.revision)

    async def delete(self, key: bytes) -> int:
        """Delete ``key``; return how many keys were deleted (0 or 1)."""
        request = rpc.DeleteRangeRequest(key=key)
        reply = await self._unary(self._kv.DeleteRange, request, "delete")
        return int(reply.deleted)

    # -- leases ----------------------------------------------------------------------------

    async def grant(self, ttl: int) -> tuple[int, int]:
        """Grant a lease of (at least) ``ttl`` seconds; return its id and the granted TTL."""
        reply = await self._unary(self._lease.LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl), "lease grant")
        if reply.error:
            raise Unavailable(f"etcd lease grant: {reply.error}")
        return int(reply.ID), int(reply.TTL)

    async def revoke(self, lease_id: int) -> None:
        """Revoke a lease, deleting every key bound to it (SessionExpired if it is gone)."""
        await self._unary(self._lease.LeaseRevoke, rpc.LeaseRevokeRequest(ID=lease_id), "lease revoke")

    def keepalive_stream(self) -> KeepAliveStream:
        """Open a ``LeaseKeepAlive`` stream (it connects on first use)."""
        return KeepAliveStream(self)

    # -- watches ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def watch(
        self, key: bytes, *, start_revision: int, prefix: bool = False
    ) -> AsyncIterator[WatchStream]:
        """Watch ``key`` (or every key under it) from ``start_revision`` on, inclusive
        (0: from the next revision).

        Raises :class:`Compacted` (here or while iterating) when ``start_revision`` is no
        longer in etcd's history, and :class:`~coordination.Unavailable` when the stream
        breaks or etcd refuses the watch. The stream ends when the block is left.
        """
        create = rpc.WatchCreateRequest(key=key, start_revision=start_revision)
        if prefix:
            create.range_end = prefix_end(key)
        call, calls = self._watch.Watch(metadata=self._metadata), self._calls
        try:
            with (
                anyio.move_on_after(self.timeout) as scope,
                calls.track("watch"),
                rpc_errors("watch", self._user),
            ):
                await grpc_await(call.write(rpc.WatchRequest(create_request=create)))
                reply = await grpc_await(call.read())
            if scope.cancelled_caught:
                raise OperationTimeout(f"etcd did not create a watch within {self.timeout:g}s")
            if reply is grpc.aio.EOF:
                raise Unavailable("etcd closed the watch stream")
            if reply.compact_revision:
                raise Compacted(reply.compact_revision)
            if reply.canceled or not reply.created:
                reason = reply.cancel_reason or "no reason given"
                if "permission denied" in reason:
                    raise PermissionDenied(
                        f"etcd refused the watch of {key!r}: {reason} (as user {self._user!r})"
                    )
                if self._user is not None and "auth" in reason:
                    await self.authenticate()  # the next attempt carries a fresh token
                raise Unavailable(f"etcd refused the watch: {reason}")
            yield WatchStream(call, int(reply.header.revision), calls)
        finally:
            call.cancel()
