"""Locks and elections in kazoo's and Curator's node layout, on one ZooKeeper session.

Under the znode of the name (``/<namespace>/<name>``), each contender is an ephemeral
sequential node, named as one of the recipes that share the path names it::

    <uuid4 hex>__lock__<10-digit sequence>      kazoo Lock and Election (naming=kazoo)
    _c_<uuid4>-lock-<10-digit sequence>         Curator InterProcessMutex, LeaderSelector
                                                (naming=curator)
    _c_<uuid4>-latch-<10-digit sequence>        Curator LeaderLatch (naming=latch, elections)

    data: the holder identity (a lock), or the leader value (an election; Curator's
    participant id)

Every node of any of these namings is a contender, whoever made it: the one with the lowest
sequence (ZooKeeper numbers the children of one parent with one counter) owns the lock or
leads the election, and a waiter watches only the node just ahead of its own. Each peer
library orders only what it knows, so the ``naming`` option picks the one the peers on a path
read: kazoo sees only ``__lock__`` nodes, Curator orders every child by the text after
``lock-`` (``latch-`` for a latch), so a kazoo-named node stands at a random place in its
queue. The uuid part finds a node again after the reply to its create was lost, so a lost
reply never leaves an orphan behind.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import anyio

from coordination.abc import Backend, BackendSession, Backoff, Kind, Queued, SessionMonitor, get_logger
from coordination.exceptions import NotHeld, SessionExpired, Unavailable

from . import _config as config
from ._client import (
    CONNECTED,
    DATA_CHANGED,
    DELETED,
    LOST,
    SUSPENDED,
    BadVersion,
    NodeExists,
    NoNode,
    ZooKeeperClient,
)

__all__ = [
    "NAMINGS",
    "NODE_MARK",
    "PARTY_MARK",
    "Contender",
    "ZooKeeperSession",
    "member_id",
    "node_prefix",
    "queue_order",
]

log = get_logger("coordination.zookeeper")

NODE_MARK = "__lock__"
"""What kazoo's ``Lock`` puts between the uuid and the sequence number."""

PARTY_MARK = "__party__"
"""What kazoo's ``Party`` appends to the uuid of a member's node: ``<uuid4 hex>__party__``."""


def member_id(node: str) -> str | None:
    """The member id of a group's child node (kazoo's Party: its uuid), or ``None`` if the
    node is not a member (a lock contender under the same znode, say)."""
    return node[: -len(PARTY_MARK)] if node.endswith(PARTY_MARK) and len(node) > len(PARTY_MARK) else None


NAMINGS = ("kazoo", "curator", "latch")
"""The values of the ``naming`` option: how this SDK names its own contender nodes."""

_SEQUENCE = re.compile(r"(?:__lock__|-lock-|-latch-)(-?\d{10})$")
_CURATOR = re.compile(r"^_c_[0-9a-f-]{36}-(?:lock|latch)-")


def queue_order(children: Iterable[str]) -> list[str]:
    """The contender nodes among ``children`` (kazoo's and Curator's), owner first: in
    sequence order."""
    matched = [(m.group(1), child) for child in children if (m := _SEQUENCE.search(child))]
    return [child for _, child in sorted(matched)]


def node_prefix(naming: str, kind: Kind) -> str:
    """The name of a new contender node before the sequence ZooKeeper appends: unique, so
    that the node a lost create made is found again by it."""
    if naming == "kazoo":
        return uuid.uuid4().hex + NODE_MARK
    mark = "latch-" if naming == "latch" and kind == "election" else "lock-"
    return f"_c_{uuid.uuid4()}-{mark}"  # Curator's "protected" name: _c_<uuid>-<name>


@dataclass(eq=False)
class Contender:
    """One contender node: found again by ``prefix`` if the reply to its create was lost."""

    parent: str
    prefix: str
    data: bytes
    node: str | None = None
    token: int = 0
    sent: bool = False  # a create went out: a node may exist
    uncertain: bool = False  # a create's reply was lost: look nodes up by prefix
    listing: list[str] | None = None  # the queue as listed with the create (consumed by enqueue)
    ahead: str | None = None  # a node seen just ahead of this one: the one to watch first

    @property
    def path(self) -> str:
        return f"{self.parent}/{self.node}"


class ZooKeeperSession(BackendSession[Contender]):
    """One ZooKeeper session, on its own client that never replaces it.

    The client reports its transitions: SUSPENDED → ``monitor.suspended()``, CONNECTED
    again → ``monitor.resumed()``, LOST because the server ended the session →
    ``monitor.expired()``.
    """

    def __init__(
        self,
        backend: Backend,
        client: ZooKeeperClient,
        monitor: SessionMonitor,
        op_timeout: float,
        naming: str = "kazoo",
    ) -> None:
        self._backend = backend  # counts its waiters' wake-ups
        self._naming = naming
        self._warned: set[str] = set()  # parents where Curator nodes were seen with kazoo naming
        self.client = client
        self.id = client.session_hex
        self.ttl = float(client.timeout)
        self.keepalive_interval = self.ttl / 3
        self._monitor = monitor
        self._op_timeout = op_timeout
        self._parents: set[str] = set()  # parent znodes seen to exist
        client.add_listener(self._on_state)

    def _on_state(self, previous: str, state: str) -> None:
        if state == SUSPENDED:
            self._monitor.suspended()
        elif state == CONNECTED:
            self._monitor.resumed()
        elif state == LOST and self.client.expired:
            self._monitor.expired()

    async def keepalive(self) -> float:
        # Any request renews a ZooKeeper session; one with its own xid is matched to its own
        # reply (aiozk's pings share one xid). Nothing at all back for a sixth of the TTL (the
        # core waits a fifth before it calls the session SUSPENDED): the connection is
        # stalled, and the client moves to a new one while the session still lives.
        await self.client.probe(self.ttl / 6)
        return float(self.client.timeout)

    async def close(self) -> None:
        await self.client.close()

    # -- the contender queue -------------------------------------------------------------

    async def enqueue(self, kind: Kind, name: str, value: bytes) -> Queued[Contender]:
        contender = Contender("/" + name, node_prefix(self._naming, kind), value)
        try:
            await self._join(contender)
            listing, contender.listing = contender.listing, None
            first = await self._ahead(contender, listing)
        except BaseException:
            # Failed or cancelled, maybe after the server made the node: remove it by its
            # prefix (across a reconnect if need be) before the error goes on.
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._op_timeout):
                while True:
                    try:
                        await self._remove(contender)
                        break
                    except SessionExpired:
                        break  # its nodes went with it
                    except Unavailable:
                        if self.client.closing:
                            break
                    except Exception as error:
                        log.warning("could not remove contender %s*: %r", contender.prefix, error)
                        break
            raise
        return Queued(contender, contender.token if first else None)

    async def _join(self, contender: Contender) -> None:
        client, backoff = self.client, Backoff()
        while True:
            try:
                if contender.uncertain and await self._find(contender):
                    return
                await client.wait_connected()
                contender.sent = True  # nothing awaits between here and the create going out
                path, stat, listing = await client.create_and_list(
                    f"{contender.parent}/{contender.prefix}",
                    contender.data,
                    ephemeral=True,
                    sequential=True,
                    # Once this session has seen the parent, do not create it again: an
                    # existing znode costs the server an error transaction.
                    make_parents=contender.parent not in self._parents,
                )
            except NoNode:  # the parent went away meanwhile
                self._parents.discard(contender.parent)
                continue
            except Unavailable:
                if client.closing:
                    raise
                # The connection dropped (or the server answered with a transient error): a
                # create sent may have been applied. Look for its node by the prefix (on the
                # next connection) before creating again; still connected, pause first.
                contender.uncertain = contender.sent
                if client.connected:
                    await backoff.wait()
                continue
            contender.node, contender.token = path.rsplit("/", 1)[1], stat.czxid
            contender.listing = listing  # saves wait_owner a round trip
            if len(self._parents) >= 1024:
                self._parents.clear()
            self._parents.add(contender.parent)
            return

    async def _find(self, contender: Contender) -> bool:
        """Adopt the node a lost create made (deleting duplicates); False if there is none."""
        try:
            children = await self.client.children(contender.parent)
        except NoNode:
            return False
        mine = [child for child in queue_order(children) if child.startswith(contender.prefix)]
        for extra in mine[1:]:
            with contextlib.suppress(NoNode):
                await self.client.delete(f"{contender.parent}/{extra}")
        stat = await self.client.exists(f"{contender.parent}/{mine[0]}") if mine else None
        if stat is None:
            return False
        contender.node, contender.token = mine[0], stat.czxid
        return True

    async def _remove(self, contender: Contender) -> None:
        if not contender.sent:
            return
        if contender.node is not None and not contender.uncertain:
            nodes = [contender.node]
        else:
            try:
                children = await self.client.children(contender.parent)
            except NoNode:
                return
            nodes = [child for child in children if child.startswith(contender.prefix)]
        for node in nodes:
            with contextlib.suppress(NoNode):
                await self.client.delete(f"{contender.parent}/{node}")

    async def _ahead(self, contender: Contender, listing: list[str] | None = None) -> bool:
        """Whether ``contender`` is first in its queue (as ``listing`` shows it, else as listed
        now); if not, note the node just ahead of it in ``contender.ahead``."""
        if listing is None:
            try:
                listing = await self.client.children(contender.parent)
            except NoNode:
                listing = []
        queue = queue_order(listing)
        if self._naming == "kazoo" and contender.parent not in self._warned:
            self._warn_curator(contender.parent, queue)
        if contender.node not in queue:
            raise Unavailable(f"contender {contender.path} was deleted by another client")
        position = queue.index(contender.node)
        contender.ahead = f"{contender.parent}/{queue[position - 1]}" if position else None
        return not position

    def _warn_curator(self, parent: str, queue: list[str]) -> None:
        curator = [node for node in queue if _CURATOR.match(node)]
        if curator:
            self._warned.add(parent)
            log.warning(
                "%s has Curator contenders (%s): this SDK counts them, but Curator orders this"
                " SDK's kazoo-named nodes wrongly and may hold at the same time; give every"
                " SDK on this path ?naming=curator (or naming=latch next to a LeaderLatch)",
                parent,
                curator[0],
            )

    async def wait_owner(self, contender: Contender) -> int:
        # Watch only the node just ahead; when it goes, list the queue again (the one ahead
        # of it may have gone too, or be waiting still). A node once ahead stays ahead while
        # it exists (sequence numbers never change), so the one enqueue saw is a sound start.
        while contender.ahead is not None:
            await self._gone(contender.ahead)
            self._backend.woke()  # woken: list the queue again (Backend.wakeups)
            await self._ahead(contender)
        return contender.token

    async def _gone(self, path: str) -> None:
        """Return once ``path`` is gone or changed, or the connection state changed."""
        woken = anyio.Event()

        def wake(*_: object) -> None:
            woken.set()

        remove = self.client.on_events(path, (DELETED, DATA_CHANGED), wake)
        self.client.add_listener(wake)
        try:
            try:
                await self.client.get(path, watch=True)  # a data watch: none is left if it is gone
            except NoNode:
                return
            await woken.wait()
        finally:
            remove()
            self.client.remove_listener(wake)

    async def withdraw(self, contender: Contender) -> None:
        await self._remove(contender)

    async def proclaim(self, contender: Contender, value: bytes) -> None:
        try:
            await self.client.set_data(contender.path, value)
        except NoNode:
            raise NotHeld(f"{contender.parent!r}: this candidate is no longer the leader") from None

    # -- writes guarded by an owner ------------------------------------------------------

    def _guard(self, contender: Contender) -> str:
        if contender.node is None:
            raise NotHeld("the contender has no node")
        return contender.path

    async def guarded_set(self, contender: Contender, key: str, value: bytes) -> int:
        return await config.write_value(self.client, key, value, self._guard(contender))

    async def guarded_compare_and_set(
        self, contender: Contender, key: str, value: bytes, expected: int | None
    ) -> bool:
        return await config.compare_and_set(self.client, key, value, expected, self._guard(contender))

    async def guarded_delete(self, contender: Contender, key: str) -> bool:
        return await config.delete_value(self.client, key, self._guard(contender))

    # -- group members: kazoo's Party ----------------------------------------------------

    async def join(self, group: str, member_id: str, value: bytes) -> None:
        path = f"/{group}/{member_id}{PARTY_MARK}"
        client = self.client
        while True:
            try:
                await client.create(path, value, ephemeral=True)
                return
            except NoNode:
                await client.ensure_path(f"/{group}")
            except NodeExists:
                try:
                    _, stat = await client.get(path)
                except NoNode:
                    continue
                if stat.ephemeral_owner == client.session_id:
                    return  # this session's own (a retried create whose reply was lost)
                # An earlier session's entry for this member, not yet expired: take its place.
                with contextlib.suppress(NoNode, BadVersion):
                    await client.delete(path, stat.version)

    async def leave(self, group: str, member_id: str) -> None:
        path = f"/{group}/{member_id}{PARTY_MARK}"
        try:
            _, stat = await self.client.get(path)
        except NoNode:
            return
        if stat.ephemeral_owner == self.client.session_id:
            with contextlib.suppress(NoNode, BadVersion):
                await self.client.delete(path, stat.version)
