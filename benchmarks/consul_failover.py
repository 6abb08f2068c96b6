"""Crash failover on Consul: SIGKILL a process holding a lock, time until another process holds it.

A holder subprocess takes the lock through this SDK; this process waits for the same lock
(its acquire is blocked in a blocking query); the holder is SIGKILLed at a random point of
its renewal cycle and the time from the kill to this process holding the lock is measured.
Consul invalidates a session twice its TTL after its last renewal (renewals come every TTL/2,
so 1.5-2 x TTL after the kill), then refuses the lock to everyone for the lock-delay; the
waiter retries through the lock-delay at most 0.5 s apart. So the expected failover is about
1.5-2 x TTL + lock-delay (+ up to 0.5 s).

    python benchmarks/consul_failover.py                      # starts its own consul agent -dev
    python benchmarks/consul_failover.py --trials 5 --config 2:0 --config 5:1
    python benchmarks/consul_failover.py --url consul://127.0.0.1:8500   # an agent of yours
                                          # (its session_ttl_min must allow the TTLs)
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import time
import uuid

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

import coordination
from coordination import HeldLock
from coordination.testing.servers import ConsulProcess

HOLDER = """
import asyncio, sys
import coordination

async def main():
    url, ttl, lock_delay = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    async with coordination.connect(url, ttl=ttl, lock_delay=lock_delay) as coord:
        held = await coord.lock("failover").acquire()
        print("HELD", held.token, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def trial(url: str, ttl: float, lock_delay: float) -> float:
    """One kill; seconds from the SIGKILL to this process holding the lock."""
    url = f"{url}/failover-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-c", HOLDER, url, str(ttl), str(lock_delay)]
    async with await anyio.open_process(command, stderr=subprocess.STDOUT) as holder:
        assert holder.stdout is not None
        with anyio.fail_after(30):
            line = await BufferedByteReceiveStream(holder.stdout).receive_until(b"\n", 4096)
        if not line.startswith(b"HELD"):
            raise RuntimeError(f"the holder process said {line!r}")
        async with coordination.connect(url, ttl=ttl, lock_delay=lock_delay) as coord:
            got: list[HeldLock] = []
            taken = anyio.Event()

            async def wait_for_it() -> None:
                got.append(await coord.lock("failover").acquire())
                taken.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_for_it)
                # Kill at a random point of the holder's renewal cycle (renewals every ttl/2).
                await anyio.sleep(ttl + random.uniform(0, ttl / 2))
                holder.kill()
                killed = time.monotonic()
                with anyio.fail_after(2 * ttl + lock_delay + 30):
                    await taken.wait()
                failover = time.monotonic() - killed
            await got[0].release()
        await holder.wait()
    return failover


async def main(url: str | None, configs: list[tuple[float, float]], trials: int) -> None:
    server = None
    if url is None:
        server = ConsulProcess(session_ttl_min="1s").start()
        url = server.url
    try:
        print(f"Consul crash failover (SIGKILL of a holder process), {trials} trials per row, {url}")
        header = f"{'ttl':>5} {'lock_delay':>10} | {'min':>6} {'median':>6} {'max':>6}"
        print(f"{header} | expected ~1.5-2 x ttl + lock_delay")
        for ttl, lock_delay in configs:
            times = [await trial(url, ttl, lock_delay) for _ in range(trials)]
            low, high = 1.5 * ttl + lock_delay, 2 * ttl + lock_delay
            print(
                f"{ttl:>5g} {lock_delay:>10g} | {min(times):>6.2f} {statistics.median(times):>6.2f} "
                f"{max(times):>6.2f} | {low:g}-{high:g} s   (all: {', '.join(f'{t:.2f}' for t in times)})"
            )
    finally:
        if server is not None:
            server.close()


def parse_config(text: str) -> tuple[float, float]:
    ttl, _, lock_delay = text.partition(":")
    return float(ttl), float(lock_delay or 0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a Consul agent to use (default: start consul agent -dev)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument(
        "--config",
        action="append",
        type=parse_config,
        help="TTL:LOCK_DELAY in seconds (repeatable; default 2:0, 2:2, 5:1)",
    )
    args = parser.parse_args()
    anyio.run(main, args.url, args.config or [(2.0, 0.0), (2.0, 2.0), (5.0, 1.0)], args.trials)
