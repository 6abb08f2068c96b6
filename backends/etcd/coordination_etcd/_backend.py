"""The etcd backend: sessions are leases; locks and elections follow etcd's concurrency recipe."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import socket
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

import anyio
import grpc  # type: ignore[import-untyped]

from coordination import Capability, Leader, Versioned
from coordination.abc import (
    COMMON_OPTIONS,
    TLS_OPTIONS,
    Backend,
    BackendSession,
    Kind,
    Option,
    ParsedURL,
    SessionMonitor,
)
from coordination.exceptions import (
    CoordinationError,
    InvalidName,
    InvalidURL,
    NotHeld,
    OperationTimeout,
    SessionExpired,
    Unavailable,
)

from ._client import (
    DELETE,
    PUT,
    Compacted,
    EtcdClient,
    KeepAliveStream,
    KeyValue,
    compare_create,
    compare_mod,
    delete_op,
    open_channel,
    put_op,
    range_op,
    range_request,
)

__all__ = ["EtcdBackend", "EtcdSession"]

log = logging.getLogger("coordination.etcd")

DEFAULT_PORT = 2379
_PAGE = 64  # keys per page when a lock prefix holds keys that are not contenders


ETCD_OPTIONS: Mapping[str, Option] = {
    **COMMON_OPTIONS,
    "user": Option(str, None, "etcd user name (also the URL's user part, or $ETCDCTL_USER)."),
    "password": Option(str, None, "Password of ``user`` (also the URL, or $ETCDCTL_PASSWORD).", secret=True),
    **{name: TLS_OPTIONS[name] for name in ("tls", "ca_file", "cert_file", "key_file", "server_name")},
    # The names of etcdctl's flags, which this backend used before the TLS names were one set.
    "cacert": Option(str, None, "Old name of ``ca_file``.", renamed_to="ca_file"),
    "cert": Option(str, None, "Old name of ``cert_file``.", renamed_to="cert_file"),
    "key": Option(str, None, "Old name of ``key_file``.", renamed_to="key_file"),
}


def _is_contender(kv: KeyValue, prefix: bytes) -> bool:
    """Whether ``kv`` is a contender of the queue under ``prefix``: ``<prefix><lease hex>``,
    bound to a lease.

    Other keys under the prefix never block the queue: deeper ones (the lock
    ``jobs/nightly`` under the lock ``jobs``) and keys without a lease (a config value).
    """
    return kv.lease != 0 and b"/" not in kv.key[len(prefix) :]


class _Key:
    """This session's key under one prefix, ``<prefix><lease id in hex>``, and who uses it.

    etcd's recipe gives a session one key per prefix, and a lock and an election of the same
    name are one queue there. So, as etcd's ``Campaign`` does, a lock and an election of one
    name in this session share the key. Two contenders of the same kind never share one
    incarnation of it: the later one waits until the key is deleted, then writes it anew,
    so its token (the create revision) is higher.
    """

    __slots__ = ("closing", "guard", "key", "kinds", "prefix", "rev", "users", "waiting")

    def __init__(self, prefix: bytes, key: bytes) -> None:
        self.prefix = prefix
        self.key = key
        self.rev = 0
        """Create revision of the key as written now (the fencing token); 0: not written."""
        self.users: set[_Contender] = set()
        """Contenders on this incarnation of the key (at most one per kind)."""
        self.kinds: set[Kind] = set()
        """Kinds that have used this incarnation (a kind never uses one twice)."""
        self.waiting: list[_Contender] = []
        """Contenders waiting for the next incarnation, in arrival order."""
        self.closing = False
        """The last user is deleting the key: nobody may join."""
        self.guard = anyio.Lock(fast_acquire=True)  # no extra event-loop round when it is free
        """Held while the key is being written."""


class _Contender:
    """A lock or election contender of this session: a user of one :class:`_Key`."""

    __slots__ = ("kind", "owner", "slot", "turn", "value", "written")

    def __init__(self, kind: Kind, slot: _Key, value: bytes) -> None:
        self.kind = kind
        self.slot = slot
        self.value = value
        self.turn = anyio.Event()
        """Set once this contender uses the key's current incarnation."""
        self.written = False
        """The key exists for this contender (written by it or by the other kind)."""
        self.owner: bool | None = None
        """What this contender's create transaction saw: first, behind another, or unknown."""


class EtcdSession(BackendSession[_Contender]):
    """One etcd lease, kept alive over one ``LeaseKeepAlive`` stream.

    Every lock, election and wait of the session is a key bound to the lease, so revoking
    the lease (closing, expiry) deletes them all at once.
    """

    def __init__(self, backend: EtcdBackend, client: EtcdClient, lease_id: int, ttl: int) -> None:
        self._backend = backend  # counts its waiters' wake-ups
        self._client = client
        self.lease_id = lease_id
        self.id = f"{lease_id:x}"
        self.ttl = float(ttl)
        self.keepalive_interval = self.ttl / 3
        self._stream: KeepAliveStream | None = None
        self._keys: dict[bytes, _Key] = {}

    async def keepalive(self) -> float:
        stream = self._stream
        if stream is None:
            stream = self._stream = self._client.keepalive_stream()
        try:
            ttl = await stream.round_trip(self.lease_id)
        except BaseException:
            # A reply still in flight would answer the next renewal, whose send time is later:
            # never read it; renew on a new stream next time.
            self._stream = None
            stream.close()
            raise
        if ttl <= 0:
            raise SessionExpired(f"etcd lease {self.id} has expired")
        return float(ttl)

    async def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        with contextlib.suppress(SessionExpired):
            await self._client.revoke(self.lease_id)

    # -- the contender queue ---------------------------------------------------------------

    async def enqueue(self, kind: Kind, name: str, value: bytes) -> _Contender:
        prefix = name.encode() + b"/"
        key = prefix + self.id.encode()
        slot = self._keys.get(key)
        if slot is None:
            slot = self._keys[key] = _Key(prefix, key)
        c = _Contender(kind, slot, value)
        if slot.closing or kind in slot.kinds:
            slot.waiting.append(c)
            return c
        self._use(c)
        try:
            await self._write(c)
        except BaseException:
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(self._client.timeout),
                contextlib.suppress(CoordinationError),
            ):
                await self.withdraw(c)
            self._leave(c)  # if that failed, the key is left to the lease (or to its next write)
            raise
        return c

    def _use(self, c: _Contender) -> None:
        c.slot.users.add(c)
        c.slot.kinds.add(c.kind)
        c.turn.set()

    async def _write(self, c: _Contender) -> None:
        """Make the key exist for ``c``: write it (etcd's ``tryAcquire``), or join it.

        Writing is one transaction: if the key's create revision is 0 put it bound to the
        lease, else get it; either way get the first key under the prefix by create revision.
        """
        slot = c.slot
        async with slot.guard:
            if slot.rev:
                if c.kind == "election":  # the leader value; a lock joining keeps it
                    await self._put_value(slot, c.value)
                c.written = True
                return
            first = range_op(range_request(slot.prefix, prefix=True, order="first", limit=1, keys_only=True))
            try:
                while True:
                    reply = await self._client.txn(
                        [compare_create(slot.key, 0)],
                        [put_op(slot.key, c.value, self.lease_id), first],
                        [range_op(range_request(slot.key, keys_only=True))],
                    )
                    if reply.succeeded:
                        slot.rev = reply.header.revision
                        break
                    # Left over from an attempt whose reply was lost. etcd's recipe would reuse it;
                    # a fresh key keeps tokens strictly increasing for this session too.
                    stale = reply.responses[0].response_range.kvs[0].create_revision
                    await self._client.txn([compare_create(slot.key, stale)], [delete_op(slot.key)])
            except BaseException:
                # The write may have happened even if its reply was lost: remove it.
                slot.rev = 0
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(self._client.timeout),
                    contextlib.suppress(CoordinationError),
                ):
                    await self._client.delete(slot.key, wait_for_ready=True)
                raise
            c.written = True
            heads = reply.responses[1].response_range.kvs
            if heads and _is_contender(heads[0], slot.prefix):
                c.owner = heads[0].create_revision == slot.rev

    async def _put_value(self, slot: _Key, value: bytes) -> bool:
        reply = await self._client.txn(
            [compare_create(slot.key, slot.rev)], [put_op(slot.key, value, self.lease_id)]
        )
        return reply.succeeded

    async def wait_owner(self, contender: _Contender, *, blocking: bool) -> int | None:
        c, slot = contender, contender.slot
        if not c.written:
            if not c.turn.is_set():
                if not blocking:
                    return None
                await c.turn.wait()
            await self._write(c)
        if c.owner is not None:
            owner, c.owner = c.owner, None  # only good right after the create
            if owner:
                return slot.rev
            if not blocking:
                return None
        while True:
            ahead, ahead_rev, revision = await self._ahead(slot)
            if ahead is None:
                return slot.rev
            if not blocking:
                return None
            # Wake only on the deletion of the key just ahead (etcd's waitDeletes). The watch
            # starts now, which keeps it in etcd's synced group (a watch from an older revision
            # waits for etcd's 100 ms catch-up loop); if anything was written since the read,
            # check the key is still the one seen.
            # Each wake-up counts once (Backend.wakeups): a watch response with events, or the
            # re-check finding the key gone as the watch started.
            async with self._client.watch(ahead, start_revision=0) as events:
                if events.revision > revision and not await self._exists(ahead, ahead_rev):
                    self._backend.wakeups += 1
                    continue
                async for batch in events:
                    self._backend.wakeups += 1
                    if any(event.type == DELETE for event in batch):
                        break

    async def _ahead(self, slot: _Key) -> tuple[bytes | None, int, int]:
        """The contender created last before ``slot``'s key (None: it is first), that one's
        create revision, and the revision of the read.

        Raises SessionExpired if the key itself is gone (its lease ended).
        """
        reply = await self._client.txn(
            [],
            [
                range_op(
                    range_request(
                        slot.prefix,
                        prefix=True,
                        order="last",
                        limit=1,
                        keys_only=True,
                        max_create_revision=slot.rev - 1,
                    )
                ),
                range_op(range_request(slot.key, keys_only=True)),
            ],
        )
        own = reply.responses[1].response_range.kvs
        if not own or own[0].create_revision != slot.rev:
            raise SessionExpired(f"the key {slot.key.decode()!r} of etcd lease {self.id} is gone")
        kvs, revision = reply.responses[0].response_range.kvs, reply.header.revision
        kv = kvs[0] if kvs else None
        if kv is not None and not _is_contender(kv, slot.prefix):
            kv, revision = await _edge(self._client, slot.prefix, before=slot.rev, keys_only=True)
        if kv is None:
            return None, 0, revision
        return kv.key, kv.create_revision, revision

    async def _exists(self, key: bytes, create_revision: int) -> bool:
        reply = await self._client.range(range_request(key, keys_only=True))
        return bool(reply.kvs) and reply.kvs[0].create_revision == create_revision

    async def withdraw(self, contender: _Contender) -> None:
        c, slot = contender, contender.slot
        if c in slot.waiting:
            slot.waiting.remove(c)
            return
        if c not in slot.users:
            return
        if slot.rev and len(slot.users) == 1:
            slot.closing = True  # if the delete fails, nobody joins until a retry succeeds
            await self._client.txn([compare_create(slot.key, slot.rev)], [delete_op(slot.key)])
            slot.rev = 0
        self._leave(c)

    def _leave(self, c: _Contender) -> None:
        """Drop ``c`` from its key; once nobody uses the key, the next waiters take turns."""
        slot = c.slot
        if c not in slot.users:
            return
        slot.users.discard(c)
        if not slot.rev:
            slot.kinds.discard(c.kind)
        if slot.users:
            return
        slot.rev, slot.closing = 0, False
        slot.kinds.clear()
        for waiter in list(slot.waiting):
            if waiter.kind not in slot.kinds:
                slot.waiting.remove(waiter)
                self._use(waiter)
        if not slot.users:
            del self._keys[slot.key]

    async def proclaim(self, contender: _Contender, value: bytes) -> None:
        slot = contender.slot
        if contender not in slot.users or not slot.rev or not await self._put_value(slot, value):
            raise NotHeld(f"{slot.key.decode()!r} is no longer in the election")
        contender.value = value


async def _edge(
    client: EtcdClient, prefix: bytes, *, before: int | None = None, keys_only: bool = False
) -> tuple[KeyValue | None, int]:
    """The first contender under ``prefix`` by create revision, or the last one created before
    revision ``before``; and the revision of the read.

    One limit-1 read, as etcd's recipe does; pages on only past keys that are not contenders.
    """
    order: Literal["first", "last"] = "first" if before is None else "last"
    low, high = 0, (0 if before is None else before - 1)
    limit = 1
    while True:
        reply = await client.range(
            range_request(
                prefix,
                prefix=True,
                order=order,
                limit=limit,
                keys_only=keys_only,
                min_create_revision=low,
                max_create_revision=high,
            )
        )
        for kv in reply.kvs:
            if _is_contender(kv, prefix):
                return kv, reply.header.revision
        if not reply.more or not reply.kvs:
            return None, reply.header.revision
        if before is None:
            low = reply.kvs[-1].create_revision + 1
        else:
            high = reply.kvs[-1].create_revision - 1
        limit = _PAGE


class EtcdBackend(Backend):
    """``etcd://host[:port][,host[:port]...][/namespace][?option=value&...]``: etcd v3 over gRPC.

    A session is one etcd lease with one keepalive stream. Locks and elections use the keys
    of etcd's own concurrency recipe (the one ``etcdctl lock`` and ``etcdctl elect`` use):
    a contender is the key ``<namespace>/<name>/<lease id in hex>`` bound to the lease, the
    owner is the key with the lowest create revision, and a waiter watches only the key
    created just before its own. So ``etcdctl lock myapp/jobs/nightly`` and
    ``coord.lock("jobs/nightly")`` on ``etcd://.../myapp`` exclude each other, and
    ``etcdctl elect -l`` shows the leader value. A lock holds the holder identity as value.

    As in etcd, a lock and an election of the same name are one queue: holding the lock
    ``x`` keeps other sessions from leading the election ``x``. One session may hold both
    (they share its key, as etcd's ``Campaign`` reuses a session's key). Keys under the
    prefix that are not ``<lease hex>`` bound to a lease (the lock ``jobs/nightly`` under
    the lock ``jobs``, a config value) are not contenders and never block the queue.

    Fencing tokens are the contender key's create revision; config versions are the key's
    mod revision, and ``compare_and_set`` is a transaction on it. Watches resume from the
    revision after the last one seen, also after a broken stream; if etcd compacted that
    revision away, they read the key again and go on from there.

    The default port is 2379. Several hosts are tried in order (gRPC ``pick_first``); host
    names among several are resolved when connecting.

    =========== ======= ==================================================================
    option      default meaning
    =========== ======= ==================================================================
    ttl         10      lease time to live, seconds (rounded up; etcd may grant more)
    timeout     10      deadline of one etcd request, seconds
    identity            holder identity written as the lock value (default ``hostname:pid``)
    user                etcd user; else the URL's ``user@``, else ``$ETCDCTL_USER``
                        (``user`` or ``user:password``)
    password            the user's password; else the URL's ``user:password@``, else
                        ``$ETCDCTL_PASSWORD``. Never logged nor shown.
    ca_file             PEM file of CA certificates that verify the servers; turns TLS on
    cert_file           PEM file of a client certificate (with ``key_file``); turns TLS on
    key_file            PEM file of the client certificate's private key
    tls         false   use TLS with the system's CA certificates (implied by the above)
    server_name         name the servers' certificates must carry (default: the first host)

    ``cacert``, ``cert`` and ``key`` (etcdctl's names) still work for one release, with a
    ``DeprecationWarning``.
    =========== ======= ==================================================================

    Example: ``etcd://10.0.0.1:2379,10.0.0.2:2379/myapp?ttl=10&ca_file=/etc/etcd/ca.pem``.

    Declared capabilities: CROSS_PROCESS, EVERY_VERSION (a watch yields every revision of
    the key, except revisions compacted away before it saw them), FAIR (create-revision
    order), SINGLE_WAKEUP, EXPIRE_SESSION (revokes the lease).
    """

    scheme = "etcd"
    wakeups: int  # counted (Backend.wakeups): set to 0 in __init__
    capabilities = frozenset(
        {
            Capability.CROSS_PROCESS,
            Capability.EVERY_VERSION,
            Capability.FAIR,
            Capability.SHARED_QUEUE,
            Capability.SINGLE_WAKEUP,
            Capability.EXPIRE_SESSION,
        }
    )
    options = ETCD_OPTIONS

    def __init__(self, url: ParsedURL, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        settings = self.settings
        if bool(settings["cert_file"]) != bool(settings["key_file"]):
            raise InvalidURL("options 'cert_file' and 'key_file' go together: give both or neither")
        user, password = settings["user"], settings["password"]
        if user is None and url.username is not None:
            user, password = url.username, password if password is not None else url.password
        if user is None and os.environ.get("ETCDCTL_USER"):
            user, _, env_password = os.environ["ETCDCTL_USER"].partition(":")
            password = password or env_password or os.environ.get("ETCDCTL_PASSWORD")
        if password is not None and user is None:
            raise InvalidURL("option 'password' needs a user")
        self._user: str | None = user
        self._password: str | None = password
        self._tls = bool(settings["tls"] or settings["ca_file"] or settings["cert_file"])
        self._timeout = float(settings["timeout"])
        self._client: EtcdClient | None = None
        self._targets: list[str] = []
        """gRPC targets for the URL's hosts, each a rotation of the one before (see failover)."""
        self._channel_args: tuple[Any, str | None] = (None, None)
        self.wakeups = 0

    @property
    def client(self) -> EtcdClient:
        if self._client is None:
            raise RuntimeError("the etcd backend is not open")
        return self._client

    def _check_open(self, client: EtcdClient) -> None:
        """A watch retries a broken stream while its connection is open, and no longer."""
        if self._client is not client:
            raise Unavailable("the etcd connection was closed")

    async def open(self) -> None:
        self._targets, first_host = await self._target()
        credentials = await self._credentials() if self._tls else None
        # One host: gRPC checks its name. Several: they are dialled by address, so check the first name.
        several = len(self.url.hosts) > 1
        server_name = self.settings["server_name"] or (first_host if self._tls and several else None)
        self._channel_args = (credentials, server_name)
        client = EtcdClient(
            open_channel(self._targets[0], credentials, server_name),
            timeout=self._timeout,
            user=self._user,
            password=self._password,
        )
        try:
            await client.authenticate()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await client.close()
            raise
        self._client = client

    async def failover(self, reason: str) -> None:
        """Replace the channel with one that dials the next member first.

        gRPC only leaves a member whose connection fails; one that hangs (a partition, a
        frozen host) keeps the channel until gRPC's own keepalive gives up, long after the
        lease would have run out. The calls still waiting on it are abandoned and retried.
        """
        client = self._client
        if client is None or len(self._targets) < 2:
            return  # one host: gRPC reconnects to it by itself
        self._targets.append(self._targets.pop(0))
        log.info("moving to etcd %s: %s", self._targets[0], reason)
        await client.replace_channel(open_channel(self._targets[0], *self._channel_args))

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _target(self) -> tuple[list[str], str]:
        """The gRPC targets for the URL's hosts (each address first in one of them, in URL
        order, the others after it in turn), and the first host's name."""
        hosts = self.url.hosts or (("127.0.0.1", None),)
        if len(hosts) == 1:
            host, port = hosts[0]
            shown = f"[{host}]" if ":" in host else host
            return [f"{shown}:{port or DEFAULT_PORT}"], host
        addresses: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]] = []
        for host, port in hosts:
            with contextlib.suppress(ValueError):
                addresses.append((ipaddress.ip_address(host), port or DEFAULT_PORT))
                continue
            with contextlib.suppress(OSError):
                for _, _, _, _, sockaddr in await anyio.getaddrinfo(
                    host, port or DEFAULT_PORT, type=socket.SOCK_STREAM
                ):
                    addresses.append((ipaddress.ip_address(sockaddr[0]), int(sockaddr[1])))
        if not addresses:
            raise Unavailable(f"none of the etcd hosts {self.url.host_strings(DEFAULT_PORT)} resolves")
        unique = list(dict.fromkeys(addresses))
        if all(address.version == 4 for address, _ in unique):
            scheme, listed = "ipv4:", [f"{address}:{port}" for address, port in unique]
        else:
            # gRPC takes one address family per target: IPv4 addresses go in IPv4-mapped.
            v6 = [(ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a, p) for a, p in unique]
            scheme, listed = "ipv6:", [f"[{address}]:{port}" for address, port in v6]
        rotations = [listed[i:] + listed[:i] for i in range(len(listed))]
        return [scheme + ",".join(rotation) for rotation in rotations], hosts[0][0]

    async def _credentials(self) -> Any:
        files: dict[str, bytes | None] = {}
        for option in ("ca_file", "cert_file", "key_file"):
            path = self.settings[option]
            try:
                files[option] = await anyio.Path(path).read_bytes() if path else None
            except OSError as exc:
                raise InvalidURL(f"option {option!r}: cannot read {path!r}: {exc.strerror}") from exc
        return grpc.ssl_channel_credentials(
            root_certificates=files["ca_file"],
            private_key=files["key_file"],
            certificate_chain=files["cert_file"],
        )

    # -- sessions --------------------------------------------------------------------------

    async def open_session(self, ttl: float, monitor: SessionMonitor) -> EtcdSession:
        lease_id, granted = await self.client.grant(max(1, math.ceil(ttl)))
        return EtcdSession(self, self.client, lease_id, granted)

    async def expire_session(self, session_id: str) -> None:
        """Revoke the lease ``session_id`` (hex), deleting its keys; no error if it is gone."""
        try:
            lease_id = int(session_id, 16)
        except ValueError:
            raise InvalidName(f"{session_id!r} is not an etcd session id (a lease id in hex)") from None
        with contextlib.suppress(SessionExpired):
            await self.client.revoke(lease_id)

    # -- elections -------------------------------------------------------------------------

    async def leader(self, name: str) -> Leader | None:
        kv, _ = await _edge(self.client, name.encode() + b"/")
        return Leader(kv.value, kv.create_revision) if kv else None

    async def observe(self, name: str) -> AsyncIterator[Leader | None]:
        """Follow the leader key only, as etcd's ``Election.Observe`` does.

        With no leader, watch the prefix for the first contender written; with one, watch
        its key: a put is a proclaim, a delete means read again.
        """
        client, prefix = self.client, name.encode() + b"/"
        leader: KeyValue | None = None
        resume = 0  # 0: read first; else the revision to watch from
        delay = _Backoff()
        while True:
            try:
                if not resume:
                    leader, revision = await _edge(client, prefix)
                    resume = revision + 1
                    yield Leader(leader.value, leader.create_revision) if leader else None
                if leader is None:
                    async with client.watch(prefix, prefix=True, start_revision=resume) as events:
                        async for batch in events:
                            for event in batch:
                                resume = event.kv.mod_revision + 1
                                if event.type == PUT and _is_contender(event.kv, prefix):
                                    leader = event.kv
                                    break
                            if leader is not None:
                                break
                    assert leader is not None
                    yield Leader(leader.value, leader.create_revision)
                else:
                    async with client.watch(leader.key, start_revision=resume) as events:
                        async for batch in events:
                            for event in batch:
                                resume = event.kv.mod_revision + 1
                                if event.type == DELETE or event.kv.create_revision != leader.create_revision:
                                    resume = 0
                                    break
                                leader = event.kv
                                yield Leader(leader.value, leader.create_revision)
                            if not resume:
                                break
                delay.reset()
            except Compacted:
                resume = 0
            except (Unavailable, OperationTimeout) as exc:
                self._check_open(client)
                await delay.wait(f"observing {name!r}", exc)

    # -- config ----------------------------------------------------------------------------

    async def get(self, key: str) -> Versioned | None:
        reply = await self.client.range(range_request(key.encode()))
        return Versioned(reply.kvs[0].value, reply.kvs[0].mod_revision) if reply.kvs else None

    async def set(self, key: str, value: bytes) -> int:
        return await self.client.put(key.encode(), value)

    async def compare_and_set(self, key: str, value: bytes, expected: int | None) -> bool:
        k = key.encode()
        compare = compare_create(k, 0) if expected is None else compare_mod(k, expected)
        reply = await self.client.txn([compare], [put_op(k, value)])
        return reply.succeeded

    async def delete(self, key: str) -> bool:
        return await self.client.delete(key.encode()) > 0

    async def watch(self, key: str) -> AsyncIterator[Versioned | None]:
        """Every change of ``key``, from the revision after the last one seen (read again
        when that revision was compacted away)."""
        client, k = self.client, key.encode()
        resume = 0
        delay = _Backoff()
        while True:
            try:
                if not resume:
                    reply = await client.range(range_request(k))
                    resume = reply.header.revision + 1
                    kv = reply.kvs[0] if reply.kvs else None
                    yield Versioned(kv.value, kv.mod_revision) if kv else None
                async with client.watch(k, start_revision=resume) as events:
                    delay.reset()
                    async for batch in events:
                        for event in batch:
                            resume = event.kv.mod_revision + 1
                            kv = event.kv if event.type == PUT else None
                            yield Versioned(kv.value, kv.mod_revision) if kv else None
            except Compacted:
                resume = 0
            except (Unavailable, OperationTimeout) as exc:
                self._check_open(client)
                await delay.wait(f"watching {key!r}", exc)


class _Backoff:
    """Exponential pauses between attempts to re-establish a watch: 50 ms up to 2 s."""

    def __init__(self) -> None:
        self.delay = 0.05

    def reset(self) -> None:
        self.delay = 0.05

    async def wait(self, what: str, exc: BaseException) -> None:
        log.info("%s: %s; retrying in %.2fs", what, exc, self.delay)
        await anyio.sleep(self.delay)
        self.delay = min(self.delay * 2, 2.0)
