"""Scale: many contenders on one election, many watched keys on one session (this SDK)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
import time
from typing import Any

import anyio
from anyio.abc import TaskGroup

import coordination
from coordination import Leadership
from coordination.testing.proxy import FaultProxy

from ._harness import WAKEUPS, percentile, progress, rss_bytes


async def contenders(url: str, count: int, releases: int, ttl: float, **options: Any) -> dict[str, Any]:
    """``count`` sessions (one coordinator each, as ``count`` services would) campaign on one
    election; the leader resigns ``releases`` times. Client memory per contender, wake-ups and
    hand-over time per release."""
    rss_before = rss_bytes()
    started = time.perf_counter()
    leaders: list[tuple[float, Leadership]] = []
    arrived = [anyio.Event()]
    opened = [0]
    all_open, go = anyio.Event(), anyio.Event()
    limiter = anyio.CapacityLimiter(50)
    latencies: list[float] = []
    wakeups: list[int] = []
    async with anyio.create_task_group() as tg:

        async def member(i: int) -> None:
            # Each coordinator is entered and left in its own task.
            async with contextlib.AsyncExitStack() as stack:
                async with limiter:
                    coord = await stack.enter_async_context(coordination.connect(url, ttl=ttl, **options))
                opened[0] += 1
                if opened[0] % 250 == 0:
                    progress(f"  {opened[0]} sessions open")
                if opened[0] == count:
                    all_open.set()
                await go.wait()
                await anyio.sleep(i * 0.002)  # join in order
                leadership = await coord.election("big").campaign(b"x")
                leaders.append((time.perf_counter(), leadership))
                arrived[0].set()
                await anyio.sleep_forever()

        for i in range(count):
            tg.start_soon(member, i)
        await all_open.wait()
        opened_in = time.perf_counter() - started
        go.set()
        await arrived[0].wait()
        await anyio.sleep(count * 0.002 + 3.0)  # let every contender queue up
        rss_queued = rss_bytes()
        for _ in range(releases):
            arrived[0] = anyio.Event()
            _, leadership = leaders[-1]
            WAKEUPS.reset()
            released = time.perf_counter()
            await leadership.resign()
            with anyio.fail_after(120):
                await arrived[0].wait()
            latencies.append(leaders[-1][0] - released)
            await anyio.sleep(0.5)  # let every woken waiter settle before counting
            wakeups.append(WAKEUPS.count)
        progress(f"  closing {count} sessions")
        tg.cancel_scope.cancel()
    return {
        "contenders": count,
        "open_seconds": round(opened_in, 2),
        "client_kib_per_contender": round((rss_queued - rss_before) / count / 1024, 1),
        "wakeups_per_release": wakeups,
        "handover_ms": [round(x * 1000, 2) for x in latencies],
        "handover_p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "note": "one coordinator (own connection and session) per contender, all in this process",
    }


async def watches(
    scheme: str, host: str, port: int, namespace: str, count: int, window: float
) -> dict[str, Any]:
    """One coordinator watches ``count`` keys; client→server traffic at idle (through a
    counting proxy) with 1 watched key and with ``count``, and client memory per watch."""
    async with (
        FaultProxy(host, port) as proxy,
        coordination.connect(f"{scheme}://{proxy.address}/{namespace}") as coord,
        anyio.create_task_group() as tg,
    ):
        pending = [0]
        all_ready = anyio.Event()

        async def watch(key: str, group: TaskGroup) -> None:
            first = True
            async for _ in coord.config(key).watch():
                if first:
                    first = False
                    pending[0] -= 1
                    if pending[0] == 0:
                        all_ready.set()

        async def idle(label: str) -> dict[str, float]:
            await anyio.sleep(1.0)
            chunks, sent = proxy.chunks_up, proxy.bytes_up
            start = time.perf_counter()
            await anyio.sleep(window)
            elapsed = time.perf_counter() - start
            result = {
                "writes_per_s": round((proxy.chunks_up - chunks) / elapsed, 2),
                "bytes_per_s": round((proxy.bytes_up - sent) / elapsed, 1),
            }
            progress(f"  idle with {label}: {result['writes_per_s']} writes/s to the server")
            return result

        pending[0] = 1
        tg.start_soon(watch, "w/0", tg)
        await all_ready.wait()
        one = await idle("1 watched key")
        all_ready = anyio.Event()
        rss_before = rss_bytes()
        started = time.perf_counter()
        pending[0] = count - 1
        for i in range(1, count):
            tg.start_soon(watch, f"w/{i}", tg)
            if i % 500 == 0:
                await anyio.lowlevel.checkpoint()
        with anyio.fail_after(600):
            await all_ready.wait()
        setup = time.perf_counter() - started
        rss_after = rss_bytes()
        progress(f"  {count} watches set up in {setup:.1f}s")
        many = await idle(f"{count} watched keys")
        tg.cancel_scope.cancel()
    return {
        "keys": count,
        "setup_seconds": round(setup, 2),
        "client_kib_per_watch": round((rss_after - rss_before) / max(1, count - 1) / 1024, 2),
        "idle_1_key": one,
        f"idle_{count}_keys": many,
        "idle_window_s": window,
        "connections": proxy.connections,
    }


def _instrument(backend: str) -> None:
    if backend == "zookeeper":
        from . import _zookeeper as module
    elif backend == "etcd":
        from . import _etcd as module  # type: ignore[no-redef]
    else:
        from . import _consul as module  # type: ignore[no-redef]
    module.instrument()


def main() -> None:
    """``python -m benchmarks._scale election|watches BACKEND HOST PORT NAMESPACE COUNT ARG``:
    one scale measurement in a fresh process (its memory is then the measurement's own);
    the result as JSON on stdout."""
    kind, backend, host, port, namespace, count, arg = sys.argv[1:8]
    logging.getLogger("coordination").setLevel(logging.ERROR)
    _instrument(backend)
    result: dict[str, Any]
    if kind == "election":
        options: dict[str, Any] = {"lock_delay": 1.0} if backend == "consul" else {}
        url = f"{backend}://{host}:{port}/{namespace}"
        result = anyio.run(functools.partial(contenders, url, int(count), int(arg), 10.0, **options))
    else:
        result = anyio.run(watches, backend, host, int(port), namespace, int(count), float(arg))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
