"""The etcd backend: sessions are leases; locks and elections follow etcd's concurrency recipe."""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import socket
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
import grpc  # type: ignore[import-untyped]

from coordination import Capability, Leader, Member, Versioned
from coordination.abc import (
    COMMON_OPTIONS,
    TLS_OPTIONS,
    Backend,
    Option,
    ParsedURL,
    ResumePoint,
    SessionMonitor,
    credentials,
    get_logger,
    tls_enabled,
)
from coordination.exceptions import (
    InvalidName,
    InvalidURL,
    SessionExpired,
    Unavailable,
)

from ._client import (
    DELETE,
    PUT,
    Compacted,
    EtcdClient,
    KeyValue,
    compare_version,
    members_prefix,
    open_channel,
    put_op,
    range_request,
)
from ._session import EtcdSession, edge_contender, is_contender

__all__ = ["EtcdBackend", "EtcdSession"]

log = get_logger("coordination.etcd")

DEFAULT_PORT = 2379


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

    A group member is the key ``<namespace>/<name>@members/<id>`` bound to the session's
    lease, its value the member's (``@`` is in no name, so the key is under no lock's
    prefix, where etcd's own ``Mutex`` would wait for it). A group watch is one watch on
    that prefix, resumed from the revision after the last one seen.

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
    order), SINGLE_WAKEUP, EXPIRE_SESSION (revokes the lease), GUARDED_WRITES (one
    transaction comparing the owner's key, as Go's ``Mutex.IsOwner()``, with the write).
    """

    scheme = "etcd"
    wakeups: int  # counted (Backend.wakeups): set to 0 in __init__
    capabilities = frozenset(
        {
            Capability.CROSS_PROCESS,
            Capability.EVERY_VERSION,
            Capability.GUARDED_WRITES,
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
        user, password = credentials(url, settings)
        if user is None and os.environ.get("ETCDCTL_USER"):
            user, _, env_password = os.environ["ETCDCTL_USER"].partition(":")
            password = password or env_password or os.environ.get("ETCDCTL_PASSWORD")
        self._user: str | None = user
        self._password: str | None = password
        self._tls = tls_enabled(settings)
        self._timeout = float(settings["timeout"])
        self._client: EtcdClient | None = None
        self._targets: list[str] = []
        """gRPC targets for the URL's hosts, each a rotation of the one before (see failover)."""
        self._channel_args: tuple[Any, str | None] = (None, None)
        self.wakeups = 0

    @property
    def client(self) -> EtcdClient:
        return self.opened(self._client)

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
        kv, _ = await edge_contender(self.client, name.encode() + b"/")
        return Leader(kv.value, kv.create_revision) if kv else None

    async def candidates(self, name: str) -> list[bytes]:
        prefix = name.encode() + b"/"
        reply = await self.client.range(range_request(prefix, prefix=True, order="first"))
        return [kv.value for kv in reply.kvs if is_contender(kv, prefix)]

    async def observe(self, name: str, resume: ResumePoint) -> AsyncIterator[Leader | None]:
        """Follow the leader key only, as etcd's ``Election.Observe`` does.

        With no leader, watch the prefix for the first contender written; with one, watch
        its key: a put is a proclaim, a delete means read again. ``resume.position`` is the
        revision to watch from, with the leader key as of it (``None``: read first).
        """
        client, prefix = self.client, name.encode() + b"/"
        leader: KeyValue | None
        while True:
            if resume.position is None:
                leader, revision = await edge_contender(client, prefix)
                resume.position = (revision + 1, leader)
                yield Leader(leader.value, leader.create_revision) if leader else None
            start, leader = resume.position
            try:
                if leader is None:
                    async with client.watch(prefix, prefix=True, start_revision=start) as events:
                        async for batch in events:
                            for event in batch:
                                resume.position = (event.kv.mod_revision + 1, None)
                                if event.type == PUT and is_contender(event.kv, prefix):
                                    leader = event.kv
                                    break
                            if leader is not None:
                                break
                    assert leader is not None
                    resume.position = (resume.position[0], leader)
                    yield Leader(leader.value, leader.create_revision)
                else:
                    async with client.watch(leader.key, start_revision=start) as events:
                        async for batch in events:
                            for event in batch:
                                if event.type == DELETE or event.kv.create_revision != leader.create_revision:
                                    resume.position = None  # the leader went: read again
                                    break
                                leader = event.kv
                                resume.position = (event.kv.mod_revision + 1, leader)
                                yield Leader(leader.value, leader.create_revision)
                            if resume.position is None:
                                break
            except Compacted:
                resume.position = None

    # -- groups ----------------------------------------------------------------------------

    async def members(self, group: str) -> list[Member]:
        prefix = members_prefix(group)
        reply = await self.client.range(range_request(prefix, prefix=True))
        return [_member(kv, prefix) for kv in reply.kvs if kv.lease]

    async def watch_group(self, group: str, resume: ResumePoint) -> AsyncIterator[list[Member]]:
        """One watch on the group's prefix, from ``resume.position``: the revision after the
        last one seen and the members as of it (``None``: read first; read again when that
        revision was compacted away)."""
        client, prefix = self.client, members_prefix(group)
        while True:
            if resume.position is None:
                reply = await client.range(range_request(prefix, prefix=True))
                members = {kv.key: _member(kv, prefix) for kv in reply.kvs if kv.lease}
                resume.position = (reply.header.revision + 1, members)
                yield list(members.values())
            start, members = resume.position
            try:
                async with client.watch(prefix, prefix=True, start_revision=start) as events:
                    async for batch in events:
                        for event in batch:
                            if event.type == PUT and event.kv.lease:
                                members[event.kv.key] = _member(event.kv, prefix)
                            else:
                                members.pop(event.kv.key, None)
                            start = event.kv.mod_revision + 1
                        resume.position = (start, members)
                        yield list(members.values())
            except Compacted:
                resume.position = None

    # -- config ----------------------------------------------------------------------------

    async def get(self, key: str) -> Versioned | None:
        reply = await self.client.range(range_request(key.encode()))
        return Versioned(reply.kvs[0].value, reply.kvs[0].mod_revision) if reply.kvs else None

    async def set(self, key: str, value: bytes) -> int:
        return await self.client.put(key.encode(), value)

    async def compare_and_set(self, key: str, value: bytes, expected: int | None) -> bool:
        k = key.encode()
        reply = await self.client.txn([compare_version(k, expected)], [put_op(k, value)])
        return reply.succeeded

    async def delete(self, key: str) -> bool:
        return await self.client.delete(key.encode()) > 0

    async def watch(self, key: str, resume: ResumePoint) -> AsyncIterator[Versioned | None]:
        """Every change of ``key``, from ``resume.position``: the revision after the last one
        seen (``None``: read first; read again when that revision was compacted away)."""
        client, k = self.client, key.encode()
        while True:
            if resume.position is None:
                reply = await client.range(range_request(k))
                resume.position = reply.header.revision + 1
                kv = reply.kvs[0] if reply.kvs else None
                yield Versioned(kv.value, kv.mod_revision) if kv else None
            try:
                async with client.watch(k, start_revision=resume.position) as events:
                    async for batch in events:
                        for event in batch:
                            resume.position = event.kv.mod_revision + 1
                            kv = event.kv if event.type == PUT else None
                            yield Versioned(kv.value, kv.mod_revision) if kv else None
            except Compacted:
                resume.position = None


def _member(kv: KeyValue, prefix: bytes) -> Member:
    return Member(kv.key[len(prefix) :].decode(), kv.value)
