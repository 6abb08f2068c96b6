"""The user-facing primitives: locks, elections and config values.

Made by a :class:`~coordination.Coordinator` (``coord.lock(name)``, ``coord.election(name)``,
``coord.config(name)``); none of them does I/O when created.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Self

import anyio

from ._names import validate_value
from ._types import Leader, Versioned
from .abc import HISTORY_RESET
from .exceptions import CoordinationError, LeadershipLost, LockLost, NotHeld

if TYPE_CHECKING:
    from ._coordinator import Coordinator, _Session

__all__ = ["Config", "Election", "HeldLock", "Leader", "Leadership", "Lock", "Versioned"]


class _Holding:
    """What HeldLock and Leadership share: a token, loss tracking and the guarded body."""

    _what: ClassVar[str]
    _lost_error: ClassVar[type[CoordinationError]]

    def __init__(self, coord: Coordinator, session: _Session, contender: Any, name: str, token: int) -> None:
        self._coord = coord
        self._session = session
        self._contender = contender
        self.name = name
        """The lock or election name."""
        self.token = token
        """The fencing token: strictly increases across successive holders of this name."""
        self.identity = coord.identity
        """The holder identity (the coordinator's ``identity`` option)."""
        self._ended = anyio.Event()
        self._lost_reason: str | None = None
        self._released = False
        self._scopes: list[anyio.CancelScope] = []

    def __repr__(self) -> str:
        state = "held" if self.held else "lost" if self.lost else "released"
        return f"<{type(self).__name__} {self.name!r} token={self.token} {state}>"

    @property
    def held(self) -> bool:
        """True until released or lost; checks the session's local deadline against the clock."""
        return not self._released and self._lost_reason is None and self._session.live()

    @property
    def lost(self) -> bool:
        """True once lost (its session ended before it was released)."""
        return self._lost_reason is not None

    async def wait_lost(self) -> None:
        """Wait until this is lost, or released; ``lost`` tells which."""
        await self._ended.wait()

    def _lose(self, reason: str) -> None:
        if self._released or self._lost_reason is not None:
            return
        self._lost_reason = reason
        self._ended.set()
        for scope in self._scopes:
            scope.cancel()

    def _lost_exc(self) -> CoordinationError:
        return self._lost_error(
            f"{self._what} {self.name!r} (token {self.token}) was lost: {self._lost_reason}"
        )

    def _check_held(self) -> None:
        """Raise unless held: the loss error once lost, NotHeld once released."""
        if self._released:
            raise NotHeld(f"{self._what} {self.name!r} (token {self.token}) was already released")
        if not self.held:
            raise self._lost_exc()

    async def _end(self) -> None:
        self._check_held()
        self._released = True
        self._ended.set()
        self._session.holdings.discard(self)
        await self._coord.withdraw(self._session, self._contender)

    # -- the guarded ``async with`` body ---------------------------------------------------

    async def __aenter__(self) -> Self:
        """Guard a body with this holding: cancelled on loss, released at exit.

        ``async with await lock.acquire(timeout=5) as held:`` is ``async with lock`` with a
        timeout. If the holding is lost, the body is cancelled and the loss error
        (:class:`~coordination.LockLost` / :class:`~coordination.LeadershipLost`) is raised
        at its exit.
        """
        scope = anyio.CancelScope()
        scope.__enter__()
        self._scopes.append(scope)
        if not self.held:
            scope.cancel()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        scope = self._scopes.pop()
        swallowed = bool(scope.__exit__(exc_type, exc, tb))
        if self._released:  # released inside the body
            return swallowed
        if not self.held:
            raise self._lost_exc() from (None if swallowed else exc)
        with anyio.CancelScope(shield=True):
            await self._end()
        return swallowed


class HeldLock(_Holding):
    """A held distributed lock. ``token`` is its fencing token; pass it to the resource."""

    _what = "lock"
    _lost_error = LockLost

    async def release(self) -> None:
        """Release the lock.

        Raises :class:`~coordination.LockLost` if it was lost meanwhile (loss is never
        silent) and :class:`~coordination.NotHeld` if it was already released.
        """
        await self._end()


class Leadership(_Holding):
    """Leadership of an election. ``token`` is its fencing token for the whole term."""

    _what = "leadership of"
    _lost_error = LeadershipLost

    def __init__(
        self, coord: Coordinator, session: _Session, contender: Any, name: str, token: int, value: bytes
    ) -> None:
        super().__init__(coord, session, contender, name, token)
        self.value = value
        """The leader value this leadership last published."""

    async def proclaim(self, value: bytes) -> None:
        """Publish a new leader value, keeping the term and its token.

        Raises :class:`~coordination.LeadershipLost` if leadership was lost and
        :class:`~coordination.NotHeld` after :meth:`resign`.
        """
        value = validate_value(value)
        self._check_held()
        await self._coord.call(
            self._session.bs.proclaim(self._contender, value), f"proclaiming on {self.name!r}"
        )
        self.value = value

    async def resign(self) -> None:
        """Give up leadership; the next candidate is woken.

        Raises :class:`~coordination.LeadershipLost` if it was lost meanwhile and
        :class:`~coordination.NotHeld` if already resigned.
        """
        await self._end()


class Lock:
    """A distributed lock. Not re-entrant: a task that holds it and enters again waits."""

    def __init__(self, coord: Coordinator, name: str) -> None:
        self._coord = coord
        self.name = name
        self._entered: dict[int, list[HeldLock]] = {}

    def __repr__(self) -> str:
        return f"<Lock {self.name!r}>"

    def _make(self, session: _Session, contender: Any, token: int) -> HeldLock:
        return HeldLock(self._coord, session, contender, self.name, token)

    async def acquire(self, timeout: float | None = None) -> HeldLock:
        """Wait until the lock is held and return it.

        Raises :class:`~coordination.AcquireTimeout` after ``timeout`` seconds. A timed-out
        or cancelled acquire leaves nothing behind that could delay the next acquirer.
        """
        held = await self._coord.acquire(
            "lock", self.name, self._coord.identity.encode(), blocking=True, timeout=timeout, make=self._make
        )
        assert held is not None
        return held

    async def try_acquire(self) -> HeldLock | None:
        """Take the lock if it is free right now; ``None`` if another holder or waiter is ahead."""
        return await self._coord.acquire(
            "lock", self.name, self._coord.identity.encode(), blocking=False, timeout=None, make=self._make
        )

    async def __aenter__(self) -> HeldLock:
        held = await self.acquire()
        await held.__aenter__()
        self._entered.setdefault(anyio.get_current_task().id, []).append(held)
        return held

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        task = anyio.get_current_task().id
        stack = self._entered[task]
        held = stack.pop()
        if not stack:
            del self._entered[task]
        return await held.__aexit__(exc_type, exc, tb)


class Campaign:
    """A pending campaign: ``await`` it for a :class:`Leadership`, or use ``async with``.

    In ``async with`` the body is cancelled if leadership is lost, and
    :class:`~coordination.LeadershipLost` is raised at its exit; leaving the body resigns.
    """

    def __init__(self, election: Election, value: bytes, timeout: float | None) -> None:
        self._election = election
        self._value = value
        self._timeout = timeout
        self._leadership: Leadership | None = None

    async def _run(self) -> Leadership:
        coord, name, value = self._election._coord, self._election.name, self._value

        def make(session: _Session, contender: Any, token: int) -> Leadership:
            return Leadership(coord, session, contender, name, token, value)

        leadership = await coord.acquire(
            "election", name, value, blocking=True, timeout=self._timeout, make=make
        )
        assert leadership is not None
        return leadership

    def __await__(self) -> Generator[Any, None, Leadership]:
        return self._run().__await__()

    async def __aenter__(self) -> Leadership:
        if self._leadership is not None:
            raise RuntimeError("a Campaign can be entered only once; call campaign() again")
        self._leadership = await self._run()
        return await self._leadership.__aenter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        assert self._leadership is not None
        return await self._leadership.__aexit__(exc_type, exc, tb)


class Election:
    """A leader election: one leader at a time among the candidates campaigning."""

    def __init__(self, coord: Coordinator, name: str) -> None:
        self._coord = coord
        self.name = name

    def __repr__(self) -> str:
        return f"<Election {self.name!r}>"

    def campaign(self, value: bytes, *, timeout: float | None = None) -> Campaign:
        """Campaign with ``value`` as the leader value; wait until leader.

        ``async with election.campaign(b"node-a") as leadership:`` runs the body while
        leader; ``await election.campaign(...)`` returns the :class:`Leadership` unguarded.
        Raises :class:`~coordination.AcquireTimeout` after ``timeout`` seconds.
        """
        return Campaign(self, validate_value(value), timeout)

    async def leader(self) -> Leader | None:
        """The current leader, or ``None`` if there is none."""
        self._coord.check_open()
        return await self._coord.call(
            self._coord._backend.leader(self._coord._key(self.name)), "reading the leader"
        )

    async def observe(self) -> AsyncGenerator[Leader | None, None]:
        """Yield the current leader (or ``None``) now and at every change."""
        key = self._coord._key(self.name)
        backend = self._coord._backend
        last: Leader | bool | None = False  # False: nothing yielded yet
        async for leader in self._coord.stream(lambda: backend.observe(key), f"observing {self.name!r}"):
            if leader != last:
                last = leader
                yield leader


class Config:
    """A config value: ``bytes`` with a version that strictly increases at every write."""

    def __init__(self, coord: Coordinator, name: str) -> None:
        self._coord = coord
        self.name = name
        self._key = coord._key(name)

    def __repr__(self) -> str:
        return f"<Config {self.name!r}>"

    async def get(self) -> Versioned | None:
        """The value and its version, or ``None`` if absent."""
        self._coord.check_open()
        return await self._coord.call(self._coord._backend.get(self._key), f"reading {self.name!r}")

    async def set(self, value: bytes) -> int:
        """Write ``value``; return its new version."""
        value = validate_value(value)
        self._coord.check_open()
        return await self._coord.call(self._coord._backend.set(self._key, value), f"writing {self.name!r}")

    async def compare_and_set(self, value: bytes, expected_version: int | None) -> bool:
        """Write only if the current version is ``expected_version`` (``None``: only if absent)."""
        value = validate_value(value)
        if expected_version is not None and (
            not isinstance(expected_version, int) or isinstance(expected_version, bool)
        ):
            raise TypeError(f"expected_version must be an int or None, not {type(expected_version).__name__}")
        self._coord.check_open()
        return await self._coord.call(
            self._coord._backend.compare_and_set(self._key, value, expected_version), f"writing {self.name!r}"
        )

    async def delete(self) -> bool:
        """Delete the value; return whether it existed."""
        self._coord.check_open()
        return await self._coord.call(self._coord._backend.delete(self._key), f"deleting {self.name!r}")

    async def watch(self) -> AsyncGenerator[Versioned | None, None]:
        """Yield the current state first, then each change (``None`` when absent).

        Versions strictly increase: an item never follows a newer one. Whether every
        intermediate version is seen is the capability ``EVERY_VERSION``; the latest
        value always is. (Only where the server's own version counter went backwards, as
        after a Consul snapshot restore, does the next version start lower.)
        """
        backend, key = self._coord._backend, self._key
        last_version = -1
        absent: bool | None = None  # None: nothing yielded yet
        async for item in self._coord.stream(lambda: backend.watch(key), f"watching {self.name!r}"):
            if item is HISTORY_RESET:
                last_version = -1
                continue
            if item is None:
                if absent:
                    continue
                absent = True
            else:
                if item.version <= last_version:
                    continue
                last_version, absent = item.version, False
            yield item
