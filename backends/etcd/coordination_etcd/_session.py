"""One etcd session: a lease with one keepalive stream, and the contender queue of etcd's
concurrency recipe (``<name>/<lease id in hex>`` under the lease, the owner is the lowest
create revision, a waiter watches only the key just before its own)."""

from __future__ import annotations

import contextlib
import logging
from typing import Literal

import anyio

from coordination.abc import (
    Backend,
    BackendSession,
    Kind,
)
from coordination.exceptions import (
    CoordinationError,
    NotHeld,
    SessionExpired,
)

from ._client import (
    DELETE,
    EtcdClient,
    KeepAliveStream,
    KeyValue,
    compare_create,
    delete_op,
    put_op,
    range_op,
    range_request,
)

__all__ = ["EtcdSession", "edge_contender", "is_contender"]

log = logging.getLogger("coordination.etcd")

_PAGE = 64  # keys per page when a lock prefix holds keys that are not contenders


def is_contender(kv: KeyValue, prefix: bytes) -> bool:
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

    def __init__(self, backend: Backend, client: EtcdClient, lease_id: int, ttl: int) -> None:
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
                # The write may have happened even if its reply was lost: remove it, but only
                # that incarnation of the key (by its create revision). A delete by name alone
                # could be applied late, after a later attempt of this session wrote the key
                # anew, and delete that. Should the lost write itself come later still, the
                # next write of this key finds it and removes it (the loop above).
                slot.rev = 0
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(self._client.timeout),
                    contextlib.suppress(CoordinationError),
                ):
                    found = await self._client.range(range_request(slot.key), wait_for_ready=True)
                    for kv in found.kvs:  # the key's name holds this session's lease: it is ours
                        await self._client.txn(
                            [compare_create(slot.key, kv.create_revision)],
                            [delete_op(slot.key)],
                            wait_for_ready=True,
                        )
                raise
            c.written = True
            heads = reply.responses[1].response_range.kvs
            if heads and is_contender(heads[0], slot.prefix):
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
                    self._backend.woke()
                    continue
                async for batch in events:
                    self._backend.woke()
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
        if kv is not None and not is_contender(kv, slot.prefix):
            kv, revision = await edge_contender(self._client, slot.prefix, before=slot.rev, keys_only=True)
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


async def edge_contender(
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
            if is_contender(kv, prefix):
                return kv, reply.header.revision
        if not reply.more or not reply.kvs:
            return None, reply.header.revision
        if before is None:
            low = reply.kvs[-1].create_revision + 1
        else:
            high = reply.kvs[-1].create_revision - 1
        limit = _PAGE
