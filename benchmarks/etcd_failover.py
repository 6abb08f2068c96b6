"""Crash failover on etcd: SIGKILL a process holding a lock, time until another process holds it.

A holder subprocess takes the lock through this SDK; this process waits for the same lock
(its acquire watches the holder's key); the holder is SIGKILLed at a random point of its
keepalive cycle, and the time from the kill to this process holding the lock is measured.
etcd expires the lease a TTL after the last renewal (renewals come every TTL/3, so 2/3 to
1 x TTL after the kill; etcd's lessor looks for expired leases every 500 ms), deletes the
holder's key, and the waiter's watch fires. So the expected failover is about
0.67-1 x TTL, plus up to 0.5 s.

    python benchmarks/etcd_failover.py                        # etcd 3.4 and 3.5, started here
    python benchmarks/etcd_failover.py --trials 5 --ttl 2 --ttl 5 --version 3.5
    python benchmarks/etcd_failover.py --url etcd://127.0.0.1:2379   # an etcd of yours
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import uuid

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

import coordination
from coordination import HeldLock
from coordination.testing.servers import EtcdProcess


async def trial(url: str, ttl: float) -> float:
    """One kill; seconds from the SIGKILL to this process holding the lock."""
    url = f"{url}/failover-{uuid.uuid4().hex[:8]}?ttl={ttl:g}"
    command = [sys.executable, "-m", "coordination.testing.holder", url, "failover"]
    async with await anyio.open_process(command, stderr=None) as holder:
        assert holder.stdout is not None
        with anyio.fail_after(30):
            line = await BufferedByteReceiveStream(holder.stdout).receive_until(b"\n", 4096)
        if not line.startswith(b"held"):
            raise RuntimeError(f"the holder process said {line!r}")
        async with coordination.connect(url) as coord:
            got: list[HeldLock] = []
            taken = anyio.Event()

            async def wait_for_it() -> None:
                got.append(await coord.lock("failover").acquire())
                taken.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_for_it)
                # Kill at a random point of the holder's keepalive cycle (every ttl/3).
                await anyio.sleep(ttl + random.uniform(0, ttl / 3))
                holder.kill()
                killed = time.monotonic()
                with anyio.fail_after(ttl + 30):
                    await taken.wait()
                failover = time.monotonic() - killed
            await got[0].release()
        await holder.wait()
    return failover


async def run(url: str, label: str, ttls: list[float], trials: int) -> None:
    print(f"etcd {label}: crash failover (SIGKILL of a holder process), {trials} trials per row, {url}")
    print(f"{'ttl':>5} | {'min':>6} {'median':>6} {'max':>6} | expected ~0.67-1 x ttl (+ up to 0.5 s)")
    for ttl in ttls:
        times = [await trial(url, ttl) for _ in range(trials)]
        print(
            f"{ttl:>5g} | {min(times):>6.2f} {statistics.median(times):>6.2f} {max(times):>6.2f} | "
            f"{ttl * 2 / 3:.2f}-{ttl:g} s   (all: {', '.join(f'{t:.2f}' for t in times)})"
        )


async def main(url: str | None, versions: list[str], ttls: list[float], trials: int) -> None:
    if url is not None:
        await run(url, "(given)", ttls, trials)
        return
    for version in versions:
        with EtcdProcess(version=version) as server:  # type: ignore[arg-type]
            await run(server.url, version, ttls, trials)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="an etcd to use (default: start etcd 3.4 and 3.5 here)")
    parser.add_argument("--version", action="append", choices=["3.4", "3.5"], help="(repeatable)")
    parser.add_argument("--ttl", action="append", type=float, help="seconds (repeatable; default 2, 5)")
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    anyio.run(main, args.url, args.version or ["3.4", "3.5"], args.ttl or [2.0, 5.0], args.trials)
