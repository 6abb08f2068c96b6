"""A nemesis soak: M holder processes contend for one lock (or election) for N minutes while
random faults hit them and the servers, then the counts.

::

    python -m coordination.testing.soak --backend etcd --cluster --minutes 10
    python -m coordination.testing.soak --backend zookeeper --minutes 2 --processes 6
    python -m coordination.testing.soak --backend consul --cluster --election --quorum-loss
    python -m coordination.testing.soak --url etcd://127.0.0.1:2379 --minutes 2

Where it runs
    ``--backend B`` starts a server of its own (zookeeper, etcd or consul) and controls it;
    with ``--cluster`` a 3-node cluster instead (a ZooKeeper ensemble, an etcd cluster of
    ``--etcd-version``, or 3 Consul servers with a client agent, the agent first in the URL,
    see :mod:`coordination.testing.servers`). ``--url`` uses a loopback server of your own,
    one host or several (no server faults then; with several hosts, node blackholes). Only
    loopback addresses are accepted.

The holders
    Each of ``--processes`` holders (:mod:`coordination.testing.holder`, ``--loop``) acquires
    the lock (or, with ``--election``, campaigns), writes to a fenced resource every 50 ms,
    from a worker thread as blocking I/O would, releases after a random hold of up to 1.5
    TTLs, rests 50 ms and acquires again. The resource is a process of its own
    (:mod:`coordination.testing.fenced`): it accepts a write only with a token at least the
    highest it has accepted, and logs every decision. Each holder reaches every endpoint
    through a :class:`~coordination.testing.proxy.FaultProxy` of its own (one per holder
    per endpoint, the URL listing all of them), so a fault can cut one holder off, or one
    node off from every holder. A holder process that dies is started again, under a new
    label (``holder-<i>.<n>``, also its writer name at the resource).

The faults
    Two nemeses run side by side for the whole run, each one fault at a time, with a pause
    of about ``--fault-every`` seconds (uniformly 0.5 to 1.5 times it) before each fault.
    The holder nemesis picks a holder (the one holding, 4 times in 5) and one of:

    ``pause``       SIGSTOP for 1.1 to 2 TTLs, then SIGCONT
    ``block``       its event loop blocked (a synchronous sleep) as long
    ``kill``        SIGKILL (then started again); a kill waits until no server fault has
                    run for ``SETTLE``, and no other fault starts until another holder
                    took over: that failover is measured undisturbed
    ``blackhole``   all of its proxies stall both ways for 0.3 to 2 TTLs
    ``reset``       all of its connections reset
    ``lost reply``  the next reply on the connection it uses most is dropped, that
                    connection reset

    The server nemesis, on a single server the soak started: ``server pause`` (SIGSTOP for
    0.3 to 1.5 TTLs) and ``server restart`` (SIGKILL, started again on its data). On a
    cluster, one node at a time (so a quorum stays), a server chosen half the time as the
    leader, else any endpoint (Consul's client agent included), waiting after each fault
    until the cluster is healthy again:

    ``node kill``        SIGKILL, down for 0.5 to 2 TTLs, started again on its data
    ``node pause``       SIGSTOP for 1.1 to 2 TTLs, then SIGCONT
    ``node blackhole``   every holder's proxy of that endpoint stalls for 1.1 to 2 TTLs
    ``rolling restart``  every server restarted in turn (graceful), then the client agents
    ``quorum loss``      only with ``--quorum-loss``: a majority killed (the leader first)
                         for 1.5 TTLs, then started together

    ``--faults`` restricts the choice. ``--seed`` fixes each nemesis's sequence of choices
    (the timing, and so who holds when, still varies from run to run). After the run every
    fault is healed, and the soak waits one failover bound before it counts.

The counts
    Printed at the end, one ``name: value`` per line (:func:`parse_counts` reads them back),
    after the details of anything that went wrong. What they mean, exactly:

    A *holding* is one holder's belief that it holds: from its ``held`` event until the
    first of its ``releasing``, ``cancelled`` or ``lost`` events, its session's ``LOST``
    state (when that holding's loss follows), or its death (the time the soak sent SIGKILL).

    ``overlaps``
        Pairs of holdings of different holders that intersect in time, except those
        *excused*: one of the two holders was frozen (``pause`` or ``block``) from before
        the overlap began until at most ``SETTLE`` (1 s) before it ended, counted from the
        moment it ran again. Only a frozen holder may still believe it holds: it cannot look
        at its clock, which is what fencing is for. Nothing else is excused: not a cut-off
        holder (its local deadline passes before the server can hand over), not a quorum
        loss, not a node fault. ``overlaps excused`` counts the others.
    ``stale writes accepted``
        Decisions of the resource process (from its own log): a write it accepted from
        holding H after it had accepted a write from a holding H' that *came after* H. H'
        came after H when H ended before H' began, and no fault that can delay a grant's
        delivery or end a session unseen (a fault on H''s holder, a server fault on a single
        node, a quorum loss) lasted into the gap between them (from its start until one
        failover bound after it ended). The resource accepts a token only if it is at least
        the highest so far, so each such decision means H's token was not below H''s:
        the token order disagreed with the acquisition order. The normal gap of fencing (the
        old holder's write arriving before the new holder's first write) is not counted: the
        resource has no reason to refuse it. ``tokens out of order`` counts the pairs H, H'
        (H' after H, as defined) whose tokens do not increase, written or not.
    ``losts`` and ``false losts``
        ``LOST`` states the holders reported, and those no fault explains. A LOST of holder X
        is explained by X's own pause or block (until ``SETTLE`` after it ran again), X's own
        blackhole (until a TTL after the heal), or a fault that may end every session: a
        single server paused or restarted, a quorum loss (until a failover bound after it).
        On a cluster a node fault with a quorum kept never explains a LOST: the client must
        move to another node first. Neither does a reset or a lost reply.
    ``failovers``
        Kills of a holder that held: the time from the SIGKILL to another holder's ``held``,
        against the failover bound (TTL + 1 s; Consul: 2 TTL + lock-delay + 1.5 s).
        ``failovers disturbed`` are those during which another fault ran anyway, or had
        ended less than ``SETTLE`` before (a leader change may legitimately renew leases);
        ``failover longest`` and ``failovers over bound`` count only the undisturbed ones.
    ``longest unavailability``
        The longest time during which some holder was waiting (from its ``acquiring`` to
        its ``held``) and no holder held, after the first acquisition. ``... outside
        faults`` is the longest part of such a time outside every fault's window (from its
        start until a failover bound after it ended).
    ``longest lost after resume``
        How long a frozen holder that held went on believing it after it ran again.

    ``result: ok`` and exit status 0, or ``result: FAILED`` and exit status 1 when an
    overlap, a stale write accepted or tokens out of order were seen; with ``--strict`` also
    for false LOSTs, undisturbed failovers over the bound and holders that exited by
    themselves. The load average is printed at the start and the end (the machine may be
    shared); ``--record PATH`` writes every event, fault and decision as JSON lines, which
    ``--replay PATH`` counts again.

Known: on etcd, ``node pause`` of the leader past the TTL can show overlaps: the old leader,
running again, revokes the leases that expired in its own view although their clients kept
them alive through the new leader (etcd-io/etcd#15247, #12528). etcd 3.5.11 and later check
leadership before revoking, but skip the check when the raft loop ticked in the last three
ticks, which it does at once when a whole stopped process runs again; 3.5.35 (the test
servers' etcd 3.5) still shows it. The holder learns within milliseconds (its key is deleted)
but cannot know before; fencing refuses its writes once the next holder wrote.

It runs on loopback only and stops by itself (Ctrl-C or SIGTERM stop it early, cleanly,
with the figures so far). Times come from ``time.monotonic()`` in every process:
``CLOCK_MONOTONIC`` on Linux, one clock for the machine, so the holders', the resource's
and the soak's times compare.
"""

from __future__ import annotations

import argparse
import bisect
import functools
import ipaddress
import json
import math
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import anyio
from anyio.abc import TaskGroup

from coordination.abc import parse_url

from .checker import Action, FencedResource, Window
from .fenced import Decision, FencedProcess
from .holder import HolderEvent, HolderProcess
from .proxy import FaultProxy
from .servers import (
    ConsulCluster,
    ConsulProcess,
    EtcdCluster,
    EtcdProcess,
    ServerCluster,
    ServerProcess,
    ZooKeeperEnsemble,
    ZooKeeperProcess,
)

__all__ = ["Fault", "Holding", "Report", "Soak", "analyse", "main", "parse_counts"]

NAME = "soak"
WRITE_EVERY = 0.05
HOLD = (0.05, 1.5)
"""Shortest and longest hold, in TTLs: some holds outlast a fault, as real jobs do."""
REST = 0.05
SETTLE = 1.0
"""Seconds after a frozen holder ran again within which it must know that it lost."""
HEALTHY = 90.0
"""Seconds a cluster (or server) gets to be healthy again after a fault."""

HOLDER_FAULTS = ("pause", "block", "kill", "blackhole", "reset", "lost reply")
SERVER_FAULTS = ("server pause", "server restart")
NODE_FAULTS = ("node kill", "node pause", "node blackhole", "rolling restart", "quorum loss")
FAULTS = HOLDER_FAULTS + SERVER_FAULTS + NODE_FAULTS
FROZEN = ("pause", "block")
"""Faults after which a holder may still believe it holds while another does."""
SESSION_ENDING = ("server pause", "server restart", "quorum loss")
"""Faults on everyone that may end sessions (a single server, or a cluster without quorum)."""


# --------------------------------------------------------------------------- the analysis


@dataclass(frozen=True)
class Fault:
    """One fault injected: its kind, when it began and when it was healed, and the holder
    (its label) it hit, or ``None`` for a fault on a server or node (everyone's)."""

    kind: str
    start: float
    end: float
    holder: str | None = None
    detail: str = ""

    def covers(self, at: float, after: float = 0.0) -> bool:
        """Whether ``at`` is from the fault's start until ``after`` seconds past its end."""
        return self.start <= at <= self.end + after


@dataclass(frozen=True)
class Holding:
    """One holder's belief that it holds, from its ``held`` event to ``end`` (see the module
    docstring); ``how`` it ended: ``released``, ``lost``, ``killed``, ``exited`` or
    ``running`` (at the end of the run)."""

    holder: str
    token: int
    start: float
    end: float
    how: str


@dataclass(frozen=True)
class Failover:
    """A holder killed while it held: when, and when another holder took over (``inf``: never)."""

    holder: str
    killed: float
    taken: float
    disturbed: bool

    @property
    def seconds(self) -> float:
        return self.taken - self.killed


@dataclass
class Report:
    """The counts of a run (see the module docstring for what each means)."""

    holdings: list[Holding]
    faults: list[Fault]
    bound: float
    overlaps: list[tuple[Holding, Holding]] = field(default_factory=list)
    excused: list[tuple[Holding, Holding]] = field(default_factory=list)
    stale: list[tuple[Decision, Holding, Holding]] = field(default_factory=list)
    """Accepted stale decisions: the decision, its holding, and the later holding written before."""
    inversions: list[tuple[Holding, Holding]] = field(default_factory=list)
    losts: list[tuple[str, float]] = field(default_factory=list)
    false_losts: list[tuple[str, float]] = field(default_factory=list)
    failovers: list[Failover] = field(default_factory=list)
    unavailable: tuple[float, float] | None = None
    unavailable_outside: tuple[float, float] | None = None
    lost_after_resume: list[float] = field(default_factory=list)
    accepted: int = 0
    refused: int = 0
    unknown_writes: int = 0
    exits: list[tuple[str, str]] = field(default_factory=list)
    """Holder processes that exited by themselves: label and status."""
    garbled: list[str] = field(default_factory=list)

    @property
    def over_bound(self) -> list[Failover]:
        return [f for f in self.failovers if not f.disturbed and f.seconds > self.bound]

    def failed(self, strict: bool = False) -> bool:
        if self.overlaps or self.stale or self.inversions:
            return True
        return strict and bool(self.false_losts or self.over_bound or self.exits)


def _holdings(
    events: Sequence[tuple[str, HolderEvent]], end: float
) -> tuple[list[Holding], list[tuple[str, float, float]]]:
    """The holdings, and the waits (holder, from ``acquiring``, to ``held`` or its death)."""
    by_holder: dict[str, list[HolderEvent]] = defaultdict(list)
    for label, event in events:
        by_holder[label].append(event)
    holdings: list[Holding] = []
    waits: list[tuple[str, float, float]] = []
    for label, mine in by_holder.items():
        mine.sort(key=lambda e: e.at)
        # A LOST state ends a holding only if that holding's loss follows (its body cancelled or
        # its loss raised): a LOST line that comes late is of an earlier session.
        lost = {e.token for e in mine if e.kind in ("cancelled", "lost")}
        held: tuple[int, float] | None = None
        waiting: float | None = None
        for event in mine:
            if event.at > end:
                break
            kind = event.kind
            if kind == "acquiring":
                waiting = event.at if waiting is None else waiting
            elif kind == "held" and event.token is not None:
                if held is not None:  # a second held without an end: the first ended here
                    holdings.append(Holding(label, held[0], held[1], event.at, "lost"))
                held = (event.token, event.at)
                if waiting is not None:
                    waits.append((label, waiting, event.at))
                    waiting = None
            elif held is not None and (
                kind in ("releasing", "cancelled", "lost")
                or (kind == "state" and event.detail == "LOST" and held[0] in lost)
            ):
                how = "released" if kind == "releasing" else "lost"
                holdings.append(Holding(label, held[0], held[1], event.at, how))
                held = None
            if kind == "exit":
                how = "killed" if event.detail == "killed" else "exited"
                if held is not None:
                    holdings.append(Holding(label, held[0], held[1], event.at, how))
                    held = None
                if waiting is not None:
                    waits.append((label, waiting, event.at))
                    waiting = None
                break  # nothing after a process's death
        if held is not None:
            holdings.append(Holding(label, held[0], held[1], end, "running"))
        if waiting is not None:
            waits.append((label, waiting, end))
    holdings.sort(key=lambda h: h.start)
    return holdings, waits


def _overlaps(
    holdings: Sequence[Holding], faults: Sequence[Fault], settle: float
) -> tuple[list[tuple[Holding, Holding]], list[tuple[Holding, Holding]]]:
    """Overlapping holdings, unexcused and excused (a frozen holder, see the docstring)."""
    replay = FencedResource()
    spans: dict[int, Holding] = {}
    for holding in holdings:
        action = replay.record(holding.token, holding.holder, holding.start, holding.end, check=False)
        spans[id(action)] = holding
    frozen = [
        Window(f.start, f.end + settle, frozenset({f.holder}), f.kind)
        for f in faults
        if f.kind in FROZEN and f.holder is not None
    ]

    def pairs(found: list[tuple[Action, Action]]) -> list[tuple[Holding, Holding]]:
        return [(spans[id(a)], spans[id(b)]) for a, b in found]

    every = pairs(replay.overlaps())
    unexcused = pairs(replay.overlaps(frozen))
    keys = {(id(a), id(b)) for a, b in unexcused}
    return unexcused, [pair for pair in every if (id(pair[0]), id(pair[1])) not in keys]


class _Order:
    """Which holding came after which: H' after H when H ended before H' began and no fault
    that may delay a grant's delivery or end a session unseen lasted into the gap."""

    def __init__(self, holdings: Sequence[Holding], faults: Sequence[Fault], bound: float) -> None:
        self.by_end = sorted(holdings, key=lambda h: h.end)
        self.ends = [h.end for h in self.by_end]
        self._windows: dict[str | None, list[tuple[float, float]]] = defaultdict(list)
        for fault in faults:
            if fault.holder is not None or fault.kind in SESSION_ENDING:
                self._windows[fault.holder].append((fault.start, fault.end + bound))

    def cutoff(self, later: Holding) -> float:
        """Holdings that ended after this time (and before ``later`` began) came before it."""
        latest = -math.inf
        for holder in (later.holder, None):
            for start, end in self._windows.get(holder, ()):
                if start <= later.start:
                    latest = max(latest, end)
        return latest

    def before(self, later: Holding) -> list[Holding]:
        """The holdings that came before ``later``."""
        cutoff = self.cutoff(later)
        low = bisect.bisect_right(self.ends, cutoff)
        high = bisect.bisect_right(self.ends, later.start)
        return [h for h in self.by_end[low:high] if h is not later and h.start < later.start]

    def after(self, earlier: Holding, later: Holding) -> bool:
        return earlier.end <= later.start and earlier.end > self.cutoff(later) and earlier is not later


def _stale(
    holdings: Sequence[Holding], order: _Order, decisions: Sequence[Decision], end: float
) -> tuple[list[tuple[Decision, Holding, Holding]], int, int, int]:
    """Accepted stale decisions; and the accepted, refused and unmatched decisions."""
    by_key: dict[tuple[str, int], Holding] = {}
    for holding in holdings:
        by_key.setdefault((holding.holder, holding.token), holding)
    written: list[Holding] = []  # holdings with an accepted write so far, by start
    starts: list[float] = []
    seen: set[int] = set()
    stale = []
    accepted = refused = unknown = 0
    for decision in decisions:
        if decision.at > end:
            break
        if not decision.accepted:
            refused += 1
            continue
        accepted += 1
        found = by_key.get((decision.writer, decision.token))
        if found is None:
            unknown += 1
            continue
        holding = found
        for later in written[bisect.bisect_left(starts, holding.end) :]:
            if order.after(holding, later):
                stale.append((decision, holding, later))
                break
        if id(holding) not in seen:
            seen.add(id(holding))
            index = bisect.bisect_right(starts, holding.start)
            starts.insert(index, holding.start)
            written.insert(index, holding)
    return stale, accepted, refused, unknown


def _longest_gap(
    holdings: Sequence[Holding],
    waits: Sequence[tuple[str, float, float]],
    windows: Sequence[tuple[float, float]],
) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """The longest time someone waited and nobody held (after the first acquisition), and
    its longest part outside ``windows``."""
    if not holdings:
        return None, None
    first = min(h.start for h in holdings)
    changes: list[tuple[float, int, int]] = []
    for h in holdings:
        changes += [(h.start, 1, 0), (h.end, -1, 0)]
    for _, start, stop in waits:
        changes += [(max(start, first), 0, 1), (max(stop, first), 0, -1)]
    changes.sort(key=lambda c: (c[0], -c[1] - c[2]))  # starts before ends at one time
    held = waiting = 0
    gaps: list[tuple[float, float]] = []
    since: float | None = None
    for at, dh, dw in changes:
        held += dh
        waiting += dw
        if held == 0 and waiting > 0:
            since = at if since is None else since
        elif since is not None:
            if at > since:
                gaps.append((since, at))
            since = None
    if not gaps:
        return None, None
    raw = max(gaps, key=lambda g: g[1] - g[0])
    merged: list[list[float]] = []
    for start, stop in sorted(windows):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    pieces: list[tuple[float, float]] = []
    for start, stop in gaps:
        cursor = start
        for w_start, w_stop in merged:
            if w_stop <= cursor or w_start >= stop:
                continue
            if w_start > cursor:
                pieces.append((cursor, w_start))
            cursor = max(cursor, w_stop)
        if cursor < stop:
            pieces.append((cursor, stop))
    outside = max(pieces, key=lambda g: g[1] - g[0]) if pieces else None
    return raw, outside


def _explains_lost(fault: Fault, holder: str, at: float, ttl: float, bound: float, settle: float) -> bool:
    if fault.holder == holder:
        if fault.kind in FROZEN:
            return fault.covers(at, settle)
        if fault.kind == "blackhole":
            return fault.covers(at, ttl + settle)
        return False
    return fault.holder is None and fault.kind in SESSION_ENDING and fault.covers(at, bound)


def analyse(
    events: Sequence[tuple[str, HolderEvent]],
    faults: Sequence[Fault],
    decisions: Sequence[Decision],
    *,
    ttl: float,
    bound: float,
    end: float,
    settle: float = SETTLE,
) -> Report:
    """Count a run: the holders' events (``exit`` pseudo-events at their deaths, detail
    ``killed`` or ``status N``), the faults and the resource's decisions (in its order), up
    to ``end``. Pure: a fabricated log can be counted."""
    holdings, waits = _holdings(events, end)
    report = Report(holdings, list(faults), bound)
    report.overlaps, report.excused = _overlaps(holdings, faults, settle)
    order = _Order(holdings, faults, bound)
    for later in holdings:
        earlier = [h for h in order.before(later) if h.token >= later.token]
        if earlier:
            report.inversions.append((max(earlier, key=lambda h: h.token), later))
    report.stale, report.accepted, report.refused, report.unknown_writes = _stale(
        holdings, order, decisions, end
    )
    for label, event in sorted(events, key=lambda item: item[1].at):
        if event.at > end:
            continue
        if event.kind == "state" and event.detail == "LOST":
            report.losts.append((label, event.at))
            if not any(_explains_lost(f, label, event.at, ttl, bound, settle) for f in faults):
                report.false_losts.append((label, event.at))
        elif event.kind == "exit" and event.detail != "killed":
            report.exits.append((label, event.detail))
        elif event.kind == "garbled":
            report.garbled.append(event.detail)
    for fault in faults:
        if fault.kind == "kill" and fault.holder is not None:
            killed = [h for h in holdings if h.holder == fault.holder and h.how == "killed"]
            if not killed:
                continue
            taken = min(
                (h.start for h in holdings if h.holder != fault.holder and h.start > fault.start),
                default=math.inf,
            )
            disturbed = any(
                other is not fault and other.start <= taken and other.end + settle >= fault.start
                for other in faults
            )
            report.failovers.append(Failover(fault.holder, fault.start, taken, disturbed))
        elif fault.kind in FROZEN and fault.holder is not None:
            for h in holdings:
                mine = h.holder == fault.holder and h.how == "lost"
                if mine and h.start < fault.end < h.end <= fault.end + bound:
                    report.lost_after_resume.append(h.end - fault.end)
    windows = [(f.start, f.end + bound) for f in faults]
    report.unavailable, report.unavailable_outside = _longest_gap(holdings, waits, windows)
    return report


def _seconds(interval: tuple[float, float] | None) -> str:
    return "0" if interval is None else f"{interval[1] - interval[0]:.3f}"


def counts(report: Report) -> list[tuple[str, str]]:
    """The counts as ``(name, value)`` pairs, in the order printed."""
    kinds = Counter(f.kind for f in report.faults)
    failovers = report.failovers
    clean = [f for f in failovers if not f.disturbed]
    rows = [
        ("acquisitions", str(len(report.holdings))),
        ("faults", str(len(report.faults))),
        ("fault kinds", str(len(kinds))),
        *((f"fault {kind}", str(kinds[kind])) for kind in sorted(kinds)),
        ("writes accepted", str(report.accepted)),
        ("writes refused", str(report.refused)),
        ("overlaps", str(len(report.overlaps))),
        ("overlaps excused", str(len(report.excused))),
        ("stale writes accepted", str(len(report.stale))),
        ("tokens out of order", str(len(report.inversions))),
        ("losts", str(len(report.losts))),
        ("false losts", str(len(report.false_losts))),
        ("failovers", str(len(failovers))),
        ("failovers disturbed", str(len(failovers) - len(clean))),
        ("failover longest", f"{max((f.seconds for f in clean), default=0.0):.3f}"),
        (
            "failover longest disturbed",
            f"{max((f.seconds for f in failovers if f.disturbed), default=0.0):.3f}",
        ),
        ("failover bound", f"{report.bound:g}"),
        ("failovers over bound", str(len(report.over_bound))),
        ("longest unavailability", _seconds(report.unavailable)),
        ("longest unavailability outside faults", _seconds(report.unavailable_outside)),
        ("longest lost after resume", f"{max(report.lost_after_resume, default=0.0):.3f}"),
        ("unexpected exits", str(len(report.exits))),
    ]
    if report.unknown_writes:
        rows.append(("writes of unknown holdings", str(report.unknown_writes)))
    if report.garbled:
        rows.append(("garbled lines", str(len(report.garbled))))
    return rows


def parse_counts(text: str) -> dict[str, str]:
    """The ``name: value`` lines of a soak's output (the counts, and the run's settings)."""
    found = {}
    for line in text.splitlines():
        if line.startswith((" ", "soak:")):
            continue
        name, sep, value = line.partition(": ")
        if sep:
            found[name.strip()] = value.strip()
    return found


def _h(holding: Holding) -> str:
    return f"{holding.holder} token {holding.token} {holding.start:.3f}..{holding.end:.3f} ({holding.how})"


def details(report: Report, events: Sequence[tuple[str, HolderEvent]]) -> list[str]:
    """What to look at for each overlap, stale write, inversion and false LOST (indented lines)."""
    lines: list[str] = []

    def near(start: float, end: float, holders: Iterable[str]) -> None:
        who = set(holders)
        for fault in report.faults:
            if fault.start - 5 <= end and start <= fault.end + 5:
                target = fault.holder or "everyone"
                lines.append(
                    f"    fault {fault.kind} ({target}) {fault.start:.3f}..{fault.end:.3f} {fault.detail}"
                )
        for label, event in sorted(events, key=lambda item: item[1].at):
            if label in who and start - 3 <= event.at <= end + 1 and event.kind != "write":
                token = "-" if event.token is None else event.token
                lines.append(f"    {label} {event.kind} {token} {event.at:.3f} {event.detail}")

    for first, second in report.overlaps[:10]:
        start, end = max(first.start, second.start), min(first.end, second.end)
        lines.append(f"  overlap {start:.3f}..{end:.3f}: {_h(first)} / {_h(second)}")
        near(start, end, (first.holder, second.holder))
    for decision, holding, later in report.stale[:10]:
        lines.append(
            f"  stale write accepted at {decision.at:.3f}: {decision.writer} token {decision.token} "
            f"of {_h(holding)}, after writes of {_h(later)}"
        )
        near(holding.end, decision.at, (holding.holder, later.holder))
    for earlier, later in report.inversions[:10]:
        lines.append(f"  tokens out of order: {_h(earlier)} then {_h(later)}")
        near(earlier.end, later.start, (earlier.holder, later.holder))
    for label, at in report.false_losts[:10]:
        lines.append(f"  false LOST: {label} at {at:.3f}")
        near(at - 10, at, (label,))
    for failover in report.over_bound[:10]:
        lines.append(
            f"  failover over the bound: {failover.holder} killed {failover.killed:.3f}, "
            f"taken over after {failover.seconds:.3f}s"
        )
    for label, status in report.exits[:10]:
        lines.append(f"  {label} exited by itself ({status})")
    return lines


# --------------------------------------------------------------------------- the run


def _server_for(backend: str) -> ServerProcess:
    if backend in ("zookeeper", "zk"):
        return ZooKeeperProcess(tick_time_ms=100)
    if backend == "etcd":
        return EtcdProcess(version="3.5")
    if backend == "consul":
        return ConsulProcess(session_ttl_min="1s", persistent=True)
    raise SystemExit(f"unknown backend {backend!r}: zookeeper, etcd or consul")


def _cluster_for(backend: str, etcd_version: str) -> ServerCluster[Any]:
    if backend in ("zookeeper", "zk"):
        return ZooKeeperEnsemble(size=3, tick_time_ms=100)
    if backend == "etcd":
        return EtcdCluster(size=3, version="3.4" if etcd_version == "3.4" else "3.5")
    if backend == "consul":
        return ConsulCluster(servers=3, session_ttl_min="1s")
    raise SystemExit(f"unknown backend {backend!r}: zookeeper, etcd or consul")


def _loopback_only(url: str) -> list[tuple[str, int]]:
    hosts = []
    for host, port in parse_url(url).hosts:
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise SystemExit(f"the soak runs against loopback servers only, not {host!r}")
        if port is None:
            raise SystemExit("give every host of the URL its port explicitly")
        hosts.append((host, port))
    return hosts


def _soak_url(base: str, hosts: Sequence[str], namespace: str, options: dict[str, Any]) -> str:
    """``base`` (scheme, user info, path, query) on ``hosts``, its path + ``namespace``, and
    ``options`` over its query."""
    scheme, _, rest = base.partition("://")
    rest, _, query = rest.partition("?")
    authority, _, path = rest.partition("/")
    userinfo, at, _ = authority.rpartition("@")
    path = "/".join(part for part in (path.strip("/"), namespace) if part)
    merged = {**dict(parse_qsl(query)), **{key: str(value) for key, value in options.items()}}
    return f"{scheme}://{userinfo}{at}{','.join(hosts)}/{path}?{urlencode(merged)}"


class _Flag:
    """Set or clear; tasks can wait until it is clear."""

    def __init__(self) -> None:
        self._cleared: anyio.Event | None = None  # None: clear

    def __bool__(self) -> bool:
        return self._cleared is not None

    def set(self) -> None:
        if self._cleared is None:
            self._cleared = anyio.Event()

    def clear(self) -> None:
        if self._cleared is not None:
            self._cleared.set()
            self._cleared = None

    async def wait_clear(self) -> None:
        while self._cleared is not None:
            await self._cleared.wait()


@dataclass
class _Slot:
    """One holder: its proxies (one per endpoint), its current process and what it holds."""

    index: int
    proxies: list[FaultProxy]
    process: HolderProcess | None = None
    label: str = ""
    runs: int = 0
    holding: bool = False
    killed_at: float | None = None


class Soak:
    """The soak run; :meth:`run` returns the exit status."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        """The holder nemesis's choices."""
        self.node_rng = random.Random(args.seed + 1)
        """The server nemesis's choices."""
        backend = args.backend or parse_url(args.url).scheme
        self.consul = backend == "consul"
        self.cluster_mode = bool(args.cluster)
        default_ttl = (8.0 if self.consul else 5.0) if self.cluster_mode else 2.0
        self.ttl = float(args.ttl) if args.ttl is not None else default_ttl
        self.options: dict[str, Any] = {"ttl": self.ttl, "timeout": 3.0 if self.cluster_mode else 2.0}
        if self.consul:
            delay = (
                args.lock_delay if args.lock_delay is not None else (self.ttl if self.cluster_mode else 0.5)
            )
            self.options["lock_delay"] = delay
        self.server: ServerProcess | None = None
        self.cluster: ServerCluster[Any] | None = None
        self.endpoints: list[tuple[str, int]] = []
        self.slots: list[_Slot] = []
        self.events: list[tuple[str, HolderEvent]] = []
        self.faults: list[Fault] = []
        self._cuts: dict[tuple[int, int], set[int]] = defaultdict(set)
        self._held: list[tuple[str, float]] = []
        self._held_changed = anyio.Event()
        self._main: anyio.CancelScope | None = None
        self.stopped_early = False
        self.loads: list[float] = []
        self.cluster_troubles: list[str] = []
        self._node_busy = _Flag()
        """A server or node fault runs (or its heal)."""
        self._killing = _Flag()
        """A holder kill runs, until another holder took over: no server fault starts."""

    @property
    def bound(self) -> float:
        """The failover bound of the conformance fixtures: TTL + 1 s; on Consul twice the TTL
        plus the lock-delay plus 1.5 s."""
        if "lock_delay" in self.options:
            return 2 * self.ttl + float(self.options["lock_delay"]) + 1.5
        return self.ttl + 1.0

    def kinds(self) -> tuple[list[str], list[str]]:
        """The holder faults and the server or node faults this run chooses from."""
        chosen = list(self.args.faults)
        if self.args.quorum_loss and "quorum loss" not in chosen:
            chosen.append("quorum loss")
        holders = [kind for kind in chosen if kind in HOLDER_FAULTS]
        if self.cluster is not None:
            nodes = [kind for kind in chosen if kind in NODE_FAULTS]
        elif self.server is not None:
            nodes = [kind for kind in chosen if kind in SERVER_FAULTS]
        elif len(self.endpoints) > 1:
            nodes = [kind for kind in chosen if kind == "node blackhole"]
        else:
            nodes = []
        return holders, nodes

    # -- holders ---------------------------------------------------------------------------

    def _on_event(self, slot: _Slot, label: str, event: HolderEvent) -> None:
        self.events.append((label, event))
        if label != slot.label:
            return
        if event.kind == "held":
            slot.holding = True
            self._held.append((label, event.at))
            changed, self._held_changed = self._held_changed, anyio.Event()
            changed.set()
        elif event.kind in ("releasing", "cancelled", "lost") or (
            event.kind == "state" and event.detail == "LOST"
        ):
            slot.holding = False

    async def _keep_running(self, slot: _Slot, url: str, resource: str) -> None:
        hold = f"{HOLD[0] * self.ttl:g}:{HOLD[1] * self.ttl:g}"
        arguments = ["--loop", "--write-every", str(WRITE_EVERY), "--hold", hold, "--rest", str(REST)]
        arguments += ["--commands", "--resource", resource]
        while True:
            slot.runs += 1
            label = f"holder-{slot.index}.{slot.runs}"
            extra = ["--election", label] if self.args.election else []
            on_event: Callable[[HolderEvent], None] = functools.partial(self._on_event, slot, label)
            async with HolderProcess.start(
                url, NAME, *arguments, *extra, "--label", label, label=label, on_event=on_event
            ) as process:
                slot.process, slot.label, slot.holding, slot.killed_at = process, label, False, None
                await process.exited.wait()
                if slot.killed_at is not None:
                    self.events.append((label, HolderEvent("exit", None, slot.killed_at, "killed")))
                else:
                    status = f"status {process.returncode}"
                    self.events.append((label, HolderEvent("exit", None, time.monotonic(), status)))
                    print(f"soak: {label} exited by itself ({status})", file=sys.stderr, flush=True)
            slot.process, slot.holding = None, False

    # -- cuts (several faults may blackhole one proxy) ------------------------------------------

    def _cut(self, keys: Iterable[tuple[int, int]], fault_id: int) -> None:
        for holder, endpoint in keys:
            self._cuts[(holder, endpoint)].add(fault_id)
            self.slots[holder].proxies[endpoint].blackhole()

    def _uncut(self, keys: Iterable[tuple[int, int]], fault_id: int) -> None:
        for holder, endpoint in keys:
            cuts = self._cuts[(holder, endpoint)]
            cuts.discard(fault_id)
            if not cuts:
                self.slots[holder].proxies[endpoint].heal()

    # -- the holder nemesis ---------------------------------------------------------------------

    def _record(self, kind: str, start: float, holder: str | None = None, detail: str = "") -> None:
        self.faults.append(Fault(kind, start, time.monotonic(), holder, detail))

    async def _holder_fault(self, kind: str) -> None:
        try:
            if kind == "kill":
                # A kill waits until the server nemesis has been idle for SETTLE, and holds it
                # off until another holder took over: the failover is measured undisturbed.
                with anyio.move_on_after(120):
                    while True:
                        await self._node_busy.wait_clear()
                        await anyio.sleep(SETTLE)
                        if not self._node_busy:
                            break
                self._killing.set()
            await self._hit_holder(kind)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            print(f"soak: {kind}: the holder went away ({exc!r})", file=sys.stderr, flush=True)
        finally:
            self._killing.clear()

    async def _hit_holder(self, kind: str) -> None:
        ready = [slot for slot in self.slots if slot.process is not None and not slot.process.exited.is_set()]
        if not ready:
            return
        holding = [slot for slot in ready if slot.holding]
        slot = self.rng.choice(holding if holding and self.rng.random() < 0.8 else ready)
        process, label, held = slot.process, slot.label, slot.holding
        assert process is not None
        long = self.rng.uniform(self.ttl * 1.1, self.ttl * 2)
        detail = "holding" if held else "waiting"
        start = time.monotonic()
        if kind == "pause":
            process.pause()
            try:
                await anyio.sleep(long)
            finally:
                process.resume()
            self._record(kind, start, label, detail)
        elif kind == "block":
            await process.send(f"block {long * 3:.3f}")
            try:
                await anyio.sleep(long)
            finally:
                with anyio.CancelScope(shield=True):
                    await process.send("go")
            self._record(kind, start, label, detail)
        elif kind == "kill":
            process.kill()
            slot.killed_at = start = time.monotonic()
            self._record(kind, start, label, detail)
            if held:
                # No other fault until another holder takes over: the failover is measured clean.
                with anyio.move_on_after(self.bound + 10):
                    while not any(who != label and at > start for who, at in self._held):
                        await self._held_changed.wait()
        elif kind == "blackhole":
            keys = [(slot.index, e) for e in range(len(self.endpoints))]
            fault_id = id(object())
            self._cut(keys, fault_id)
            try:
                await anyio.sleep(self.rng.uniform(0.3, self.ttl * 2))
            finally:
                self._uncut(keys, fault_id)
            self._record(kind, start, label, detail)
        elif kind == "reset":
            for proxy in slot.proxies:
                proxy.reset()
            self._record(kind, start, label, detail)
        elif kind == "lost reply":
            proxy = max(slot.proxies, key=lambda p: (p.open_connections, p.chunks_up))
            proxy.drop_next_reply()
            self._record(kind, start, label, detail)

    # -- the server nemesis ---------------------------------------------------------------------

    async def _healthy(self) -> None:
        """Every server or node running and answering again (a trouble is noted, not raised)."""
        if self.server is not None:
            server = self.server
            if server.paused:
                server.resume()
            if not server.running:
                await anyio.to_thread.run_sync(server.start)
        cluster = self.cluster
        if cluster is None:
            return
        for member in cluster.members:
            if member.paused:
                member.resume()
        try:
            async with anyio.create_task_group() as tg:
                for member in cluster.members:
                    if not member.running:
                        tg.start_soon(anyio.to_thread.run_sync, member.start)
            await anyio.to_thread.run_sync(lambda: cluster.wait_healthy(HEALTHY))
        except Exception as exc:  # noted in the report; the next heal tries again
            trouble = f"{type(exc).__name__}: {str(exc)[:300]}"
            self.cluster_troubles.append(trouble)
            print(f"soak: the cluster is not healthy: {trouble}", file=sys.stderr, flush=True)

    async def _pick_endpoint(self) -> tuple[int, str]:
        """An endpoint index (half the time the leader's) and a description."""
        cluster = self.cluster
        assert cluster is not None
        offset = len(cluster.clients)
        if self.node_rng.random() < 0.5:
            try:
                leader = await anyio.to_thread.run_sync(lambda: cluster.leader(10))
                return offset + leader, f"the leader, node {leader}"
            except TimeoutError:
                pass
        index = self.node_rng.randrange(len(cluster.endpoints))
        if index < offset:
            return index, f"client agent {index}"
        try:
            leader = await anyio.to_thread.run_sync(lambda: cluster.leader(3))
        except TimeoutError:
            return index, f"node {index - offset} (no leader seen)"
        role = "the leader" if leader == index - offset else f"leader: node {leader}"
        return index, f"node {index - offset} ({role})"

    async def _node_fault(self, kind: str) -> None:
        await self._killing.wait_clear()
        self._node_busy.set()
        try:
            await self._hit_node(kind)
        finally:
            self._node_busy.clear()

    async def _hit_node(self, kind: str) -> None:
        rng = self.node_rng
        start = time.monotonic()
        long = rng.uniform(self.ttl * 1.1, self.ttl * 2)
        if kind == "server pause":
            server = self.server
            assert server is not None
            server.pause()
            try:
                await anyio.sleep(rng.uniform(0.3, self.ttl * 1.5))
            finally:
                server.resume()
            self._record(kind, start)
            return
        if kind == "server restart":
            server = self.server
            assert server is not None
            await anyio.to_thread.run_sync(lambda: server.restart(graceful=False))
            self._record(kind, start)
            return
        if kind == "node blackhole":
            if self.cluster is not None:
                index, what = await self._pick_endpoint()
            else:
                index = rng.randrange(len(self.endpoints))
                what = f"host {index}"
            keys = [(slot.index, index) for slot in self.slots]
            fault_id = id(object())
            start = time.monotonic()
            self._cut(keys, fault_id)
            try:
                await anyio.sleep(long)
            finally:
                self._uncut(keys, fault_id)
            self._record(kind, start, None, what)
            return
        cluster = self.cluster
        assert cluster is not None
        if kind in ("node kill", "node pause"):
            index, what = await self._pick_endpoint()
            member = cluster.endpoints[index]
            start = time.monotonic()
            try:
                if kind == "node kill":
                    await anyio.to_thread.run_sync(member.kill)
                    await anyio.sleep(rng.uniform(self.ttl * 0.5, self.ttl * 2))
                else:
                    member.pause()
                    await anyio.sleep(long)
            finally:
                with anyio.CancelScope(shield=True):
                    await self._healthy()
            self._record(kind, start, None, what)
        elif kind == "rolling restart":
            try:
                for index in range(len(cluster.nodes)):
                    await anyio.to_thread.run_sync(
                        functools.partial(cluster.restart_node, index, graceful=True)
                    )
                    await anyio.to_thread.run_sync(lambda: cluster.wait_healthy(HEALTHY))
                for agent in cluster.clients:
                    await anyio.to_thread.run_sync(functools.partial(agent.restart, graceful=False))
                    await anyio.to_thread.run_sync(lambda: cluster.wait_healthy(HEALTHY))
            except Exception as exc:  # noted, then healed
                self.cluster_troubles.append(f"rolling restart: {type(exc).__name__}: {str(exc)[:300]}")
            finally:
                with anyio.CancelScope(shield=True):
                    await self._healthy()
            self._record(kind, start)
        elif kind == "quorum loss":
            try:
                leader = await anyio.to_thread.run_sync(lambda: cluster.leader(10))
            except TimeoutError:
                leader = 0
            order = sorted(range(len(cluster.nodes)), key=lambda i: i != leader)
            victims = [cluster.nodes[i] for i in order[: len(cluster.nodes) - len(cluster.nodes) // 2]]
            start = time.monotonic()
            try:
                for node in victims:
                    await anyio.to_thread.run_sync(node.kill)
                await anyio.sleep(self.ttl * 1.5)
            finally:
                with anyio.CancelScope(shield=True):
                    await self._healthy()
            self._record(kind, start, None, f"{len(victims)} of {len(cluster.nodes)} nodes")

    async def _nemesis(
        self, kinds: Sequence[str], fault: Callable[[str], Any], rng: random.Random, deadline: float
    ) -> None:
        if not kinds:
            return
        every = self.args.fault_every
        while True:
            pause = rng.uniform(every * 0.5, every * 1.5)
            if time.monotonic() + pause >= deadline:
                return
            await anyio.sleep(pause)
            await fault(rng.choice(kinds))

    # -- the run ---------------------------------------------------------------------------

    async def _sample_load(self) -> None:
        while True:
            self.loads.append(os.getloadavg()[0])
            await anyio.sleep(5)

    async def _start_servers(self, stack: AsyncExitStack) -> str:
        args = self.args
        if args.url:
            return str(args.url)
        if args.cluster:
            cluster = self.cluster = _cluster_for(args.backend, args.etcd_version)
            began = time.monotonic()
            await anyio.to_thread.run_sync(cluster.start)
            stack.push_async_callback(anyio.to_thread.run_sync, cluster.close)
            print(f"soak: {cluster.name} cluster up in {time.monotonic() - began:.1f}s", flush=True)
            return cluster.url
        server = self.server = _server_for(args.backend)
        await anyio.to_thread.run_sync(server.start)
        stack.push_async_callback(anyio.to_thread.run_sync, server.close)
        return server.url

    async def run(self) -> int:
        args = self.args
        seconds = args.minutes * 60
        self._main = anyio.CancelScope()
        async with AsyncExitStack() as stack:
            base = await self._start_servers(stack)
            self.endpoints = _loopback_only(base)
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
            resource = await stack.enter_async_context(FencedProcess.start(folder / "decisions.log"))
            namespace = f"soak-{uuid.uuid4().hex[:8]}"
            holder_kinds, node_kinds = self.kinds()
            load = os.getloadavg()
            where = "cluster" if self.cluster is not None else ("server" if self.server else "url")
            print(
                f"soak: {parse_url(base).scheme} {where} ({len(self.endpoints)} endpoint(s)), "
                f"{args.processes} holders, {'election' if args.election else 'lock'}, "
                f"{args.minutes:g} min, a fault every ~{args.fault_every:g}s per nemesis, ttl {self.ttl:g}s, "
                f"seed {args.seed}, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
                flush=True,
            )
            print(f"soak: holder faults: {', '.join(holder_kinds) or 'none'}", flush=True)
            print(f"soak: server faults: {', '.join(node_kinds) or 'none'}", flush=True)
            for i in range(args.processes):
                proxies = [await stack.enter_async_context(FaultProxy(h, p)) for h, p in self.endpoints]
                self.slots.append(_Slot(i, proxies))
            tg: TaskGroup = await stack.enter_async_context(anyio.create_task_group())
            for slot in self.slots:
                url = _soak_url(base, [proxy.address for proxy in slot.proxies], namespace, self.options)
                tg.start_soon(self._keep_running, slot, url, resource.address)
            tg.start_soon(self._stop_on_signal)
            tg.start_soon(self._sample_load)
            began = time.monotonic()
            try:
                with self._main, anyio.fail_after(seconds + 600):
                    deadline = began + seconds
                    async with anyio.create_task_group() as nemeses:
                        nemeses.start_soon(
                            self._nemesis, holder_kinds, self._holder_fault, self.rng, deadline
                        )
                        nemeses.start_soon(
                            self._nemesis, node_kinds, self._node_fault, self.node_rng, deadline
                        )
                    await self._heal()
                    await anyio.sleep(self.bound)  # let the last fault settle before counting
            finally:
                with anyio.CancelScope(shield=True):
                    end = time.monotonic()
                    await self._heal()
                    tg.cancel_scope.cancel()
            decisions = resource.decisions()
        report = analyse(self.events, self.faults, decisions, ttl=self.ttl, bound=self.bound, end=end)
        if args.record:
            _write_record(
                args.record, self.events, self.faults, decisions, ttl=self.ttl, bound=self.bound, end=end
            )
        lines = [
            ("backend", parse_url(base).scheme),
            ("mode", where),
            ("primitive", "election" if args.election else "lock"),
            ("holders", str(args.processes)),
            ("minutes", f"{(end - began) / 60:.2f}"),
            ("seed", str(args.seed)),
            ("ttl", f"{self.ttl:g}"),
        ]
        if self.cluster_troubles:
            lines.append(("cluster troubles", str(len(self.cluster_troubles))))
        end_load = os.getloadavg()
        lines.append(("load start", f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"))
        lines.append(("load max", f"{max(self.loads, default=0.0):.2f}"))
        lines.append(("load end", f"{end_load[0]:.2f} {end_load[1]:.2f} {end_load[2]:.2f}"))
        return _print(report, self.events, lines, strict=args.strict, early=self.stopped_early)

    async def _heal(self) -> None:
        for slot in self.slots:
            for proxy in slot.proxies:
                proxy.heal()
            if slot.process is not None and slot.process.paused:
                slot.process.resume()
        self._cuts.clear()
        await self._healthy()

    async def _stop_on_signal(self) -> None:
        """Ctrl-C or SIGTERM: heal, stop, clean up and report what was seen so far."""
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                print(f"soak: {signal.Signals(signum).name}: stopping early", file=sys.stderr, flush=True)
                self.stopped_early = True
                if self._main is not None:
                    self._main.cancel()
                return


def _print(
    report: Report,
    events: Sequence[tuple[str, HolderEvent]],
    settings: Sequence[tuple[str, str]],
    *,
    strict: bool,
    early: bool = False,
) -> int:
    """Print the details and the counts; the exit status."""
    for line in details(report, events):
        print(line)
    if early:
        print("soak: stopped early; the figures cover the run until then")
    for name, value in [*settings, *counts(report)]:
        print(f"{name}: {value}")
    failed = report.failed(strict)
    print(f"result: {'FAILED' if failed else 'ok'}", flush=True)
    return 1 if failed else 0


def _write_record(
    path: str,
    events: Sequence[tuple[str, HolderEvent]],
    faults: Sequence[Fault],
    decisions: Sequence[Decision],
    **run: float,
) -> None:
    with open(path, "w") as out:
        out.write(json.dumps({"run": run}) + "\n")
        for label, event in events:
            out.write(json.dumps({"event": [label, event.kind, event.token, event.at, event.detail]}) + "\n")
        for fault in faults:
            out.write(json.dumps({"fault": asdict(fault)}) + "\n")
        for decision in decisions:
            out.write(json.dumps({"decision": asdict(decision)}) + "\n")


def replay(path: str, *, strict: bool = False) -> int:
    """Count a run recorded with ``--record`` again; the exit status."""
    run: dict[str, float] = {}
    events: list[tuple[str, HolderEvent]] = []
    faults: list[Fault] = []
    decisions: list[Decision] = []
    for line in Path(path).read_text().splitlines():
        item = json.loads(line)
        if "run" in item:
            run = item["run"]
        elif "event" in item:
            label, kind, token, at, detail = item["event"]
            events.append((label, HolderEvent(kind, token, at, detail)))
        elif "fault" in item:
            faults.append(Fault(**item["fault"]))
        elif "decision" in item:
            decisions.append(Decision(**item["decision"]))
    report = analyse(events, faults, decisions, ttl=run["ttl"], bound=run["bound"], end=run["end"])
    return _print(report, events, [("replayed", path)], strict=strict)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m coordination.testing.soak",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Fault kinds: " + ", ".join(FAULTS) + ". See the module's documentation for the counts.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a loopback server of your own, one host or several (no server faults)")
    where.add_argument("--backend", help="start a server of this backend: zookeeper, etcd or consul")
    where.add_argument("--replay", metavar="PATH", help="count a run recorded with --record again")
    parser.add_argument("--cluster", action="store_true", help="with --backend: a 3-node cluster")
    parser.add_argument("--etcd-version", choices=("3.4", "3.5"), default="3.5")
    parser.add_argument("--election", action="store_true", help="holders campaign instead of locking")
    parser.add_argument("--processes", type=int, default=4, metavar="N", help="holder processes (default 4)")
    parser.add_argument("--minutes", type=float, default=1.0, metavar="M")
    parser.add_argument("--fault-every", type=float, default=3.0, metavar="S", help="seconds, on average")
    parser.add_argument(
        "--ttl", type=float, default=None, metavar="S", help="default 2; cluster 5, Consul's 8"
    )
    parser.add_argument(
        "--lock-delay", type=float, default=None, metavar="S", help="Consul (default 0.5; cluster: the TTL)"
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--faults",
        type=lambda text: [kind.strip() for kind in text.split(",")],
        default=[kind for kind in FAULTS if kind != "quorum loss"],
        metavar="KIND,...",
        help="the faults to choose from (default: every one that applies, but quorum loss)",
    )
    parser.add_argument(
        "--quorum-loss", action="store_true", help="cluster: also lose the quorum now and then"
    )
    parser.add_argument(
        "--strict", action="store_true", help="fail on false LOSTs, slow failovers, exits too"
    )
    parser.add_argument(
        "--record", metavar="PATH", help="write every event, fault and decision here (JSON lines)"
    )
    args = parser.parse_args(argv)
    if args.replay:
        sys.exit(replay(args.replay, strict=args.strict))
    if args.seed is None:
        args.seed = random.randrange(2**32)
    unknown = set(args.faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults {', '.join(sorted(unknown))}: choose among {', '.join(FAULTS)}")
    if args.cluster and not args.backend:
        parser.error("--cluster needs --backend (the soak starts the cluster)")
    if args.processes < 2 or not math.isfinite(args.minutes) or args.minutes <= 0:
        parser.error("--processes must be at least 2 and --minutes positive")
    soak = Soak(args)
    sys.exit(anyio.run(soak.run))


if __name__ == "__main__":
    main()
