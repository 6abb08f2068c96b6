"""Run the benchmark suite: ``python -m benchmarks --help``."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import platform
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from coordination.testing.servers import EtcdProcess, ServerProcess, ZooKeeperProcess

from . import _harness as h
from ._harness import BackendImpls, LockImpl, WatchImpl, progress

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
BACKENDS = ("zookeeper", "etcd", "consul")
SECTIONS = ("uncontended", "handover", "watch", "writes", "failover", "scale")
TTL = 2.0
"""Session TTL (seconds) of the failover measurement, on every backend."""
CONSUL_LOCK_DELAY = 1.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="This SDK next to the raw clients and the peer libraries, on real servers "
        "started on loopback (or the ones given). Writes benchmarks/results/results.{json,md} "
        "and latency.png; progress goes to stderr.",
    )
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated (default: all)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated (default: all)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds of each measurement")
    parser.add_argument("--quick", action="store_true", help="short rounds and small scale (a smoke run)")
    parser.add_argument("--etcd-version", choices=["3.4", "3.5"], default="3.5")
    parser.add_argument(
        "--zookeeper", metavar="HOST:PORT", help="reuse this ZooKeeper instead of starting one"
    )
    parser.add_argument("--etcd", metavar="HOST:PORT", help="reuse this etcd instead of starting one")
    parser.add_argument(
        "--consul", metavar="HOST:PORT", help="reuse this Consul agent (its session_ttl_min <= 2s)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--report-only", action="store_true", help="only render results.md again from results.json (no runs)"
    )
    return parser.parse_args(argv)


class Settings:
    def __init__(self, args: argparse.Namespace) -> None:
        quick = args.quick
        self.repeat = max(1, args.repeat)
        self.seconds = 0.5 if quick else 1.5
        self.handover_target = 20 if quick else 60
        self.handover_cap = 3.0 if quick else 8.0
        self.waiting = (8, 64)
        self.watch_samples = 50 if quick else 200
        self.failover_trials = 1 if quick else self.repeat
        self.scale_contenders = 100 if quick else 1000
        self.scale_releases = 2 if quick else 5
        self.scale_watches = 500 if quick else 10_000
        self.scale_watches_consul = 200 if quick else 1000
        self.scale_window = 4.0 if quick else 16.0


def _env() -> dict[str, str]:
    """This process's environment, with the repository importable (for ``-m benchmarks.*``)."""
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "BENCHMARKS_T0": str(h.STARTED),
        "PYTHONPATH": os.pathsep.join([str(ROOT), path] if path else [str(ROOT)]),
    }


def rotated(items: list[Any], round_: int) -> list[Any]:
    """The items in a different order each round: nobody always runs first (or last)."""
    shift = round_ % len(items) if items else 0
    return items[shift:] + items[:shift]


# -- servers --------------------------------------------------------------------------------


@contextlib.contextmanager
def server_for(backend: str, args: argparse.Namespace) -> Iterator[tuple[str, int, str]]:
    """(host, port, description) of a running server: the one given, else one started here."""
    given = getattr(args, backend)
    if given:
        host, _, port = given.rpartition(":")
        yield host or "127.0.0.1", int(port), f"{backend} at {given} (given)"
        return
    process: ServerProcess
    if backend == "zookeeper":
        process = ZooKeeperProcess(tick_time_ms=100)
        what = "ZooKeeper (Debian's 3.8 jars), tickTime 100 ms"
    elif backend == "etcd":
        process = EtcdProcess(version=args.etcd_version)
        what = f"etcd {args.etcd_version}, single member"
    else:
        from ._consul import BenchConsulProcess

        process = BenchConsulProcess(session_ttl_min="1s")
        what = "Consul agent -dev (in memory), session_ttl_min 1s"
    with process:
        progress(f"{backend}: started {what} on {process.address}")
        yield process.host, process.port, what


def implementations(
    backend: str, host: str, port: int, namespace: str, args: argparse.Namespace
) -> BackendImpls:
    if backend == "zookeeper":
        from . import _zookeeper

        _zookeeper.instrument()
        return _zookeeper.zookeeper_impls(host, port, namespace, TTL)
    if backend == "etcd":
        from . import _etcd

        _etcd.instrument()
        return _etcd.etcd_impls(host, port, namespace, TTL, args.etcd_version)
    from . import _consul

    _consul.instrument()
    return _consul.consul_impls(host, port, namespace, TTL, CONSUL_LOCK_DELAY)


# -- sections ---------------------------------------------------------------------------------


def _entry(kind: str, unavailable: str | None) -> dict[str, Any]:
    return {"kind": kind, "unavailable": unavailable} if unavailable else {"kind": kind, "rounds": []}


def _record(
    store: dict[str, Any], name: str, impl_kind: str, run: h.Run, samples: dict[str, list[float]]
) -> None:
    entry = store.setdefault(name, {"kind": impl_kind, "rounds": []})
    entry["rounds"].append(run.summary())
    samples.setdefault(name, []).extend(run.latencies)


Measure = Callable[[str], Awaitable[h.Run]]
"""One measurement of one implementation, on a key (or name) of its own."""


async def _interleaved(
    backend: str,
    section: str,
    cfg: Settings,
    out: dict[str, Any],
    samples: dict[str, list[float]],
    measures: dict[str, Measure],
    *,
    rate: bool = True,
) -> None:
    """Run each of ``measures`` once per round, in an order rotated round by round, and record
    every run under its name in ``out`` (whose entries are made already)."""
    for r in range(cfg.repeat):
        for name in rotated(list(measures), r):
            try:
                run = await measures[name](f"{section}-{r}-{uuid.uuid4().hex[:6]}")
            except Exception as exc:
                run = h.Run(error=f"{type(exc).__name__}: {exc}")
            _record(out, name, out[name]["kind"], run, samples)
            s = run.summary()
            progress(
                f"{backend} {section} [{r + 1}/{cfg.repeat}] {name}: "
                + (f"{s['ops_per_s']:.0f}/s " if rate else "")
                + f"p50 {s['p50_ms']} ms p99 {s['p99_ms']} ms"
                + (f" ERROR {run.error}" if run.error else "")
            )


async def section_uncontended(
    impls: BackendImpls, cfg: Settings, out: dict[str, Any], samples: dict[str, list[float]]
) -> None:
    writer = LockImpl(f"one raw write ({impls.write_name})", "floor")
    for impl in [*impls.locks, writer]:
        out[impl.name] = _entry(impl.kind, impl.unavailable)
    measures: dict[str, Measure] = {
        impl.name: functools.partial(h.uncontended, impl, ttl=30.0, seconds=cfg.seconds)
        for impl in impls.locks
        if impl.unavailable is None
    }
    measures[writer.name] = functools.partial(h.raw_writes, impls.write, seconds=cfg.seconds)
    await _interleaved(impls.backend, "uncontended", cfg, out, samples, measures)


async def section_handover(
    impls: BackendImpls, cfg: Settings, out: dict[str, Any], samples: dict[str, list[float]]
) -> None:
    runnable = [impl for impl in impls.locks if impl.unavailable is None]
    for waiting in cfg.waiting:
        table = out.setdefault(str(waiting), {})
        for impl in impls.locks:
            table[impl.name] = _entry(impl.kind, impl.unavailable)
    for r in range(cfg.repeat):
        for waiting in cfg.waiting:
            table = out[str(waiting)]
            for impl in rotated(runnable, r):
                name = f"h{waiting}-{r}-{uuid.uuid4().hex[:6]}"
                try:
                    with anyio.fail_after(cfg.handover_cap + 180):
                        run = await h.handover(
                            impl, name, 30.0, waiting, cfg.handover_target, cfg.handover_cap
                        )
                except Exception as exc:
                    run = h.Run(error=f"{type(exc).__name__}: {exc}")
                _record(table, impl.name, impl.kind, run, samples if waiting == cfg.waiting[0] else {})
                s = run.summary()
                progress(
                    f"{impls.backend} hand-over, {waiting} waiting [{r + 1}/{cfg.repeat}] {impl.name}: "
                    f"p50 {s['p50_ms']} ms p99 {s['p99_ms']} ms, "
                    f"{s.get('wakeups_per_release', math.nan)} wake-ups/release ({s['n']} hand-overs)"
                    + (f" ERROR {run.error}" if run.error else "")
                )


async def section_watch(
    impls: BackendImpls, cfg: Settings, out: dict[str, Any], samples: dict[str, list[float]]
) -> None:
    for impl in impls.watches:
        out[impl.name] = _entry(impl.kind, impl.unavailable)

    def measure(impl: WatchImpl) -> Measure:
        async def run(key: str) -> h.Run:
            with anyio.fail_after(120):
                return await h.watch_latency(impl, key, cfg.watch_samples)

        return run

    measures = {impl.name: measure(impl) for impl in impls.watches if impl.unavailable is None}
    await _interleaved(impls.backend, "watch", cfg, out, samples, measures, rate=False)


async def section_writes(
    impls: BackendImpls, cfg: Settings, url: str, out: dict[str, Any], samples: dict[str, list[float]]
) -> None:
    """Config writes one after another: plain, guarded by a held lock, and the raw client's."""
    from ._sdk import sdk_writes

    writes = {**sdk_writes(url), f"one raw write ({impls.write_name})": impls.write}
    for name in writes:
        out[name] = _entry("floor" if name.startswith("one raw write") else "sdk", None)
    measures: dict[str, Measure] = {
        name: functools.partial(h.raw_writes, write, seconds=cfg.seconds) for name, write in writes.items()
    }
    await _interleaved(impls.backend, "writes", cfg, out, samples, measures)


async def failover_trial(
    impl: LockImpl, url: str, name: str, ttl: float, lock_delay: float, bound: float
) -> float:
    """SIGKILL a holder process at a random point of its keepalive cycle; seconds until the
    waiter here holds the lock."""
    assert impl.holder is not None
    command = [sys.executable, "-m", "benchmarks.holder", impl.holder, url, name, str(ttl), str(lock_delay)]
    async with await anyio.open_process(command, cwd=ROOT, env=_env()) as holder:
        try:
            assert holder.stdout is not None
            with anyio.fail_after(60):
                line = await BufferedByteReceiveStream(holder.stdout).receive_until(b"\n", 4096)
            if not line.startswith(b"held"):
                raise RuntimeError(f"the holder said {line!r}")
            acquired: list[float] = []
            done = anyio.Event()
            if impl.open_async is not None:
                async with impl.open_async(name, ttl) as locker, anyio.create_task_group() as tg:

                    async def wait() -> None:
                        await locker.acquire()
                        acquired.append(time.perf_counter())
                        done.set()

                    tg.start_soon(wait)
                    await anyio.sleep(0.5 + random.uniform(0, ttl / 2))  # queued; any point of the cycle
                    holder.kill()
                    killed = time.perf_counter()
                    with anyio.fail_after(bound + 30):
                        await done.wait()
                    await locker.release()
            else:
                assert impl.open_sync is not None
                with impl.open_sync(name, ttl) as sync_locker:
                    async with anyio.create_task_group() as tg:

                        async def wait_sync() -> None:
                            await anyio.to_thread.run_sync(sync_locker.acquire, abandon_on_cancel=True)
                            acquired.append(time.perf_counter())
                            done.set()

                        tg.start_soon(wait_sync)
                        await anyio.sleep(0.5 + random.uniform(0, ttl / 2))
                        holder.kill()
                        killed = time.perf_counter()
                        with anyio.fail_after(bound + 30):
                            await done.wait()
                    await anyio.to_thread.run_sync(sync_locker.release)
            return acquired[0] - killed
        finally:
            with contextlib.suppress(ProcessLookupError):
                holder.kill()


async def section_failover(impls: BackendImpls, cfg: Settings, url: str, out: dict[str, Any]) -> None:
    runnable = [impl for impl in impls.locks if impl.holder is not None and impl.unavailable is None]
    lock_delay = float(impls.failover_extra.get("lock_delay", 0.0))
    for impl in runnable:
        out[impl.name] = {"kind": impl.kind, "trials": [], "ttl": impls.ttl, "bound": impls.failover_bound}
    for trial in range(cfg.failover_trials):
        for impl in rotated(runnable, trial):
            name = f"failover-{trial}-{uuid.uuid4().hex[:6]}"
            try:
                seconds = await failover_trial(impl, url, name, impls.ttl, lock_delay, impls.failover_bound)
                out[impl.name]["trials"].append(round(seconds, 3))
                progress(
                    f"{impls.backend} failover [{trial + 1}/{cfg.failover_trials}] {impl.name}: "
                    f"{seconds:.2f}s"
                )
            except Exception as exc:
                out[impl.name].setdefault("errors", []).append(f"{type(exc).__name__}: {exc}")
                progress(f"{impls.backend} failover {impl.name}: ERROR {type(exc).__name__}: {exc}")


async def _scale_process(args: list[str]) -> dict[str, Any]:
    """One scale measurement in a fresh process (``benchmarks._scale``): its memory is its own."""
    command = [sys.executable, "-m", "benchmarks._scale", *args]
    with anyio.fail_after(900):
        done = await anyio.run_process(command, cwd=ROOT, env=_env(), stderr=None, check=False)
    if done.returncode != 0:
        return {"error": f"the scale process exited with status {done.returncode}"}
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


async def section_scale(
    backend: str, host: str, port: int, namespace: str, cfg: Settings, out: dict[str, Any]
) -> None:
    releases = min(cfg.scale_releases, 3) if backend == "consul" else cfg.scale_releases
    progress(f"{backend} scale: {cfg.scale_contenders} contenders on one election")
    where = [backend, host, str(port)]
    out["election"] = await _scale_process(
        ["election", *where, f"{namespace}-scale", str(cfg.scale_contenders), str(releases)]
    )
    progress(f"{backend} scale: {out['election']}")
    count = cfg.scale_watches_consul if backend == "consul" else cfg.scale_watches
    window = cfg.scale_window + (4 if backend == "consul" else 0)
    progress(f"{backend} scale: {count} watched keys on one session")
    out["watches"] = await _scale_process(
        ["watches", *where, f"{namespace}-watches", str(count), str(window)]
    )
    if backend == "consul" and "error" not in out["watches"]:
        out["watches"]["note"] = (
            f"{count:,} keys, not {cfg.scale_watches:,}: each watch is a blocking query holding its own "
            "HTTP connection, and the counting proxy needs two more sockets per connection "
            "(this machine allows 20,000 open files per process)"
        )
    progress(f"{backend} scale: {out['watches']}")


# -- main -------------------------------------------------------------------------------------


async def run_backend(backend: str, args: argparse.Namespace, cfg: Settings, results: dict[str, Any]) -> None:
    sections = set(args.sections.split(","))
    with server_for(backend, args) as (host, port, what):
        namespace = f"bench-{uuid.uuid4().hex[:8]}"
        impls = implementations(backend, host, port, namespace, args)
        url = f"{backend}://{host}:{port}/{namespace}"
        data: dict[str, Any] = {
            "server": what,
            "ttl": impls.ttl,
            "failover_bound": impls.failover_bound,
            "failover_bound_text": impls.bound_text,
            **impls.failover_extra,
        }
        results["backends"][backend] = data
        samples: dict[str, dict[str, list[float]]] = {
            "uncontended": {},
            "handover": {},
            "watch": {},
            "writes": {},
        }
        if "uncontended" in sections:
            await section_uncontended(impls, cfg, data.setdefault("uncontended", {}), samples["uncontended"])
        if "handover" in sections:
            await section_handover(impls, cfg, data.setdefault("handover", {}), samples["handover"])
        if "watch" in sections:
            await section_watch(impls, cfg, data.setdefault("watch", {}), samples["watch"])
        if "writes" in sections:
            await section_writes(impls, cfg, url, data.setdefault("writes", {}), samples["writes"])
        if "failover" in sections:
            await section_failover(impls, cfg, url, data.setdefault("failover", {}))
        if "scale" in sections:
            await section_scale(backend, host, port, namespace, cfg, data.setdefault("scale", {}))
        data["distributions"] = {
            section: {name: h.quantiles(values) for name, values in by_impl.items() if values}
            for section, by_impl in samples.items()
        }
        results.setdefault("_samples", {})[backend] = samples


async def main(args: argparse.Namespace) -> None:
    from . import _report

    if args.report_only:
        results = json.loads((args.out / "results.json").read_text())
        results["targets"] = _report.targets(results)
        (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        (args.out / "results.md").write_text(_report.markdown(results))
        print(_report.markdown(results))
        return
    logging.getLogger("coordination").setLevel(logging.ERROR)  # closing sessions is not news here
    if args.seed is not None:
        random.seed(args.seed)
    cfg = Settings(args)
    backends = [b for b in args.backends.split(",") if b]
    for backend in backends:
        if backend not in BACKENDS:
            sys.exit(f"unknown backend {backend!r}: choose from {', '.join(BACKENDS)}")
    started = time.time()
    results: dict[str, Any] = {
        "meta": {
            "command": "python -m benchmarks " + " ".join(sys.argv[1:]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
            "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "load_before": [round(x, 2) for x in h.load_average()],
            "repeat": cfg.repeat,
            "quick": bool(args.quick),
            "versions": _report.versions(),
        },
        "backends": {},
    }
    with h.quiet_threads():
        for backend in backends:
            await run_backend(backend, args, cfg, results)
    results["meta"]["load_after"] = [round(x, 2) for x in h.load_average()]
    results["meta"]["minutes"] = round((time.time() - started) / 60, 1)
    samples = results.pop("_samples", {})
    args.out.mkdir(parents=True, exist_ok=True)
    results["targets"] = _report.targets(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "results.md").write_text(_report.markdown(results))
    _report.plot(results, samples, args.out / "latency.png")
    progress(f"wrote {args.out}/results.json, results.md and latency.png")
    print(_report.markdown(results))


if __name__ == "__main__":
    anyio.run(main, parse_args())
