"""The ZooKeeper backend: config values, election reads and sessions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

import anyio
from anyio.abc import TaskGroup

from coordination import Capability, Leader, Member, Versioned
from coordination.abc import (
    AUTH_OPTIONS,
    COMMON_OPTIONS,
    TLS_OPTIONS,
    Backend,
    Option,
    ParsedURL,
    ResumePoint,
    SessionMonitor,
    client_certificate,
    credentials,
    ssl_context,
)
from coordination.exceptions import InvalidURL, Unsupported

from . import _config as config
from ._client import (
    ACL_CHOICES,
    CHILDREN_CHANGED,
    CREATED,
    DATA_CHANGED,
    DELETED,
    LOST,
    Access,
    NoNode,
    ZooKeeperClient,
    parse_acl,
)
from ._session import NAMINGS, ZooKeeperSession, member_id, queue_order

__all__ = ["ZooKeeperBackend"]

DEFAULT_PORT = 2181
_NODE_EVENTS = (CREATED, DELETED, DATA_CHANGED)


class ZooKeeperBackend(Backend):
    """``zookeeper://`` (or ``zk://``): Apache ZooKeeper 3.5 or later, through aiozk.

    URL: ``zookeeper://host[:port][,host[:port]...][/namespace][?option=value&...]``, for
    example ``zookeeper://zk1:2181,zk2:2181/myapp?session_timeout=10``. The port defaults
    to 2181. The namespace is the znode every name lives under, like a chroot: lock
    ``jobs/nightly`` of ``.../myapp`` is the znode ``/myapp/jobs/nightly``.

    ================ ======= ========================================================
    option           default meaning
    ================ ======= ========================================================
    ttl              10      session timeout to ask the server for, in seconds; the
                             server clamps it to its ``minSessionTimeout`` ..
                             ``maxSessionTimeout`` (by default 2 to 20 ticks), and the
                             granted value is the session's TTL
    session_timeout          ZooKeeper's name for ``ttl``; when given, it wins
    timeout          10      timeout of one request, in seconds
    identity                 holder identity, written as the data of lock nodes
                             (default ``hostname:pid``)
    naming           kazoo   how this SDK names its own contender nodes: ``kazoo``
                             (``<uuid>__lock__<seq>``, what kazoo's Lock and Election
                             see), ``curator`` (``_c_<uuid>-lock-<seq>``, what
                             Curator's InterProcessMutex and LeaderSelector see) or
                             ``latch`` (elections ``_c_<uuid>-latch-<seq>``, for
                             Curator's LeaderLatch; locks as ``curator``)
    user                     digest user to authenticate as (also the URL's
                             ``user:password@``); sent on every connection before
                             the session is used
    password                 its password (secret: never shown)
    acl              (below) ACL of every znode this SDK creates, comma-separated:
                             ``open`` (anyone may do anything), ``creator`` (only
                             the identities this client authenticated as: its
                             digest user, and over TLS its client certificate),
                             ``read`` (anyone may read) or ``scheme:id:perms``
                             (perms from ``rwcda``). Default: ``creator`` with a
                             user, else ``open``
    tls              false   TLS to the servers' ``secureClientPort`` (implied by
                             ``ca_file`` or ``cert_file``)
    ca_file          system  CA bundle (PEM) that verifies the servers
    cert_file                client certificate (PEM), for ``ssl.clientAuth=need``
    key_file                 its private key (PEM), if not in ``cert_file``
    server_name      host    the name the servers' certificates must carry
    tls_verify       true    verify the servers' certificates and host names
    ================ ======= ========================================================

    Security: TLS is the backend's own connection layer (aiozk's connection opened with
    an ``ssl`` context; aiozk itself has no TLS). ZooKeeper accepts any digest
    credential: a wrong password is simply another identity, so it is refused (as
    :class:`~coordination.PermissionDenied`, naming the znode and the user) at the first
    operation on a znode whose ACL does not grant it, like any other client's. A server
    that refuses the client certificate in the TLS handshake (its alert) is a
    PermissionDenied naming the alert and ``cert_file``; a server certificate the client does
    not trust is :class:`~coordination.Unavailable`.

    Layout, compatible with kazoo and Apache Curator (so their locks and elections on the
    same path and this SDK exclude each other and see each other's leader):

    * a lock or an election ``name`` is the znode ``/<namespace>/<name>``; each contender
      is an ephemeral sequential child named as ``naming`` says, whose data is the holder
      identity (lock) or the leader value (election; Curator's participant id). Every
      child named as kazoo or Curator names them is a contender, whoever made it: the
      lowest sequence owns, and each waiter watches only the node just ahead of its own.
      kazoo sees only kazoo-named nodes and Curator orders kazoo-named nodes wrongly, so
      every SDK on a path shared with Curator needs ``naming=curator`` (or ``latch``); one
      that meets Curator nodes with kazoo naming logs a warning. A lock and an election of
      the same name share one queue, as in kazoo. The fencing token is the czxid of the
      owner's node.
    * a group ``name`` is kazoo's ``Party`` on the znode ``/<namespace>/<name>``: each member
      is an ephemeral child ``<id>__party__`` whose data is the member's value, so kazoo's
      ``Party`` lists this SDK's members and the SDK lists kazoo's (their id is the uuid of
      the node). A group watch is one child watch on that znode; the members' values are
      read once per new member.
    * a config value is the persistent znode ``/<namespace>/<name>``; its version is the
      znode's mzxid. Parent znodes created on the way have no data (null) and read as
      absent; deleting a value whose znode has children clears its data instead.
      ``compare_and_set`` checks the mzxid it read, then writes conditioned on the znode's
      data version (ZooKeeper's own check; a delete, re-create and as many writes between
      the two requests would go unnoticed).

    Sessions: each ``connect()`` keeps two ZooKeeper sessions, one for locks and elections
    (replaced by a new one after it is lost) and one for config and reads (renewed by
    itself). A disconnect shows as SUSPENDED, and the client reconnects to the same session
    (on any server of the list); a connection on which nothing arrives for a sixth of the
    TTL counts as dead. The session is LOST at the local deadline derived from the
    negotiated timeout, before the server can expire it and hand its locks over, or at once
    when the server says it expired.

    Declared capabilities: CROSS_PROCESS, FAIR, SINGLE_WAKEUP, SHARED_QUEUE, GUARDED_WRITES
    (one ``multi`` of a check of the owner's node and the write). Not EVERY_VERSION (ZooKeeper
    watches fire once: a watcher sees the latest value when it re-reads) and not
    EXPIRE_SESSION (ending another client's session needs its password).
    """

    scheme = "zookeeper"
    wakeups: int  # counted (Backend.wakeups): set to 0 in __init__
    capabilities = frozenset(
        {
            Capability.CROSS_PROCESS,
            Capability.FAIR,
            Capability.GUARDED_WRITES,
            Capability.SINGLE_WAKEUP,
            Capability.SHARED_QUEUE,
        }
    )
    options: ClassVar[Mapping[str, Option]] = {
        **COMMON_OPTIONS,
        "session_timeout": Option(
            float, None, "ZooKeeper's name for ttl: the session timeout asked for, seconds.", minimum=0.1
        ),
        "naming": Option(
            str,
            "kazoo",
            "How this SDK names its contender nodes, for the peers on the same paths: kazoo,"
            " curator (InterProcessMutex, LeaderSelector) or latch (LeaderLatch elections).",
            check=lambda v: None if v in NAMINGS else f"must be one of {', '.join(NAMINGS)}",
        ),
        **AUTH_OPTIONS,
        "acl": Option(
            str,
            None,
            f"ACL of the znodes this SDK creates: {ACL_CHOICES} (default: creator with a user, else open).",
        ),
        **{
            name: TLS_OPTIONS[name]
            for name in ("tls", "ca_file", "cert_file", "key_file", "server_name", "tls_verify")
        },
    }

    def __init__(self, url: ParsedURL, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        user, password = credentials(url, self.settings)
        if user is not None and ":" in user:
            raise InvalidURL(f"ZooKeeper digest user {user!r} has a ':': a digest user name cannot")
        acl = self.settings["acl"] or ("creator" if user is not None else "open")
        try:
            acls = parse_acl(acl, authenticated=user is not None)
        except ValueError as exc:
            raise InvalidURL(f"option 'acl': {exc}") from None
        self._access = Access(
            tls=ssl_context(self.settings),
            certificate=client_certificate(self.settings),
            server_name=self.settings["server_name"],
            user=user,
            password=password,
            acl=acls,
        )
        if not url.hosts:
            raise InvalidURL("a zookeeper:// URL needs at least one host, e.g. 'zookeeper://127.0.0.1:2181'")
        self._hosts = [(host, port or DEFAULT_PORT) for host, port in url.hosts]
        self._timeout: float = self.settings["timeout"]
        self._session_timeout: float | None = self.settings["session_timeout"]
        self._client: ZooKeeperClient | None = None
        self._sessions: dict[str, ZooKeeperSession] = {}
        self.wakeups = 0

    @property
    def client(self) -> ZooKeeperClient:
        """The client for config and reads (available once open)."""
        return self.opened(self._client)

    async def open(self) -> None:
        client = ZooKeeperClient(
            self._hosts,
            self._session_timeout or self.settings["ttl"],
            renew=True,
            tg=self._tasks,
            access=self._access,
        )
        await client.start()
        self._client = client

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for session in list(self._sessions.values()):
                await session.close()
            self._sessions.clear()
            if self._client is not None:
                await self._client.close()

    @property
    def _tasks(self) -> TaskGroup:
        """Where every client's background tasks run (the coordinator's task group)."""
        return self.opened(self.background)

    async def open_session(self, ttl: float, monitor: SessionMonitor) -> ZooKeeperSession:
        client = ZooKeeperClient(
            self._hosts, self._session_timeout or ttl, renew=False, tg=self._tasks, access=self._access
        )
        await client.start()
        session = ZooKeeperSession(self, client, monitor, self._timeout, self.settings["naming"])
        self._sessions[session.id] = session
        client.add_listener(lambda _old, new: self._forget(session) if new == LOST else None)
        return session

    def _forget(self, session: ZooKeeperSession) -> None:
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]

    async def expire_session(self, session_id: str) -> None:
        """End ``session_id`` as the server would on expiry: only a session this backend
        opened, since ZooKeeper needs the session's password (not ``EXPIRE_SESSION``)."""
        session = self._sessions.get(session_id)
        if session is None:
            raise Unsupported(
                f"the zookeeper backend can end only its own sessions, not {session_id}"
                " (ZooKeeper needs a session's password to end it)"
            )
        await session.client.expire_from_outside(self._timeout)

    # -- elections -----------------------------------------------------------------------

    async def leader(self, name: str) -> Leader | None:
        parent = "/" + name
        client = self.client
        sync = True
        while True:
            try:
                queue = queue_order(await client.children(parent, sync=sync))
            except NoNode:
                return None
            if not queue:
                return None
            try:
                data, stat = await client.get(f"{parent}/{queue[0]}")
            except NoNode:
                sync = False
                continue  # the leader just left: look again
            return Leader(data or b"", stat.czxid)

    async def candidates(self, name: str) -> list[bytes]:
        parent = "/" + name
        client = self.client
        try:
            queue = queue_order(await client.children(parent, sync=True))
        except NoNode:
            return []
        values = []
        for node in queue:
            try:
                data, _ = await client.get(f"{parent}/{node}")
            except NoNode:
                continue  # it left meanwhile
            values.append(data or b"")
        return values

    async def observe(self, name: str, resume: ResumePoint) -> AsyncIterator[Leader | None]:
        parent = "/" + name
        client = self.client
        sync = True
        while True:
            woken = anyio.Event()

            def wake(*_: object) -> None:
                woken.set()  # noqa: B023 - each round has its own event and callbacks

            removers = [client.on_events(parent, (CREATED, CHILDREN_CHANGED), wake)]
            client.add_listener(wake)  # after a reconnect, re-read: a change may have been missed
            try:
                try:
                    queue = queue_order(await client.children(parent, sync=sync))
                except NoNode:
                    queue = []
                sync = False
                leader: Leader | None = None
                if queue:
                    # Only the leader's node matters until it changes or goes.
                    node = f"{parent}/{queue[0]}"
                    removers.append(client.on_events(node, (DELETED, DATA_CHANGED), wake))
                    try:
                        data, stat = await client.get(node, watch=True)
                    except NoNode:
                        continue  # the leader just left
                    leader = Leader(data or b"", stat.czxid)
                else:
                    # No leader: watch the queue (or for its parent to be created).
                    try:
                        queue = queue_order(await client.children(parent, watch=True))
                    except NoNode:
                        if await client.exists(parent, watch=True) is not None:
                            continue  # created meanwhile
                    if queue:
                        continue  # a contender joined between the two reads
                yield leader
                await woken.wait()
            finally:
                for remove in removers:
                    remove()
                client.remove_listener(wake)

    # -- groups (kazoo's Party) -----------------------------------------------------------

    async def members(self, group: str) -> list[Member]:
        parent = "/" + group
        try:
            children = await self.client.children(parent, sync=True)
        except NoNode:
            return []
        return await self._values(parent, children, {})

    async def _values(self, parent: str, children: list[str], known: dict[str, Member]) -> list[Member]:
        """The members among ``children`` with their values: read for nodes not in ``known``
        (a member's value never changes: a node is made once and deleted), which is updated."""
        found = []
        for node in children:
            mid = member_id(node)
            if mid is None:
                continue
            member = known.get(node)
            if member is None:
                try:
                    data, _ = await self.client.get(f"{parent}/{node}")
                except NoNode:
                    continue  # it left meanwhile
                member = known[node] = Member(mid, data or b"")
            found.append(member)
        for node in set(known) - set(children):
            del known[node]
        return found

    async def watch_group(self, group: str, resume: ResumePoint) -> AsyncIterator[list[Member]]:
        parent = "/" + group
        client = self.client
        known: dict[str, Member] = {}
        sync = True
        while True:
            woken = anyio.Event()

            def wake(*_: object) -> None:
                woken.set()  # noqa: B023 - each round has its own event and callbacks

            remove = client.on_events(parent, (CREATED, DELETED, CHILDREN_CHANGED), wake)
            client.add_listener(wake)  # after a reconnect, re-read: a change may have been missed
            try:
                try:
                    children = await client.children(parent, watch=True, sync=sync)
                except NoNode:
                    if await client.exists(parent, watch=True) is not None:
                        continue  # created between the two reads
                    children = []
                sync = False
                yield await self._values(parent, children, known)
                await woken.wait()
            finally:
                remove()
                client.remove_listener(wake)

    # -- config --------------------------------------------------------------------------

    async def get(self, key: str) -> Versioned | None:
        return await config.read_value(self.client, key)

    async def set(self, key: str, value: bytes) -> int:
        return await config.write_value(self.client, key, value)

    async def compare_and_set(self, key: str, value: bytes, expected: int | None) -> bool:
        return await config.compare_and_set(self.client, key, value, expected)

    async def delete(self, key: str) -> bool:
        return await config.delete_value(self.client, key)

    async def watch(self, key: str, resume: ResumePoint) -> AsyncIterator[Versioned | None]:
        path = "/" + key
        client = self.client
        sync = True
        while True:
            woken = anyio.Event()

            def wake(*_: object) -> None:
                woken.set()  # noqa: B023 - each round has its own event and callbacks

            remove = client.on_events(path, _NODE_EVENTS, wake)
            client.add_listener(wake)  # after a reconnect, re-read: a change may have been missed
            try:
                item: Versioned | None
                try:
                    data, stat = await client.get(path, watch=True, sync=sync)
                    item = None if data is None else Versioned(data, stat.mzxid)
                except NoNode:
                    if await client.exists(path, watch=True) is not None:
                        continue  # created between the two reads
                    item = None
                sync = False
                yield item
                await woken.wait()
            finally:
                remove()
                client.remove_listener(wake)
