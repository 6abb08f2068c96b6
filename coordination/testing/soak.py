"""A soak: N holder processes contend for one lock for M minutes while faults are injected.

::

    python -m coordination.testing.soak --backend etcd --processes 4 --minutes 10
    python -m coordination.testing.soak --url etcd://127.0.0.1:2379 --processes 4 --minutes 2

Each holder (:mod:`coordination.testing.holder`, ``--loop``) acquires the lock, writes to a
fenced resource every 50 ms (from a worker thread, as blocking I/O would), releases after a
random hold (up to 1.5 TTLs) and acquires again; each reaches the server through a
:class:`~coordination.testing.proxy.FaultProxy` of its own. Every few seconds one random
fault is injected and healed: a holder SIGSTOPped past its TTL, its event loop blocked, a
holder SIGKILLed (and started again), its connection blackholed, reset, or its next reply
lost; with ``--backend`` (a server the soak starts and owns) also the server SIGSTOPped, or
killed and restarted on its data. Between faults there are fault-free windows.

At the end it prints the faults injected, the acquisitions, the writes refused for a stale
token, the **overlaps in fault-free windows** (two holders inside the lock at once outside
any fault's window) and the **stale writes accepted** (a write the resource took from a
holder after another had acquired the lock: fencing failed), which must both be 0. Stricter,
it also counts the overlaps inside fault windows that nothing explains: a paused or blocked
holder still believes it holds (that is what fencing is for), and a holder told LOST goes on
with the work under way in a thread for a moment (fencing refuses its writes); any other
holder must learn its loss before the server hands the lock over. That count must be 0 too:
the exit status is 1 otherwise. It runs on loopback only, and stops by itself (Ctrl-C or
SIGTERM stop it early, cleanly, with the figures so far).

Times come from ``time.monotonic()`` in every process: ``CLOCK_MONOTONIC`` on Linux, one
clock for the machine, so holders' times compare with each other and with the soak's.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup

from coordination._url import parse_url

from .checker import FencedResource, Window
from .fixtures import _with_hosts
from .holder import HolderEvent, HolderProcess
from .proxy import FaultProxy
from .servers import ConsulProcess, EtcdProcess, ServerProcess, ZooKeeperProcess

__all__ = ["Soak", "main"]

LOCK = "soak"
WRITE_EVERY = 0.05
HOLD = (0.05, 1.5)
"""Shortest and longest hold, in TTLs: some holds outlast a fault, as real jobs do."""
REST = 0.05
SETTLE = 1.0
FAULTS = ("pause", "block", "kill", "blackhole", "reset", "lost reply", "server pause", "server restart")
FROZEN = ("pause", "block")
"""Faults after which a holder may still believe it holds while another does."""
"""Seconds after a fault is healed that its window still covers (a resumed holder learns)."""


def _server_for(backend: str) -> ServerProcess:
    if backend in ("zookeeper", "zk"):
        return ZooKeeperProcess(tick_time_ms=100)
    if backend == "etcd":
        return EtcdProcess(version="3.5")
    if backend == "consul":
        return ConsulProcess(session_ttl_min="1s", persistent=True)
    raise SystemExit(f"unknown backend {backend!r}: zookeeper, etcd or consul")


def _loopback_only(url: str) -> None:
    for host, _ in parse_url(url).hosts:
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise SystemExit(f"the soak runs against loopback servers only, not {host!r}")


@dataclass
class _Slot:
    """One holder: its proxy, its current process, and the lock hold it reported."""

    label: str
    proxy: FaultProxy
    process: HolderProcess | None = None
    holding: tuple[int, float] | None = None  # (token, since)
    acquisitions: int = 0
    killed: bool = False
    killed_at: float | None = None
    exits: list[int | None] = field(default_factory=list)


class Soak:
    """The soak run; :meth:`run` returns the exit status."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.ttl = float(args.ttl)
        self.options: dict[str, Any] = {"ttl": self.ttl, "timeout": 2.0}
        if args.backend == "consul" or (args.url or "").startswith("consul"):
            self.options["lock_delay"] = args.lock_delay
        self.server: ServerProcess | None = None
        self.url = ""
        self.slots: list[_Slot] = []
        self.live = FencedResource()  # writes applied as they arrive
        self.events: list[tuple[str, HolderEvent]] = []
        self.spans: list[tuple[int, str, float, float]] = []
        self.told: dict[tuple[str, int], float] = {}
        """When a holder (label, token) was told that its session was LOST."""
        self.windows: list[Window] = []
        self.faults: Counter[str] = Counter()
        self.failovers: list[float] = []
        self.lost_after_resume: list[float] = []
        self._pending_failover: float | None = None
        self._pending_resume: dict[str, float] = {}
        self._failed_over: anyio.Event | None = None
        self._main: anyio.CancelScope | None = None
        self.stopped_early = False

    @property
    def bound(self) -> float:
        """The failover bound of the conformance fixtures: TTL + 1 s; on Consul twice the TTL
        plus the lock-delay plus 1.5 s."""
        if "lock_delay" in self.options:
            return 2 * self.ttl + float(self.options["lock_delay"]) + 1.5
        return self.ttl + 1.0

    # -- holders ---------------------------------------------------------------------------

    def _on_event(self, slot: _Slot, event: HolderEvent) -> None:
        self.events.append((slot.label, event))
        if event.kind == "held" and event.token is not None:
            slot.holding = (event.token, event.at)
            if slot.killed_at is not None:  # read after the kill: the hold ended there
                self._close(slot, slot.killed_at)
            slot.acquisitions += 1
            self.live.acquired(event.token, slot.label, at=event.at)
            if self._pending_failover is not None and event.at > self._pending_failover:
                self.failovers.append(event.at - self._pending_failover)
                self._pending_failover = None
                if self._failed_over is not None:
                    self._failed_over.set()
        elif event.kind == "write" and event.token is not None:
            self.live.write(event.token, slot.label, at=event.at)
        elif event.kind == "state" and event.detail == "LOST" and slot.holding is not None:
            self.told.setdefault((slot.label, slot.holding[0]), event.at)  # told it lost
        elif event.kind in ("releasing", "lost"):
            self._close(slot, event.at)
            resumed = self._pending_resume.pop(slot.label, None)
            if event.kind == "lost" and resumed is not None:
                self.lost_after_resume.append(event.at - resumed)

    def _close(self, slot: _Slot, at: float) -> None:
        if slot.holding is not None:
            token, since = slot.holding
            self.spans.append((token, slot.label, since, at))
            slot.holding = None

    async def _keep_running(self, slot: _Slot, url: str) -> None:
        hold = f"{HOLD[0] * self.ttl:g}:{HOLD[1] * self.ttl:g}"
        arguments = ["--loop", "--write-every", str(WRITE_EVERY), "--hold", hold]
        arguments += ["--rest", str(REST), "--commands"]
        while True:
            async with HolderProcess.start(
                url, LOCK, *arguments, label=slot.label, on_event=lambda e: self._on_event(slot, e)
            ) as process:
                slot.process, slot.killed, slot.killed_at = process, False, None
                await process.exited.wait()
                slot.exits.append(process.returncode)
                if not slot.killed:
                    print(
                        f"soak: {slot.label} exited by itself (status {process.returncode})", file=sys.stderr
                    )
            slot.process = None
            self._close(slot, time.monotonic())

    # -- faults ----------------------------------------------------------------------------

    def _window(self, start: float, end: float, what: str, slot: _Slot | None) -> None:
        holders = None if slot is None else frozenset({slot.label})
        self.windows.append(Window(start, end, holders, what))
        self.faults[what] += 1

    async def _fault(self) -> None:
        controlled = self.server is not None
        kinds = [kind for kind in self.args.faults if controlled or not kind.startswith("server")]
        if not kinds:
            return
        what = self.rng.choice(kinds)
        ready = [slot for slot in self.slots if slot.process is not None and not slot.process.exited.is_set()]
        if not ready:
            return
        holders = [slot for slot in ready if slot.holding is not None]
        # Mostly the holder: a fault on a waiter rarely tests anything.
        slot = self.rng.choice(holders if holders and self.rng.random() < 0.8 else ready)
        process = slot.process
        assert process is not None
        start = time.monotonic()
        long = self.rng.uniform(self.ttl * 1.1, self.ttl * 2)
        holding = slot.holding is not None
        if what == "pause":
            process.pause()
            try:
                await anyio.sleep(long)
            finally:
                if holding:
                    self._pending_resume[slot.label] = time.monotonic()
                process.resume()
            self._window(start, time.monotonic() + SETTLE, what, slot)
        elif what == "block":
            await process.send(f"block {long * 3:.3f}")
            await anyio.sleep(long)
            if holding:
                self._pending_resume[slot.label] = time.monotonic()
            await process.send("go")
            self._window(start, time.monotonic() + SETTLE, what, slot)
        elif what == "kill":
            slot.killed, slot.killed_at = True, start
            failed_over = self._failed_over = anyio.Event()
            if holding:
                self._pending_failover = start
            process.kill()
            self._close(slot, start)
            self._window(start, start + self.bound, what, slot)
            if holding:
                # No other fault until another holder takes over: the failover is measured clean.
                with anyio.move_on_after(self.bound + 10):
                    await failed_over.wait()
                if self._pending_failover is not None:
                    self.failovers.append(math.inf)
                    self._pending_failover = None
        elif what == "blackhole":
            slot.proxy.blackhole()
            try:
                await anyio.sleep(self.rng.uniform(0.3, self.ttl * 2))
            finally:
                slot.proxy.heal()
            self._window(start, time.monotonic() + self.bound, what, slot)
        elif what == "reset":
            slot.proxy.reset()
            self._window(start, start + self.bound, what, slot)
        elif what == "lost reply":
            slot.proxy.drop_next_reply()
            self._window(start, start + self.bound, what, slot)
        elif what == "server pause":
            assert self.server is not None
            self.server.pause()
            try:
                await anyio.sleep(self.rng.uniform(0.3, self.ttl * 1.5))
            finally:
                self.server.resume()
            self._window(start, time.monotonic() + self.bound, what, None)
        elif what == "server restart":
            assert self.server is not None
            server = self.server
            await anyio.to_thread.run_sync(lambda: server.restart(graceful=False))
            self._window(start, time.monotonic() + self.bound, what, None)

    async def _inject(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            pause = self.rng.uniform(self.args.fault_every * 0.5, self.args.fault_every * 1.5)
            if time.monotonic() + pause >= deadline:
                await anyio.sleep(max(0.0, deadline - time.monotonic()))
                return
            await anyio.sleep(pause)
            await self._fault()

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> int:
        args = self.args
        seconds = args.minutes * 60
        self._main = anyio.CancelScope()
        async with AsyncExitStack() as stack:
            if args.url:
                base = args.url
            else:
                server = self.server = _server_for(args.backend)
                await anyio.to_thread.run_sync(server.start)
                stack.push_async_callback(anyio.to_thread.run_sync, server.close)
                base = server.url
            _loopback_only(base)
            parsed = parse_url(base)
            host, port = parsed.hosts[0]
            if port is None:
                raise SystemExit("give the URL's port explicitly")
            namespace = f"soak-{uuid.uuid4().hex[:8]}"
            base = base.split("?")[0].rstrip("/")
            base = f"{base}/{namespace}" if not parsed.namespace else f"{base}-{namespace}"
            query = "&".join(f"{k}={v}" for k, v in self.options.items())
            self.url = f"{base}?{query}"
            load = os.getloadavg()
            print(
                f"soak: {parsed.scheme}, {args.processes} processes, {args.minutes:g} min, a fault every "
                f"~{args.fault_every:g}s, ttl {self.ttl:g}s, seed {args.seed}, load {load[0]:.2f}",
                flush=True,
            )
            tg: TaskGroup = await stack.enter_async_context(anyio.create_task_group())
            for i in range(args.processes):
                proxy = await stack.enter_async_context(FaultProxy(host, port))
                slot = _Slot(f"holder-{i}", proxy)
                self.slots.append(slot)
                tg.start_soon(self._keep_running, slot, _with_hosts(self.url, proxy.address))
            tg.start_soon(self._stop_on_signal)
            with self._main, anyio.fail_after(seconds + 120):
                await self._inject(seconds)
                self._heal()
                await anyio.sleep(self.bound)  # let the last fault settle before counting
            self._heal()
            tg.cancel_scope.cancel()
        return self.report(os.getloadavg())

    def _heal(self) -> None:
        for slot in self.slots:
            slot.proxy.heal()
            if slot.process is not None and slot.process.paused:
                slot.process.resume()
        if self.server is not None and self.server.paused:
            self.server.resume()

    async def _stop_on_signal(self) -> None:
        """Ctrl-C or SIGTERM: heal, stop, clean up and report what was seen so far."""
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                print(f"soak: {signal.Signals(signum).name}: stopping early", file=sys.stderr, flush=True)
                self.stopped_early = True
                self._heal()
                if self._main is not None:
                    self._main.cancel()
                return

    def report(self, load: tuple[float, float, float]) -> int:
        # Replay acquisitions and writes in time order (one clock for all processes).
        replay = FencedResource()
        for label, event in sorted(self.events, key=lambda item: item[1].at):
            if event.token is None:
                continue
            if event.kind == "held":
                replay.acquired(event.token, label, at=event.at)
            elif event.kind == "write":
                replay.write(event.token, label, at=event.at)
        for token, label, start, end in self.spans:
            replay.record(token, label, start, end, check=False)
        every = replay.overlaps()
        overlaps = replay.overlaps(self.windows)
        # Only a frozen holder (paused, or its loop blocked) can overlap legitimately: any
        # other holder learns its loss at its local deadline, before the server hands over.
        frozen = [w for w in self.windows if w.what in FROZEN]
        unexplained = [
            (first, second)
            for first, second in replay.overlaps(frozen)
            # A holder told LOST before the other acquired: only its uninterruptible work (a
            # write under way in a thread) went on, and fencing is what covers that.
            if not self.told.get((first.holder, first.token), math.inf) <= second.start
        ]
        stale = replay.stale_accepted
        writes = [a for a in replay.actions if a.kind == "write"]
        if self.stopped_early:
            print("soak: stopped early; the figures cover the run until then")
        garbled = [event for _, event in self.events if event.kind == "garbled"]
        if garbled:
            print(f"soak: {len(garbled)} unreadable line(s) from holders, e.g. {garbled[0].detail!r}")
        print(f"faults injected: {sum(self.faults.values())} ({_counts(self.faults)})")
        print(f"acquisitions: {sum(slot.acquisitions for slot in self.slots)}")
        print(f"writes: {len(writes)}, refused as stale: {sum(not a.accepted for a in writes)}")
        print(f"overlaps in fault-free windows: {len(overlaps)}")
        print(f"stale writes accepted: {len(stale)}")
        print(f"overlaps in fault windows: {len(every) - len(overlaps)}")
        print(f"overlaps that no frozen holder or LOST already told explains: {len(unexplained)}")
        if self.failovers:
            longest = max(self.failovers)
            over = sum(f > self.bound for f in self.failovers)
            print(
                f"failovers after killing the holder: {len(self.failovers)}, longest {longest:.3f}s "
                f"(bound {self.bound:g}s), over the bound: {over}"
            )
        if self.lost_after_resume:
            print(
                f"LockLost after a paused or blocked holder ran again: max {max(self.lost_after_resume):.4f}s"
            )
        print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        for first, second in unexplained[:10]:
            start, end = second.start, min(first.end or first.start, second.end or second.start)
            print(f"  overlap {start:.3f}..{end:.3f}: {_span(first)} / {_span(second)}")
            for window in self.windows:
                if window.start - 5 <= end and start <= window.end:
                    who = "all" if window.holders is None else ",".join(sorted(window.holders))
                    print(f"    fault {window.what} ({who}) {window.start:.3f}..{window.end:.3f}")
            for label, event in self.events:
                near = label in (first.holder, second.holder) and start - 3 <= event.at <= end + 1
                if near and event.kind in ("held", "lost", "releasing", "state", "cancelled"):
                    print(f"    {label} {event.kind} {event.token} {event.at:.3f} {event.detail}")
        for action in stale[:10]:
            print(f"  stale write accepted: {action}")
        return 1 if unexplained or stale else 0


def _span(action: Any) -> str:
    return f"{action.holder} token {action.token} {action.start:.3f}..{action.end:.3f}"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{what} {count}" for what, count in sorted(counter.items())) or "none"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m coordination.testing.soak", description=__doc__.split("\n\n")[0]
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a loopback server of your own (no server faults)")
    where.add_argument("--backend", help="start a server of this backend: zookeeper, etcd or consul")
    parser.add_argument("--processes", type=int, default=4, metavar="N")
    parser.add_argument("--minutes", type=float, default=1.0, metavar="M")
    parser.add_argument("--fault-every", type=float, default=3.0, metavar="S", help="seconds, on average")
    parser.add_argument("--ttl", type=float, default=2.0, metavar="S")
    parser.add_argument("--lock-delay", type=float, default=0.5, metavar="S", help="Consul only")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--faults",
        type=lambda text: [kind.strip() for kind in text.split(",")],
        default=list(FAULTS),
        metavar="KIND,...",
        help=f"the faults to choose from (default: all of {', '.join(FAULTS)}; server faults need --backend)",
    )
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(2**32)
    unknown = set(args.faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults {', '.join(sorted(unknown))}: choose among {', '.join(FAULTS)}")
    if args.processes < 2 or not math.isfinite(args.minutes) or args.minutes <= 0:
        parser.error("--processes must be at least 2 and --minutes positive")
    soak = Soak(args)
    sys.exit(anyio.run(soak.run))


if __name__ == "__main__":
    main()
