"""What every measurement shares: implementations' interfaces, timing, statistics, progress.

An *implementation* is one way to take a lock (this SDK, the same recipe hand-written on
the raw client, a peer library). Async ones run as tasks on this event loop; threaded ones
(kazoo, Tooz) run their loops in threads, as their users run them, and the event loop waits.
Latencies are ``time.perf_counter()`` differences, valid across threads of one process.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import random
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio

Kind = Literal["sdk", "raw", "peer", "floor"]

# -- progress -------------------------------------------------------------------------------

STARTED = float(os.environ.get("BENCHMARKS_T0") or time.monotonic())
"""When the run started (CLOCK_MONOTONIC is one clock for every process of the machine)."""


def progress(message: str) -> None:
    """One line on stderr with the time since the run started."""
    elapsed = time.monotonic() - STARTED
    print(f"[{int(elapsed // 60):02d}:{elapsed % 60:04.1f}] {message}", file=sys.stderr, flush=True)


# -- wake-ups ---------------------------------------------------------------------------------


class _WakeCounter:
    """Counts how often a *waiting* contender got control back from the server.

    Each implementation increments it where its waiters wake: a watch event delivered to
    a waiter (ZooKeeper, etcd), a blocking query that returned or a poll that was answered
    (Consul, Tooz on etcd). Measurements run one at a time, so one counter suffices.
    """

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def hit(self, n: int = 1) -> None:
        with self._lock:
            self.count += n

    def reset(self) -> None:
        with self._lock:
            self.count = 0


WAKEUPS = _WakeCounter()


# -- statistics -------------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation; NaN for no samples."""
    if not samples:
        return math.nan
    data = sorted(samples)
    position = (len(data) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (position - low)


QUANTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9)


def quantiles(samples: Sequence[float]) -> dict[str, float]:
    """Quantiles in milliseconds, kept in the JSON for the plot."""
    return {f"p{q:g}": round(percentile(samples, q) * 1000, 4) for q in QUANTILES}


def rss_bytes() -> int:
    """Resident memory of this process (Linux), after a garbage collection."""
    gc.collect()
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


# -- implementations --------------------------------------------------------------------------


class AsyncLocker(Protocol):
    """One session's contender for one lock (or election) name."""

    async def acquire(self) -> None: ...

    async def release(self) -> None: ...


class SyncLocker(Protocol):
    """A threaded library's contender: ``acquire`` blocks, ``cancel`` (from another thread)
    makes a blocked ``acquire`` return False."""

    def acquire(self) -> bool: ...

    def release(self) -> None: ...

    def cancel(self) -> None: ...


OpenAsync = Callable[[str, float], AbstractAsyncContextManager[AsyncLocker]]
"""(name, ttl) -> a connected session with a contender for ``name``."""
OpenSync = Callable[[str, float], AbstractContextManager[SyncLocker]]


@dataclass
class LockImpl:
    """A lock or election implementation on one backend."""

    name: str
    kind: Kind
    open_async: OpenAsync | None = None
    open_sync: OpenSync | None = None
    holder: str | None = None
    """Name of its crash-failover holder in ``benchmarks.holder`` (None: not measured)."""
    unavailable: str | None = None
    """Why it cannot run here (shown as ``n/a: ...``)."""
    note: str = ""


WatchRun = Callable[[str, int], Awaitable[list[float]]]
"""(key, samples) -> latencies from a write in one session to the event in another."""


@dataclass
class WatchImpl:
    name: str
    kind: Kind
    run: WatchRun | None = None
    unavailable: str | None = None


WriteRun = Callable[[str, float], Awaitable[list[float]]]
"""(key, seconds) -> latencies of single raw writes, one after another."""


@dataclass
class BackendImpls:
    """Everything measured on one backend."""

    backend: str
    locks: list[LockImpl]
    watches: list[WatchImpl]
    write: WriteRun
    write_name: str
    ttl: float
    failover_bound: float
    bound_text: str
    failover_extra: dict[str, Any] = field(default_factory=dict)


# -- measurements -----------------------------------------------------------------------------


@dataclass
class Run:
    """One measurement of one implementation."""

    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    wakeups: int = 0
    releases: int = 0
    error: str | None = None

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else math.nan

    def summary(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "n": len(self.latencies),
            "ops_per_s": round(self.rate, 1),
            "p50_ms": round(percentile(self.latencies, 50) * 1000, 3),
            "p99_ms": round(percentile(self.latencies, 99) * 1000, 3),
        }
        if self.releases:
            result["wakeups_per_release"] = round(self.wakeups / self.releases, 3)
        if self.error:
            result["error"] = self.error
        return result


async def uncontended(impl: LockImpl, name: str, ttl: float, seconds: float) -> Run:
    """Acquire + release, one after another, nobody else contending, for ``seconds``."""
    run = Run()
    if impl.open_async is not None:
        async with impl.open_async(name, ttl) as locker:
            for _ in range(20):  # warm up: parent nodes, connections, code paths
                await locker.acquire()
                await locker.release()
            start = time.perf_counter()
            deadline = start + seconds
            now = start
            while now < deadline:
                await locker.acquire()
                await locker.release()
                then, now = now, time.perf_counter()
                run.latencies.append(now - then)
            run.seconds = now - start
        return run
    assert impl.open_sync is not None
    open_sync = impl.open_sync

    def loop() -> None:
        with open_sync(name, ttl) as locker:
            for _ in range(20):
                locker.acquire()
                locker.release()
            start = time.perf_counter()
            deadline = start + seconds
            now = start
            while now < deadline:
                locker.acquire()
                locker.release()
                then, now = now, time.perf_counter()
                run.latencies.append(now - then)
            run.seconds = now - start

    await anyio.to_thread.run_sync(loop)
    return run


@dataclass
class _Chain:
    """The shared state of a hand-over chain: when the last holder began its release."""

    waiting: int
    target: int
    warmup: int
    deadline: float
    hold: float
    released_at: float | None = None
    handovers: int = 0
    measuring_since: float = 0.0
    run: Run = field(default_factory=Run)
    done: threading.Event = field(default_factory=threading.Event)
    holders: set[int] = field(default_factory=set)

    def took(self, who: int) -> bool:
        """The contender ``who`` holds the lock now; False once the chain is complete."""
        now = time.perf_counter()
        if self.holders:
            raise AssertionError(f"two holders at once: {self.holders} and {who}")
        self.holders.add(who)
        if self.released_at is not None:
            self.handovers += 1
            if self.handovers == self.warmup:
                WAKEUPS.reset()
                self.measuring_since = now
            elif self.handovers > self.warmup:
                self.run.latencies.append(now - self.released_at)
        if len(self.run.latencies) >= self.target or (now > self.deadline and self.run.latencies):
            self.run.seconds = now - self.measuring_since
            self.run.wakeups = WAKEUPS.count
            self.run.releases = len(self.run.latencies)
            self.done.set()
            return False
        return True

    def releasing(self, who: int) -> int:
        """``who`` starts its release; returns the hand-over count to pass to :meth:`taken`."""
        self.holders.discard(who)
        self.released_at = time.perf_counter()
        return self.handovers

    def taken(self, count: int) -> bool:
        """Whether another contender took the lock since (a releaser queues again only then:
        on a lock that is not a queue it would otherwise take it back at once)."""
        return self.handovers > count or self.done.is_set()


async def handover(impl: LockImpl, name: str, ttl: float, waiting: int, target: int, cap: float) -> Run:
    """``waiting`` contenders queue behind a holder; each holder holds briefly, releases, and
    queues again once the next holder runs, so every release has ``waiting`` waiters.

    Measures release start → the next holder running, and the wake-ups per release."""
    sessions = waiting + 1
    chain = _Chain(waiting, target, warmup=3, deadline=math.inf, hold=0.01)
    if impl.open_async is not None:
        open_async = impl.open_async
        opened = [0]
        all_open, start = anyio.Event(), anyio.Event()
        async with anyio.create_task_group() as tg:

            async def contend(who: int) -> None:
                # Each session is opened and closed in its own task (a coordinator's task group
                # must be left in the task that entered it).
                async with open_async(name, ttl) as locker:
                    opened[0] += 1
                    if opened[0] == sessions:
                        all_open.set()
                    await start.wait()
                    await anyio.sleep(who * 0.002)  # queue in order
                    while True:
                        await locker.acquire()
                        if not chain.took(who):
                            tg.cancel_scope.cancel()
                            return
                        await anyio.sleep(chain.hold)
                        count = chain.releasing(who)
                        await locker.release()
                        while not chain.taken(count):  # noqa: ASYNC110 - set from threads too
                            await anyio.sleep(0.001)

            for who in range(sessions):
                tg.start_soon(contend, who)
            await all_open.wait()
            chain.deadline = time.perf_counter() + cap
            start.set()
        return chain.run
    assert impl.open_sync is not None
    open_sync = impl.open_sync
    opened: list[SyncLocker] = []
    ready = threading.Barrier(sessions + 1)
    failures: list[BaseException] = []

    def contend(who: int) -> None:
        try:
            with open_sync(name, ttl) as locker:
                opened.append(locker)
                ready.wait(60)
                time.sleep(who * 0.002)
                while not chain.done.is_set():
                    if not locker.acquire():
                        return
                    if not chain.took(who):
                        chain.holders.discard(who)
                        locker.release()
                        return
                    time.sleep(chain.hold)
                    count = chain.releasing(who)
                    locker.release()
                    while not chain.taken(count):
                        time.sleep(0.001)
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:  # shown in the table, not lost in a thread
            failures.append(exc)
            chain.done.set()

    threads = [threading.Thread(target=contend, args=(who,), daemon=True) for who in range(sessions)]
    for thread in threads:
        thread.start()
    await anyio.to_thread.run_sync(ready.wait, 120)
    chain.deadline = time.perf_counter() + cap
    await anyio.to_thread.run_sync(chain.done.wait, cap + 60)
    while any(thread.is_alive() for thread in threads):
        for locker in opened:
            with contextlib.suppress(Exception):
                locker.cancel()
        await anyio.sleep(0.05)
    if failures:
        chain.run.error = f"{type(failures[0]).__name__}: {failures[0]}"
    return chain.run


async def raw_writes(write: WriteRun, key: str, seconds: float) -> Run:
    start = time.perf_counter()
    latencies = await write(key, seconds)
    return Run(latencies=latencies, seconds=time.perf_counter() - start)


async def watch_latency(impl: WatchImpl, key: str, samples: int) -> Run:
    assert impl.run is not None
    start = time.perf_counter()
    latencies = await impl.run(key, samples)
    return Run(latencies=latencies, seconds=time.perf_counter() - start)


# -- helpers for implementations --------------------------------------------------------------


class Signal:
    """A value handed from a watcher (task or thread) to the writer, with its arrival time."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._seen: dict[bytes, float] = {}

    def arrived(self, value: bytes | None) -> None:
        if value is None:
            return
        now = time.perf_counter()
        with self._cond:
            self._seen.setdefault(value, now)
            self._cond.notify_all()

    def wait_sync(self, value: bytes, timeout: float = 10.0) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: value in self._seen, timeout):
                raise TimeoutError(f"no watch event for {value!r} within {timeout}s")
            return self._seen.pop(value)

    async def wait(self, value: bytes, timeout: float = 10.0) -> float:
        with anyio.fail_after(timeout):
            while True:
                with self._cond:
                    if value in self._seen:
                        return self._seen.pop(value)
                await anyio.sleep(0.0002)


async def writer_loop(signal: Signal, write: Callable[[bytes], Awaitable[Any]], samples: int) -> list[float]:
    """Write ``samples`` distinct values; each latency is write start → the watcher saw it."""
    latencies: list[float] = []
    for i in range(samples + 5):
        value = f"v{i}-{random.random()}".encode()
        start = time.perf_counter()
        await write(value)
        seen = await signal.wait(value)
        if i >= 5:  # warm-up
            latencies.append(seen - start)
    return latencies


async def timed_writes(write: Callable[[int], Awaitable[Any]], seconds: float) -> list[float]:
    for i in range(20):
        await write(i)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    i = 0
    while True:
        start = time.perf_counter()
        if start >= deadline:
            return latencies
        await write(i)
        latencies.append(time.perf_counter() - start)
        i += 1


@contextlib.asynccontextmanager
async def shielded(seconds: float = 5.0) -> AsyncIterator[None]:
    """For clean-ups that must run even when the task was cancelled (bounded in time)."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(seconds):
        yield


@contextlib.contextmanager
def quiet_threads() -> Iterator[None]:
    """Threads a library leaves behind at shutdown may print; keep the progress readable."""
    hook = threading.excepthook
    threading.excepthook = lambda args: None
    try:
        yield
    finally:
        threading.excepthook = hook


async def aiter_first(iterator: AsyncIterator[Any]) -> Any:
    return await iterator.__anext__()
