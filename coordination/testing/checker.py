"""A fenced resource that checks what fault tests claim: no overlap, no stale write.

Every guarded action records (token, holder, start, end). A write is accepted only with a
token at least the highest seen so far, as a real fenced store would do; a lower one is a
*stale write* and is refused. ``overlaps()`` lists actions of different holders that ran at
the same time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["Action", "FencedResource"]


@dataclass
class Action:
    token: int
    holder: str
    start: float
    end: float | None = None
    accepted: bool = True


class FencedResource:
    """Accepts a write only with a token >= the highest it has seen; records every action."""

    def __init__(self) -> None:
        self.highest = 0
        self.actions: list[Action] = []

    def write(self, token: int, holder: str = "") -> bool:
        """One instantaneous write; ``False`` (refused) if ``token`` is stale."""
        with self.action(token, holder) as action:
            pass
        return action.accepted

    @contextmanager
    def action(self, token: int, holder: str = "") -> Iterator[Action]:
        """Record a guarded action that lasts for the ``with`` block; check its token at entry."""
        action = Action(token, holder, time.monotonic())
        action.accepted = token >= self.highest
        if action.accepted:
            self.highest = token
        self.actions.append(action)
        try:
            yield action
        finally:
            action.end = time.monotonic()

    @property
    def accepted(self) -> int:
        return sum(a.accepted for a in self.actions)

    @property
    def stale_writes(self) -> list[Action]:
        """Writes refused for carrying a token lower than one already seen."""
        return [a for a in self.actions if not a.accepted]

    def overlaps(self) -> list[tuple[Action, Action]]:
        """Pairs of accepted actions by different holders whose time spans intersect."""
        done = sorted((a for a in self.actions if a.accepted and a.end is not None), key=lambda a: a.start)
        pairs = []
        for i, first in enumerate(done):
            for second in done[i + 1 :]:
                if second.start >= (first.end or first.start):
                    break
                if second.holder != first.holder:
                    pairs.append((first, second))
        return pairs
