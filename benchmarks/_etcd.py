"""etcd: this SDK, etcd's concurrency recipe hand-written on aetcd, aetcd's Lock, Tooz (etcd3gw)."""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aetcd  # type: ignore[import-untyped]
import anyio
from aetcd import rpc, rtypes

from ._harness import (
    WAKEUPS,
    AsyncLocker,
    BackendImpls,
    LockImpl,
    Signal,
    SyncLocker,
    WatchImpl,
    shielded,
    timed_writes,
    writer_loop,
)
from ._sdk import sdk_impls, sdk_watch


def instrument() -> None:
    """Count what wakes a waiter: a watch batch (SDK), a watch_once (aetcd), a failed poll (Tooz)."""
    import etcd3gw  # type: ignore[import-untyped]  # noqa: F401 - loads etcd3gw.client
    from aetcd.locks import Lock as AetcdLock  # type: ignore[import-untyped]

    from coordination_etcd._client import WatchStream

    anext_ = WatchStream.__anext__

    async def counted_anext(self: Any) -> Any:
        batch = await anext_(self)
        WAKEUPS.hit()
        return batch

    WatchStream.__anext__ = counted_anext  # type: ignore[method-assign]

    wait_delete = AetcdLock._wait_for_delete_event

    async def counted_wait(self: Any, timeout: Any) -> None:
        await wait_delete(self, timeout)
        WAKEUPS.hit()

    AetcdLock._wait_for_delete_event = counted_wait

    client_class = sys.modules["etcd3gw.client"].Etcd3Client  # the package's "client" is a function
    transaction = client_class.transaction

    def counted_transaction(self: Any, txn: Any) -> Any:
        result = transaction(self, txn)
        if not result.get("succeeded"):
            WAKEUPS.hit()  # a lock attempt refused: a poll
        return result

    client_class.transaction = counted_transaction


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


class AetcdRawLock:
    """etcd's concurrency recipe (``etcdctl lock``) with nothing else: one transaction puts
    ``<prefix><lease hex>`` under the lease and reads the first key by create revision; a
    waiter watches only the key created just before its own; release deletes the key if its
    create revision is unchanged."""

    def __init__(self, client: Any, lease_id: int, prefix: bytes) -> None:
        self._client = client
        self._prefix = prefix
        self._key = key = prefix + f"{lease_id:x}".encode()
        first = rpc.RequestOp(
            request_range=rpc.RangeRequest(
                key=prefix,
                range_end=_prefix_end(prefix),
                limit=1,
                keys_only=True,
                sort_target=rpc.RangeRequest.CREATE,
                sort_order=rpc.RangeRequest.ASCEND,
            )
        )
        absent = rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=key, create_revision=0)
        self._acquire = rpc.TxnRequest(
            compare=[absent],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=b"raw", lease=lease_id)), first],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key)), first],
        )
        self.token = 0

    async def acquire(self) -> None:
        reply = await self._client.kvstub.Txn(self._acquire)
        assert reply.succeeded, "one contender per lease"
        self.token = revision = reply.header.revision
        if reply.responses[1].response_range.kvs[0].create_revision == revision:
            return
        while True:
            ahead = await self._client.kvstub.Range(
                rpc.RangeRequest(
                    key=self._prefix,
                    range_end=_prefix_end(self._prefix),
                    limit=1,
                    keys_only=True,
                    sort_target=rpc.RangeRequest.CREATE,
                    sort_order=rpc.RangeRequest.DESCEND,
                    max_create_revision=revision - 1,
                )
            )
            if not ahead.kvs:
                return
            await self._client.watch_once(
                ahead.kvs[0].key, start_revision=ahead.header.revision + 1, kind=rtypes.EventKind.DELETE
            )
            WAKEUPS.hit()

    async def release(self) -> None:
        mine = rpc.Compare(
            result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=self._key, create_revision=self.token
        )
        await self._client.kvstub.Txn(
            rpc.TxnRequest(
                compare=[mine],
                success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=self._key))],
            )
        )


class AetcdLock:
    """aetcd's own Lock: a new lease per attempt, every waiter watches the one key."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock

    async def acquire(self) -> None:
        await self._lock.acquire(timeout=None)

    async def release(self) -> None:
        await self._lock.release()


class ToozEtcdLocker:
    """Tooz's etcd3gw driver (etcd's JSON gateway): a new lease per attempt, polling."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self._cancelled = False

    def acquire(self) -> bool:
        while not self._cancelled:
            try:
                if self._lock.acquire(blocking=1.0):
                    if self._cancelled:
                        self._lock.release()
                        return False
                    return True
            except Exception as exc:  # tenacity's RetryError when the second ran out
                if "RetryError" not in type(exc).__name__:
                    raise
        return False

    def release(self) -> None:
        self._lock.release()

    def cancel(self) -> None:
        self._cancelled = True


def etcd_impls(host: str, port: int, namespace: str, ttl: float, version: str) -> BackendImpls:
    url = f"etcd://{host}:{port}/{namespace}"

    @contextlib.asynccontextmanager
    async def aetcd_client() -> AsyncIterator[Any]:
        client = aetcd.Client(host=host, port=port)
        await client.connect()
        try:
            yield client
        finally:
            async with shielded():
                await client.close()

    @contextlib.asynccontextmanager
    async def raw(name: str, ttl: float) -> AsyncIterator[AsyncLocker]:
        async with aetcd_client() as client:
            lease = await client.lease(int(ttl))

            async def keepalive() -> None:
                while True:
                    await anyio.sleep(ttl / 3)
                    await lease.refresh()

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(keepalive)
                    try:
                        yield AetcdRawLock(client, lease.id, f"{namespace}/{name}-raw/".encode())
                    finally:
                        tg.cancel_scope.cancel()
            finally:
                async with shielded():
                    await lease.revoke()

    @contextlib.asynccontextmanager
    async def aetcd_lock(name: str, ttl: float) -> AsyncIterator[AsyncLocker]:
        async with aetcd_client() as client:
            yield AetcdLock(client.lock(f"{namespace}/{name}-aetcd".encode(), ttl=max(1, int(ttl))))

    @contextlib.contextmanager
    def tooz_lock(name: str, ttl: float) -> Iterator[SyncLocker]:
        from tooz import coordination as tooz

        coordinator = tooz.get_coordinator(
            f"etcd3+http://{host}:{port}?lock_timeout={max(1, int(ttl))}&timeout=10",
            uuid.uuid4().hex.encode(),
        )
        coordinator.start()
        try:
            yield ToozEtcdLocker(coordinator.get_lock(f"{namespace}-{name}".encode()))
        finally:
            coordinator.stop()

    async def write(key: str, seconds: float) -> list[float]:
        async with aetcd_client() as client:
            k = f"{namespace}/{key}".encode()
            return await timed_writes(
                lambda i: client.kvstub.Put(rpc.PutRequest(key=k, value=b"%d" % i)), seconds
            )

    async def raw_watch(key: str, samples: int) -> list[float]:
        k = f"{namespace}/{key}-raw".encode()
        async with aetcd_client() as writer, aetcd_client() as watcher:
            signal = Signal()
            ready = anyio.Event()

            async def watch() -> None:
                events = await watcher.watch(k)
                ready.set()
                async for event in events:
                    signal.arrived(event.kv.value)

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await ready.wait()
                await anyio.sleep(0.1)
                latencies = await writer_loop(
                    signal, lambda v: writer.kvstub.Put(rpc.PutRequest(key=k, value=v)), samples
                )
                tg.cancel_scope.cancel()
            return latencies

    sdk = sdk_impls(url)
    return BackendImpls(
        backend="etcd",
        locks=[
            sdk[0],
            LockImpl("aetcd, same recipe by hand", "raw", open_async=raw, holder="raw-etcd"),
            LockImpl("aetcd Lock recipe", "peer", open_async=aetcd_lock),
            LockImpl("Tooz etcd3gw driver (threads)", "peer", open_sync=tooz_lock, holder="tooz-etcd"),
            sdk[1],
        ],
        watches=[
            sdk_watch(url),
            WatchImpl("aetcd watch() by hand", "raw", run=raw_watch),
            WatchImpl("Tooz", "peer", unavailable="Tooz has no key watch"),
        ],
        write=write,
        write_name="aetcd Put",
        ttl=ttl,
        failover_bound=ttl + 1,
        bound_text=f"TTL + 1 s = {ttl + 1:g} s",
        failover_extra={"etcd_version": version},
    )
