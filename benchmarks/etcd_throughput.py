"""Uncontended lock acquire + release per second on etcd: this SDK next to the same recipe
hand-written directly on aetcd, side by side in one run on the same server.

* ``coordination``: ``async with coord.lock(name)`` — the core's session state machine,
  cancellation handling and holding bookkeeping, over the etcd backend.
* ``aetcd, same RPCs``: etcd's ``Mutex`` recipe written by hand on aetcd's client and stubs,
  with exactly the requests the backend makes uncontended: one transaction that creates the
  key bound to a lease and reads the first key by create revision, then one transaction that
  deletes the key if its create revision is unchanged.
* ``aetcd, high-level API``: the recipe with aetcd's documented calls only
  (``transaction`` + ``get_prefix`` sorted by create revision + ``delete``), which cannot
  read the owner inside the transaction: one request more.

Rounds of each alternate, so that a noisy neighbour slows all of them alike; the median
round is shown.

    python benchmarks/etcd_throughput.py                      # etcd 3.4 and 3.5, started here
    python benchmarks/etcd_throughput.py --cycles 500 --rounds 7 --version 3.5
    python benchmarks/etcd_throughput.py --url etcd://127.0.0.1:2379
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import aetcd  # type: ignore[import-untyped]
import anyio
from aetcd import rpc

import coordination
from coordination import Coordinator
from coordination._url import parse_url
from coordination.testing.servers import EtcdProcess


async def sdk_cycles(coord: Coordinator, cycles: int) -> None:
    lock = coord.lock("bench")
    for _ in range(cycles):
        async with lock:
            pass


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


async def raw_cycles(client: aetcd.Client, lease: int, prefix: bytes, cycles: int) -> None:
    key = prefix + f"{lease:x}".encode()
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
    acquire = rpc.TxnRequest(
        compare=[absent],
        success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, lease=lease)), first],
        failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key)), first],
    )
    for _ in range(cycles):
        reply = await client.kvstub.Txn(acquire)
        revision = reply.header.revision
        owner = reply.responses[1].response_range.kvs
        assert reply.succeeded
        assert owner[0].create_revision == revision, "uncontended: owner at once"
        mine = rpc.Compare(
            result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=key, create_revision=revision
        )
        release = rpc.TxnRequest(
            compare=[mine], success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))]
        )
        await client.kvstub.Txn(release)


async def high_level_cycles(client: aetcd.Client, lease: aetcd.Lease, prefix: bytes, cycles: int) -> None:
    key = prefix + f"{lease.id:x}".encode()
    tx = client.transactions
    for _ in range(cycles):
        await client.transaction(
            compare=[tx.create(key) == 0], success=[tx.put(key, b"", lease)], failure=[tx.get(key)]
        )
        owner = await client.get_prefix(prefix, sort_order="ascend", sort_target="create")
        assert owner[0].key == key, "uncontended: owner at once"
        await client.delete(key)


async def rate(run: Callable[[], Awaitable[None]], cycles: int) -> float:
    start = time.perf_counter()
    await run()
    return cycles / (time.perf_counter() - start)


async def bench(url: str, label: str, cycles: int, rounds: int) -> None:
    parsed = parse_url(url)
    host, port = parsed.hosts[0]
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    async with (
        coordination.connect(f"{url}/{namespace}", ttl=10) as coord,
        aetcd.Client(host, port or 2379) as client,
    ):
        lease = await client.lease(60)
        raw_prefix = f"{namespace}/raw/".encode()
        high_prefix = f"{namespace}/high/".encode()
        runs: dict[str, Callable[[], Awaitable[None]]] = {
            "coordination": lambda: sdk_cycles(coord, cycles),
            "aetcd, same RPCs": lambda: raw_cycles(client, lease.id, raw_prefix, cycles),
            "aetcd, high-level API": lambda: high_level_cycles(client, lease, high_prefix, cycles),
        }
        for run in runs.values():  # warm up connections and code paths
            await run()
        results: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, run in runs.items():
                results[name].append(await rate(run, cycles))
        await lease.revoke()
    print(f"etcd {label}: uncontended acquire + release, {rounds} rounds x {cycles} cycles, {url}")
    base = statistics.median(results["aetcd, same RPCs"])
    for name, rates in results.items():
        median = statistics.median(rates)
        print(
            f"  {name:<22} {median:>7.0f}/s  ({1000 / median:.2f} ms per cycle, "
            f"{median / base:.2f} x same-RPC aetcd; rounds {min(rates):.0f}-{max(rates):.0f}/s)"
        )


async def main(url: str | None, versions: list[str], cycles: int, rounds: int) -> None:
    if url is not None:
        await bench(url, "(given)", cycles, rounds)
        return
    for version in versions:
        with EtcdProcess(version=version) as server:  # type: ignore[arg-type]
            await bench(server.url, version, cycles, rounds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="an etcd to use (default: start etcd 3.4 and 3.5 here)")
    parser.add_argument("--version", action="append", choices=["3.4", "3.5"], help="(repeatable)")
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    anyio.run(main, args.url, args.version or ["3.4", "3.5"], args.cycles, args.rounds)
