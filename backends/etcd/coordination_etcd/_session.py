"""One etcd session: a lease with one keepalive stream, and the contender queue of etcd's
concurrency recipe (``<name>/<lease id in hex>`` under the lease, the owner is the lowest
create revision, a waiter watches only the key just before its own)."""

from __future__ import annotations

import contextlib
from typing import Literal

import anyio

from coordination.abc import (
    Backend,
    BackendSession,
    Kind,
    Queued,
    get_logger,
)
from coordination.exceptions import (
    CoordinationError,
    NotHeld,
    SessionExpired,
    Unavailable,
)

from ._client import (
    DELETE,
    EtcdClient,
    KeepAliveStream,
    KeyValue,
    Message,
    TxnResponse,
    compare_create,
    compare_lease,
    compare_version,
    delete_op,
    members_prefix,
    put_op,
    range_op,
    range_request,
)

__all__ = ["EtcdSession", "edge_contender", "is_contender"]

log = get_logger("coordination.etcd")

_PAGE = 64  # keys per page when a lock prefix holds keys that are not contenders


def is_contender(kv: KeyValue, prefix: bytes) -> bool:
    """Whether ``kv`` is a contender of the queue under ``prefix``: ``<prefix><lease hex>``,
    bound to a lease.

    Other keys under the prefix never block the queue: deeper ones (the lock
    ``jobs/nightly`` under the lock ``jobs``) and keys without a lease (a config value).
    """
    return kv.lease != 0 and b"/" not in kv.key[len(prefix) :]


class _Contender:
    """A lock or election contender of this session: its key ``<prefix><lease id in hex>``.

    etcd's recipe gives a session one key per prefix, and a lock and an election of one
    name are one queue there; so :meth:`EtcdSession.slot` is the name, and the core lets one
    contender of the session use the key at a time. Each writes the key anew, so its token
    (the create revision) is higher than the one before.
    """

    __slots__ = ("key", "prefix", "rev", "value")

    def __init__(self, prefix: bytes, key: bytes, value: bytes) -> None:
        self.prefix = prefix
        self.key = key
        self.value = value
        self.rev = 0
        """Create revision of the key as written now (the fencing token); 0: not written."""


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

    def slot(self, kind: Kind, name: str) -> str:
        return name  # one key per name and session, for locks and elections alike

    async def enqueue(self, kind: Kind, name: str, value: bytes) -> Queued[_Contender]:
        prefix = name.encode() + b"/"
        c = _Contender(prefix, prefix + self.id.encode(), value)
        first = await self._write(c)
        if first is None:  # the first key under the prefix is not a contender: look past it
            try:
                first = (await self._ahead(c))[0] is None
            except BaseException:
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(self._client.timeout),
                    contextlib.suppress(CoordinationError),
                ):
                    await self.withdraw(c)
                raise
        return Queued(c, c.rev if first else None)

    async def _write(self, c: _Contender) -> bool | None:
        """Write ``c``'s key (etcd's ``tryAcquire``); whether it is first under its prefix
        (``None``: the first key there is not a contender, so that read cannot tell).

        Writing is one transaction: if the key's create revision is 0 put it bound to the
        lease, else get it; either way get the first key under the prefix by create revision.
        """
        first = range_op(range_request(c.prefix, prefix=True, order="first", limit=1, keys_only=True))
        try:
            while True:
                reply = await self._client.txn(
                    [compare_create(c.key, 0)],
                    [put_op(c.key, c.value, self.lease_id), first],
                    [range_op(range_request(c.key, keys_only=True))],
                )
                if reply.succeeded:
                    c.rev = reply.header.revision
                    break
                # Left over from an attempt whose reply was lost. etcd's recipe would reuse it;
                # a fresh key keeps tokens strictly increasing for this session too.
                stale = reply.responses[0].response_range.kvs[0].create_revision
                await self._client.txn([compare_create(c.key, stale)], [delete_op(c.key)])
        except BaseException:
            # The write may have happened even if its reply was lost: remove it, but only
            # that incarnation of the key (by its create revision). A delete by name alone
            # could be applied late, after a later attempt of this session wrote the key
            # anew, and delete that. Should the lost write itself come later still, the
            # next write of this key finds it and removes it (the loop above).
            c.rev = 0
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(self._client.timeout),
                contextlib.suppress(CoordinationError),
            ):
                found = await self._client.range(range_request(c.key), wait_for_ready=True)
                for kv in found.kvs:  # the key's name holds this session's lease: it is ours
                    await self._client.txn(
                        [compare_create(c.key, kv.create_revision)],
                        [delete_op(c.key)],
                        wait_for_ready=True,
                    )
            raise
        heads = reply.responses[1].response_range.kvs
        if heads and is_contender(heads[0], c.prefix):
            return heads[0].create_revision == c.rev
        return None

    async def wait_owner(self, contender: _Contender) -> int:
        c = contender
        while True:
            ahead, ahead_rev, revision = await self._ahead(c)
            if ahead is None:
                return c.rev
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

    async def _ahead(self, c: _Contender) -> tuple[bytes | None, int, int]:
        """The contender created last before ``c``'s key (None: it is first), that one's
        create revision, and the revision of the read.

        Raises SessionExpired if the key itself is gone (its lease ended).
        """
        reply = await self._client.txn(
            [],
            [
                range_op(
                    range_request(
                        c.prefix,
                        prefix=True,
                        order="last",
                        limit=1,
                        keys_only=True,
                        max_create_revision=c.rev - 1,
                    )
                ),
                range_op(range_request(c.key, keys_only=True)),
            ],
        )
        own = reply.responses[1].response_range.kvs
        if not own or own[0].create_revision != c.rev:
            raise SessionExpired(f"the key {c.key.decode()!r} of etcd lease {self.id} is gone")
        kvs, revision = reply.responses[0].response_range.kvs, reply.header.revision
        kv = kvs[0] if kvs else None
        if kv is not None and not is_contender(kv, c.prefix):
            kv, revision = await edge_contender(self._client, c.prefix, before=c.rev, keys_only=True)
        if kv is None:
            return None, 0, revision
        return kv.key, kv.create_revision, revision

    async def _exists(self, key: bytes, create_revision: int) -> bool:
        reply = await self._client.range(range_request(key, keys_only=True))
        return bool(reply.kvs) and reply.kvs[0].create_revision == create_revision

    async def withdraw(self, contender: _Contender) -> None:
        c = contender
        if c.rev:
            await self._client.txn([compare_create(c.key, c.rev)], [delete_op(c.key)])
            c.rev = 0

    async def proclaim(self, contender: _Contender, value: bytes) -> None:
        c = contender
        if c.rev:
            reply = await self._client.txn(
                [compare_create(c.key, c.rev)], [put_op(c.key, value, self.lease_id)]
            )
            if reply.succeeded:
                c.value = value
                return
        raise NotHeld(f"{c.key.decode()!r} is no longer in the election")

    # -- writes guarded by an owner --------------------------------------------------------

    async def guarded_set(self, contender: _Contender, key: str, value: bytes) -> int:
        reply = await self._guarded(contender, [], put_op(key.encode(), value))
        return reply.header.revision  # succeeded: no compare but the guard's

    async def guarded_compare_and_set(
        self, contender: _Contender, key: str, value: bytes, expected: int | None
    ) -> bool:
        k = key.encode()
        reply = await self._guarded(contender, [compare_version(k, expected)], put_op(k, value))
        return reply.succeeded

    async def guarded_delete(self, contender: _Contender, key: str) -> bool:
        reply = await self._guarded(contender, [], delete_op(key.encode()))
        return reply.succeeded and reply.responses[0].response_delete_range.deleted > 0

    async def _guarded(self, c: _Contender, compare: list[Message], write: Message) -> TxnResponse:
        """One transaction: ``write`` if ``c``'s key is still the one it owns with (its create
        revision is the token, bound to this lease: Go's ``Mutex.IsOwner()``) and ``compare``
        holds; else read that key, to tell which failed. NotHeld if the guard did."""
        if not c.rev:
            raise NotHeld(f"{c.key.decode()!r} is not written")
        reply = await self._client.txn(
            [compare_create(c.key, c.rev), compare_lease(c.key, self.lease_id), *compare],
            [write],
            [range_op(range_request(c.key, keys_only=True))],
        )
        if not reply.succeeded:
            own = reply.responses[0].response_range.kvs
            if not own or own[0].create_revision != c.rev or own[0].lease != self.lease_id:
                raise NotHeld(f"the key {c.key.decode()!r} of revision {c.rev} is gone from lease {self.id}")
            if not compare:
                raise Unavailable(f"etcd refused a guarded write although {c.key.decode()!r} holds")
        return reply

    # -- group members ---------------------------------------------------------------------

    async def join(self, group: str, member_id: str, value: bytes) -> None:
        # A put binds the key to this lease, also when an earlier session's lease still
        # holds it: revoking that one then leaves this member in place.
        key = members_prefix(group) + member_id.encode()
        await self._client.txn([], [put_op(key, value, lease=self.lease_id)])

    async def leave(self, group: str, member_id: str) -> None:
        key = members_prefix(group) + member_id.encode()
        await self._client.txn([compare_lease(key, self.lease_id)], [delete_op(key)])


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
