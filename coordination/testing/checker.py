"""A fenced resource that checks what fault tests claim: no overlap, no stale write.

Every guarded action records (token, holder, start, end). A write is accepted only with a
token at least the highest seen so far, as a real fenced store would do; a lower one is a
*stale write* and is refused. ``overlaps()`` lists actions of different holders that ran at
the same time.

Times are ``time.monotonic()`` seconds. On Linux that is ``CLOCK_MONOTONIC``, one clock for
the whole machine, so times that holder processes report (see
:mod:`coordination.testing.holder`) can be compared with this process's own and with each
other's. (On other systems the monotonic clock may be per process: only durations measured
inside one process are meaningful there.)

Two checks need a notion of truth beyond the tokens:

* :meth:`FencedResource.acquired` registers that a holder got the lock (a fenced store sees
  it as the holder's first write). :attr:`FencedResource.stale_accepted` lists writes the
  resource accepted although another holder had acquired the lock after the writer did: with
  acquisitions and writes applied in time order, that happens only if the later holder got a
  token that is not higher, i.e. fencing is broken.
* :meth:`FencedResource.overlaps` takes fault :class:`Window` s: an overlap inside one (a
  paused holder still believes it holds; that is what fencing is for) is excused.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Action", "FencedResource", "Window"]

Kind = Literal["write", "acquire", "span"]


@dataclass
class Action:
    token: int
    holder: str
    start: float
    end: float | None = None
    accepted: bool = True
    kind: Kind = "span"
    """``write`` (instantaneous), ``acquire`` (an acquisition, also a write) or ``span``
    (an action that lasted from ``start`` to ``end``)."""


@dataclass(frozen=True)
class Window:
    """A time window of a fault, and whose actions it disturbs (``None``: everybody's)."""

    start: float
    end: float
    holders: frozenset[str] | None = None
    what: str = ""

    def excuses(self, first: Action, second: Action, start: float, end: float) -> bool:
        """Whether the overlap of ``first`` and ``second`` from ``start`` to ``end`` is inside."""
        if start < self.start or end > self.end:
            return False
        return self.holders is None or first.holder in self.holders or second.holder in self.holders


@dataclass
class FencedResource:
    """Accepts a write only with a token >= the highest it has seen; records every action."""

    highest: int = 0
    actions: list[Action] = field(default_factory=list)

    def _check(self, action: Action) -> Action:
        action.accepted = action.token >= self.highest
        if action.accepted:
            self.highest = action.token
        self.actions.append(action)
        return action

    def write(self, token: int, holder: str = "", at: float | None = None) -> bool:
        """One instantaneous write (at ``at``, default now); ``False`` (refused) if ``token`` is stale."""
        when = time.monotonic() if at is None else at
        return self._check(Action(token, holder, when, when, kind="write")).accepted

    def acquired(self, token: int, holder: str = "", at: float | None = None) -> bool:
        """``holder`` got the lock with ``token`` (at ``at``): its first write."""
        when = time.monotonic() if at is None else at
        return self._check(Action(token, holder, when, when, kind="acquire")).accepted

    @contextmanager
    def action(self, token: int, holder: str = "") -> Iterator[Action]:
        """Record a guarded action that lasts for the ``with`` block; check its token at entry."""
        action = self._check(Action(token, holder, time.monotonic()))
        try:
            yield action
        finally:
            action.end = time.monotonic()

    def record(self, token: int, holder: str, start: float, end: float, *, check: bool = True) -> Action:
        """Record a guarded action another process reported, its token checked now; with
        ``check=False`` only recorded (a span of holding the lock, for :meth:`overlaps`)."""
        action = Action(token, holder, start, end)
        if not check:
            self.actions.append(action)
            return action
        return self._check(action)

    @property
    def accepted(self) -> int:
        return sum(a.accepted for a in self.actions)

    @property
    def stale_writes(self) -> list[Action]:
        """Writes refused for carrying a token lower than one already seen."""
        return [a for a in self.actions if not a.accepted]

    @property
    def stale_accepted(self) -> list[Action]:
        """Accepted writes made after another holder acquired the lock later than the writer did."""
        acquisitions = sorted((a for a in self.actions if a.kind == "acquire"), key=lambda a: a.start)
        stale = []
        for write in self.actions:
            if write.kind != "write" or not write.accepted:
                continue
            own = [
                a.start
                for a in acquisitions
                if a.holder == write.holder and a.token == write.token and a.start <= write.start
            ]
            if not own:
                continue
            since = max(own)
            if any(a.holder != write.holder and since < a.start <= write.start for a in acquisitions):
                stale.append(write)
        return stale

    def overlaps(self, excused: Sequence[Window] = ()) -> list[tuple[Action, Action]]:
        """Pairs of accepted actions by different holders whose time spans intersect
        (outside every window of ``excused``)."""
        done = sorted(
            (a for a in self.actions if a.accepted and a.end is not None and a.kind == "span"),
            key=lambda a: a.start,
        )
        pairs = []
        for i, first in enumerate(done):
            assert first.end is not None
            for second in done[i + 1 :]:
                if second.start >= first.end:
                    break
                if second.holder == first.holder:
                    continue
                start, end = second.start, min(first.end, second.end or second.start)
                if not any(window.excuses(first, second, start, end) for window in excused):
                    pairs.append((first, second))
        return pairs
