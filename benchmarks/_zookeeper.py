"""ZooKeeper: this SDK, kazoo's recipe hand-written on aiozk, aiozk's Lock, kazoo, Tooz."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
from aiozk import WatchEvent, ZKClient, exc, protocol  # type: ignore[import-untyped]

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

_SEQUENCE = re.compile(r"__lock__(\d{10})$")


def instrument() -> None:
    """Count the watch events that reach waiters, in each client library."""
    logging.getLogger("aiozk").setLevel(logging.CRITICAL)
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)
    from aiozk.recipes.sequential import SequentialRecipe  # type: ignore[import-untyped]
    from kazoo.recipe.lock import Lock as KazooLock

    from coordination_zookeeper._client import ZooKeeperClient

    sdk_dispatch = ZooKeeperClient.event_dispatch

    def dispatch(self: Any, event: Any) -> None:
        if event.type:
            WAKEUPS.hit()
        sdk_dispatch(self, event)

    ZooKeeperClient.event_dispatch = dispatch  # type: ignore[method-assign]

    wait_on_sibling = SequentialRecipe.wait_on_sibling

    async def counted_wait(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = await wait_on_sibling(self, *args, **kwargs)
        WAKEUPS.hit()
        return result

    SequentialRecipe.wait_on_sibling = counted_wait

    watch_predecessor = KazooLock._watch_predecessor

    def counted_watch(self: Any, event: Any) -> None:
        WAKEUPS.hit()
        watch_predecessor(self, event)

    KazooLock._watch_predecessor = counted_watch  # type: ignore[method-assign]


# -- kazoo's lock recipe, hand-written on aiozk ---------------------------------------------


class AiozkRawLock:
    """The SDK's recipe with nothing else: an ephemeral sequential ``<uuid>__lock__`` node
    (Create2: its czxid is the token), list the children, watch only the one just ahead."""

    def __init__(self, client: Any, parent: str) -> None:
        self._client = client
        self._parent = parent
        self._node = ""
        self.token = 0

    async def acquire(self) -> None:
        client, parent = self._client, self._parent
        request = protocol.Create2Request(
            path=f"{parent}/{uuid.uuid4().hex}__lock__", data=b"raw", acl=[protocol.UNRESTRICTED_ACCESS]
        )
        request.set_flags(ephemeral=True, sequential=True)
        try:
            response = await client.send(request)
        except exc.NoNode:
            await client.ensure_path(parent)
            response = await client.send(request)
        self._node = response.path.rsplit("/", 1)[1]
        self.token = response.stat.created_zxid
        while True:
            children = await client.get_children(parent)
            queue = sorted((m.group(1), c) for c in children if (m := _SEQUENCE.search(c)))
            names = [c for _, c in queue]
            position = names.index(self._node)
            if position == 0:
                return
            ahead = f"{parent}/{names[position - 1]}"
            gone = client.wait_for_events([WatchEvent.DELETED], ahead)
            if await client.exists(ahead, watch=True):
                await gone
                WAKEUPS.hit()

    async def release(self) -> None:
        await self._client.delete(f"{self._parent}/{self._node}")


class AiozkLock:
    def __init__(self, client: Any, path: str) -> None:
        self._lock = client.recipes.Lock(path)

    async def acquire(self) -> None:
        await self._lock.acquire()

    async def release(self) -> None:
        await self._lock.release()


class KazooLocker:
    """kazoo's Lock (kazoo's Election is ``with Lock: func()``, the same requests)."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self._cancelled = False

    def acquire(self) -> bool:
        from kazoo.exceptions import CancelledError

        try:
            return bool(self._lock.acquire()) and not self._cancelled
        except CancelledError:
            return False

    def release(self) -> None:
        self._lock.release()

    def cancel(self) -> None:
        self._cancelled = True
        self._lock.cancel()


class ToozLocker(KazooLocker):
    """Tooz's zookeeper driver: a kazoo Lock under ``/tooz/locks/``."""

    def __init__(self, lock: Any) -> None:
        super().__init__(lock._lock)
        self._tooz = lock

    def acquire(self) -> bool:
        from kazoo.exceptions import CancelledError

        try:
            return bool(self._tooz.acquire(blocking=True)) and not self._cancelled
        except CancelledError:
            return False

    def release(self) -> None:
        self._tooz.release()


def zookeeper_impls(host: str, port: int, namespace: str, ttl: float) -> BackendImpls:
    hosts = f"{host}:{port}"
    url = f"zookeeper://{hosts}/{namespace}"

    @contextlib.asynccontextmanager
    async def aiozk_client(ttl: float) -> AsyncIterator[Any]:
        client = ZKClient(hosts, session_timeout=ttl)
        await client.start()
        try:
            yield client
        finally:
            async with shielded():
                await client.close()

    @contextlib.asynccontextmanager
    async def raw(name: str, ttl: float) -> AsyncIterator[AsyncLocker]:
        async with aiozk_client(ttl) as client:
            yield AiozkRawLock(client, f"/{namespace}/{name}")

    @contextlib.asynccontextmanager
    async def aiozk_lock(name: str, ttl: float) -> AsyncIterator[AsyncLocker]:
        async with aiozk_client(ttl) as client:
            yield AiozkLock(client, f"/{namespace}/{name}-aiozk")

    @contextlib.contextmanager
    def kazoo_client(ttl: float) -> Iterator[Any]:
        from kazoo.client import KazooClient

        client = KazooClient(hosts=hosts, timeout=ttl)
        client.start(timeout=15)
        try:
            yield client
        finally:
            client.stop()
            client.close()

    @contextlib.contextmanager
    def kazoo_lock(name: str, ttl: float) -> Iterator[SyncLocker]:
        with kazoo_client(ttl) as client:
            yield KazooLocker(client.Lock(f"/{namespace}/{name}-kazoo", "bench"))

    @contextlib.contextmanager
    def kazoo_election(name: str, ttl: float) -> Iterator[SyncLocker]:
        with kazoo_client(ttl) as client:
            yield KazooLocker(client.Election(f"/{namespace}/{name}-kazoo-election", "bench").lock)

    @contextlib.contextmanager
    def tooz_lock(name: str, ttl: float) -> Iterator[SyncLocker]:
        from tooz import coordination as tooz

        coordinator = tooz.get_coordinator(f"zookeeper://{hosts}?timeout={ttl:g}", uuid.uuid4().hex.encode())
        coordinator.start()
        try:
            yield ToozLocker(coordinator.get_lock(f"{namespace}-{name}".encode()))
        finally:
            coordinator.stop()

    async def write(key: str, seconds: float) -> list[float]:
        async with aiozk_client(10) as client:
            path = f"/{namespace}/{key}"
            await client.ensure_path(path)
            return await timed_writes(lambda i: client.set_data(path, b"%d" % i), seconds)

    async def raw_watch(key: str, samples: int) -> list[float]:
        path = f"/{namespace}/{key}-raw"
        async with aiozk_client(10) as writer, aiozk_client(10) as watcher:
            await writer.ensure_path(path)
            signal = Signal()
            ready = anyio.Event()

            async def watch() -> None:
                while True:
                    changed = watcher.wait_for_events([WatchEvent.DATA_CHANGED], path)
                    signal.arrived(await watcher.get_data(path, watch=True))
                    ready.set()
                    await changed

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await ready.wait()
                latencies = await writer_loop(signal, lambda v: writer.set_data(path, v), samples)
                tg.cancel_scope.cancel()
            return latencies

    async def kazoo_watch(key: str, samples: int) -> list[float]:
        path = f"/{namespace}/{key}-kazoo"

        def run() -> list[float]:
            import time

            with kazoo_client(10) as writer, kazoo_client(10) as watcher:
                writer.ensure_path(path)
                signal = Signal()
                ready = threading.Event()

                def seen(data: bytes | None, _stat: Any) -> None:
                    signal.arrived(data)
                    ready.set()

                watcher.DataWatch(path, seen)
                ready.wait(10)
                latencies: list[float] = []
                for i in range(samples + 5):
                    value = f"k{i}".encode()
                    start = time.perf_counter()
                    writer.set(path, value)
                    arrived = signal.wait_sync(value)
                    if i >= 5:
                        latencies.append(arrived - start)
                return latencies

        return await anyio.to_thread.run_sync(run)

    sdk = sdk_impls(url)
    return BackendImpls(
        backend="zookeeper",
        locks=[
            sdk[0],
            LockImpl("aiozk, same recipe by hand", "raw", open_async=raw, holder="raw-zookeeper"),
            LockImpl("aiozk Lock recipe", "peer", open_async=aiozk_lock),
            LockImpl("kazoo Lock (threads)", "peer", open_sync=kazoo_lock, holder="kazoo"),
            LockImpl("Tooz zookeeper driver (threads)", "peer", open_sync=tooz_lock),
            sdk[1],
            LockImpl("kazoo Election (threads)", "peer", open_sync=kazoo_election),
        ],
        watches=[
            sdk_watch(url),
            WatchImpl("aiozk get_data(watch=True) by hand", "raw", run=raw_watch),
            WatchImpl("kazoo DataWatch (threads)", "peer", run=kazoo_watch),
            WatchImpl("Tooz", "peer", unavailable="Tooz has no key watch"),
        ],
        write=write,
        write_name="aiozk set_data",
        ttl=ttl,
        failover_bound=ttl + 1,
        bound_text=f"TTL + 1 s = {ttl + 1:g} s",
    )
