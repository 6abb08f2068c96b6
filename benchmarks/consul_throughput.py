"""Uncontended lock acquire+release per second on Consul: this SDK next to hand-written py-consul.

One client, one lock name, nobody else contending; rounds of the three variants alternate so
that they share the same machine conditions:

* ``coordination``: ``held = await lock.acquire(); await held.release()`` - a guarded lock
  transaction that returns the token, then a release transaction that deletes the key;
* ``py-consul, same guarantees``: what ``consul lock`` does, plus reading the token -
  ``kv.put(acquire=)``, a consistent ``kv.get`` (the token), ``kv.put(release=)``, then the
  clean-up of the key (``kv.get`` and ``kv.delete(cas=)``);
* ``py-consul, minimal``: ``kv.put(acquire=)`` then ``kv.put(release=)`` - no token, no
  clean-up, no check that the key is a lock: the floor of any Consul lock.

    python benchmarks/consul_throughput.py                  # starts its own consul agent -dev
    python benchmarks/consul_throughput.py --rounds 5 --seconds 3
    python benchmarks/consul_throughput.py --url consul://127.0.0.1:8500
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import consul.aio  # type: ignore[import-untyped]

import coordination
from coordination.testing.servers import ConsulProcess
from coordination_consul import LOCK_FLAG_VALUE

Cycle = Callable[[], Awaitable[None]]


async def run_for(seconds: float, cycle: Cycle) -> float:
    """Cycles per second of ``cycle`` over ``seconds``."""
    count, start = 0, time.monotonic()
    deadline = start + seconds
    while time.monotonic() < deadline:
        await cycle()
        count += 1
    return count / (time.monotonic() - start)


def py_consul_client(host: str, port: int) -> Any:
    with warnings.catch_warnings():  # py-consul's aiohttp connector arguments are deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        return consul.aio.Consul(host=host, port=port)


async def main(url: str | None, rounds: int, seconds: float) -> None:
    server = None
    if url is None:
        server = ConsulProcess(session_ttl_min="1s").start()
        url = server.url
    host, _, port = url.removeprefix("consul://").split("/")[0].partition(":")
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    results: dict[str, list[float]] = {}
    try:
        async with coordination.connect(f"{url}/{namespace}", ttl=15, lock_delay=15) as coord:
            client = py_consul_client(host, int(port or 8500))
            session = await client.session.create(ttl=15, lock_delay=15)
            key, value = f"{namespace}/raw/.lock", coord.identity.encode()
            lock = coord.lock("sdk")

            async def sdk() -> None:
                held = await lock.acquire()
                await held.release()

            async def same_guarantees() -> None:
                if not await client.kv.put(key, value, acquire=session, flags=LOCK_FLAG_VALUE):
                    raise RuntimeError("not acquired")
                _, pair = await client.kv.get(key, consistency="consistent")
                assert pair["CreateIndex"] + pair["LockIndex"] - 1 > 0  # the token
                await client.kv.put(key, value, release=session, flags=LOCK_FLAG_VALUE)
                _, pair = await client.kv.get(key)
                if pair is not None and not pair.get("Session"):
                    await client.kv.delete(key, cas=pair["ModifyIndex"])

            async def minimal() -> None:
                if not await client.kv.put(key, value, acquire=session, flags=LOCK_FLAG_VALUE):
                    raise RuntimeError("not acquired")
                await client.kv.put(key, value, release=session, flags=LOCK_FLAG_VALUE)

            variants: dict[str, Cycle] = {
                "coordination (this SDK)": sdk,
                "py-consul, same guarantees": same_guarantees,
                "py-consul, minimal": minimal,
            }
            try:
                for cycle in variants.values():  # warm-up
                    await run_for(0.3, cycle)
                for _ in range(rounds):
                    for name, cycle in variants.items():
                        await client.session.renew(session)
                        results.setdefault(name, []).append(await run_for(seconds, cycle))
            finally:
                await client.session.destroy(session)
                await client.close()
    finally:
        if server is not None:
            server.close()
    print(f"Uncontended acquire+release per second, {rounds} rounds x {seconds:g}s each, {url}")
    print(f"{'variant':<28} {'median':>8} {'min':>8} {'max':>8}   requests per cycle")
    requests = {"coordination (this SDK)": 2, "py-consul, same guarantees": 5, "py-consul, minimal": 2}
    for name, rates in results.items():
        print(
            f"{name:<28} {statistics.median(rates):>8.0f} {min(rates):>8.0f} {max(rates):>8.0f}   "
            f"{requests[name]}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a Consul agent to use (default: start consul agent -dev)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    anyio.run(main, args.url, args.rounds, args.seconds)
