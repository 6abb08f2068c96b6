"""This SDK as a benchmark implementation: locks, elections, watches (any backend)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio

import coordination
from coordination import HeldLock, Leadership

from ._harness import AsyncLocker, LockImpl, Signal, WatchImpl, WriteRun, timed_writes, writer_loop


class SdkLock:
    def __init__(self, coord: coordination.Coordinator, name: str) -> None:
        self._lock = coord.lock(name)
        self._held: HeldLock | None = None

    async def acquire(self) -> None:
        self._held = await self._lock.acquire()

    async def release(self) -> None:
        assert self._held is not None
        await self._held.release()


class SdkElection:
    def __init__(self, coord: coordination.Coordinator, name: str) -> None:
        self._election = coord.election(name)
        self._leadership: Leadership | None = None

    async def acquire(self) -> None:
        self._leadership = await self._election.campaign(b"candidate")

    async def release(self) -> None:
        assert self._leadership is not None
        await self._leadership.resign()


def sdk_impls(url: str, **options: Any) -> list[LockImpl]:
    """``coord.lock()`` and ``coord.election()`` over ``url`` (with its namespace)."""

    @contextlib.asynccontextmanager
    async def lock(name: str, ttl: float) -> AsyncIterator[AsyncLocker]:
        async with coordination.connect(url, ttl=ttl, **options) as coord:
            yield SdkLock(coord, name)

    @contextlib.asynccontextmanager
    async def election(name: str, ttl: float) -> AsyncIterator[AsyncLocker]:
        async with coordination.connect(url, ttl=ttl, **options) as coord:
            yield SdkElection(coord, name + "-election")

    return [
        LockImpl("coordination lock", "sdk", open_async=lock, holder="sdk"),
        LockImpl("coordination election", "sdk", open_async=election),
    ]


def sdk_watch(url: str, **options: Any) -> WatchImpl:
    async def run(key: str, samples: int) -> list[float]:
        async with (
            coordination.connect(url, **options) as writer,
            coordination.connect(url, **options) as watcher,
        ):
            signal = Signal()
            ready = anyio.Event()
            config = watcher.config(key)

            async def watch() -> None:
                async for item in config.watch():
                    ready.set()
                    signal.arrived(item.value if item is not None else None)

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await ready.wait()
                latencies = await writer_loop(signal, writer.config(key).set, samples)
                tg.cancel_scope.cancel()
            return latencies

    return WatchImpl("coordination config.watch()", "sdk", run=run)


def sdk_writes(url: str, **options: Any) -> dict[str, WriteRun]:
    """``config.set`` plain, and guarded by a held lock (the server checks the lock in the
    same atomic operation), one write after another on one session."""

    async def plain(key: str, seconds: float) -> list[float]:
        async with coordination.connect(url, **options) as coord:
            config = coord.config(key)
            return await timed_writes(lambda i: config.set(b"%d" % i), seconds)

    async def guarded(key: str, seconds: float) -> list[float]:
        async with coordination.connect(url, **options) as coord:
            config = coord.config(key)
            async with coord.lock(key + "-guard") as held:
                return await timed_writes(lambda i: config.set(b"%d" % i, guard=held), seconds)

    return {"coordination config.set": plain, "coordination config.set, guarded by a lock": guarded}
