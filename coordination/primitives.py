"""The user-facing primitives: locks, elections, config values and groups.

Made by a :class:`~coordination.Coordinator` (``coord.lock(name)``, ``coord.election(name)``,
``coord.config(name)``, ``coord.group(name)``); none of them does I/O when created. They run on the
:class:`~coordination._engine.Engine` below them, which owns sessions and holdings.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from types import TracebackType
from typing import Any, ClassVar, Generic, NoReturn, TypeVar, cast

import anyio

from ._engine import Contender, Engine, Holding, Membership, Session
from ._log import get_logger
from ._names import validate_value
from ._types import Leader, Member, Versioned
from .abc import HISTORY_RESET, BackendSession, Backoff, Kind
from .capabilities import Capability
from .exceptions import LeadershipLost, LockLost, Unsupported

__all__ = [
    "Config",
    "Counter",
    "Election",
    "Group",
    "HeldLock",
    "HeldRead",
    "HeldWrite",
    "Joining",
    "Leader",
    "Leadership",
    "Lock",
    "Member",
    "Membership",
    "RWLock",
    "ReadLock",
    "Semaphore",
    "Slot",
    "Versioned",
    "WriteLock",
]

T = TypeVar("T")
H = TypeVar("H", bound=Holding)

log = get_logger("coordination")

RUN_BACKOFF = (1.0, 30.0)
""":meth:`Election.run`'s extra wait after a term that ended in a loss or a job error: the
first, and the longest it doubles up to, in seconds."""


class HeldLock(Holding):
    """A held distributed lock. ``token`` is its fencing token; pass it to the resource, or
    guard config writes with the lock itself (``config.set(value, guard=held)``)."""

    _what = "lock"
    _kind = "lock"
    _lost_error = LockLost

    async def release(self) -> None:
        """Release the lock.

        Raises :class:`~coordination.LockLost` if it was lost meanwhile (loss is never
        silent) and :class:`~coordination.NotHeld` if it was already released.
        """
        await self._end()


class Leadership(Holding):
    """Leadership of an election. ``token`` is its fencing token for the whole term; config
    writes guarded by it (``config.set(value, guard=leadership)``) are refused once it ends."""

    _what = "leadership of"
    _kind = "election"
    _lost_error = LeadershipLost

    def __init__(
        self, engine: Engine, session: Session, contender: Contender, name: str, token: int, value: bytes
    ) -> None:
        super().__init__(engine, session, contender, name, token, value)
        self.value = value
        """The leader value this leadership last published."""

    async def proclaim(self, value: bytes) -> None:
        """Publish a new leader value, keeping the term and its token.

        Raises :class:`~coordination.LeadershipLost` if leadership was lost and
        :class:`~coordination.NotHeld` after :meth:`resign`.
        """
        value = validate_value(value)
        await self._proclaim(value)
        self.value = value

    async def resign(self) -> None:
        """Give up leadership; the next candidate is woken.

        Raises :class:`~coordination.LeadershipLost` if it was lost meanwhile and
        :class:`~coordination.NotHeld` if already resigned.
        """
        await self._end()


class _Acquirer(Generic[H]):
    """What Lock, Semaphore and a read/write lock's sides share: acquire, try_acquire and
    ``async with``. Not re-entrant: a task that holds it and enters again waits (for a
    semaphore: takes another slot)."""

    _kind: ClassVar[Kind]
    _holding: ClassVar[type[Holding]]
    _limit = 1

    def __init__(self, engine: Engine, name: str) -> None:
        self._engine = engine
        self.name = name
        self._entered: dict[int, list[H]] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    async def _take(self, *, blocking: bool, timeout: float | None) -> H | None:
        engine = self._engine
        holding = cast(type[H], self._holding)
        return await engine.acquire(
            self._kind,
            self.name,
            engine.identity.encode(),
            blocking=blocking,
            timeout=timeout,
            holding=holding,
            limit=self._limit,
        )

    async def acquire(self, timeout: float | None = None) -> H:
        """Wait until held and return the holding.

        Raises :class:`~coordination.AcquireTimeout` after ``timeout`` seconds. A timed-out
        or cancelled acquire leaves nothing behind that could delay the next acquirer.
        """
        held = await self._take(blocking=True, timeout=timeout)
        assert held is not None
        return held

    async def try_acquire(self) -> H | None:
        """Take it if that is possible right now; ``None`` if it would have to wait."""
        return await self._take(blocking=False, timeout=None)

    async def __aenter__(self) -> H:
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


class Lock(_Acquirer[HeldLock]):
    """A distributed lock. Not re-entrant: a task that holds it and enters again waits.

    ``try_acquire()`` returns ``None`` if another holder or waiter is ahead."""

    _kind = "lock"
    _holding = HeldLock


class Slot(Holding):
    """One held slot of a :class:`Semaphore`. ``token`` strictly increases across the
    grants of the semaphore's slots, whoever holds the others."""

    _what = "semaphore slot of"
    _kind = "semaphore"
    _lost_error = LockLost

    async def release(self) -> None:
        """Give the slot back; the next waiter is woken.

        Raises :class:`~coordination.LockLost` if it was lost meanwhile and
        :class:`~coordination.NotHeld` if it was already released.
        """
        await self._end()


class Semaphore(_Acquirer[Slot]):
    """A distributed semaphore: at most ``limit`` holders at once, granted in arrival order.

    ``async with sem as slot:`` holds a slot for the block (lost: the body is cancelled and
    :class:`~coordination.LockLost` raised at its exit). Every holder must use the same
    ``limit``: an acquire with another limit than the holders and waiters have raises
    :class:`~coordination.SemaphoreConflict`, where the backend's layout records the limit.
    """

    _kind = "semaphore"
    _holding = Slot

    def __init__(self, engine: Engine, name: str, limit: int) -> None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"semaphore {name!r}: limit must be an int of at least 1, not {limit!r}")
        super().__init__(engine, name)
        self.limit = limit
        """How many holders the semaphore has at most."""
        self._limit = limit

    def __repr__(self) -> str:
        return f"<Semaphore {self.name!r} limit={self.limit}>"


class HeldRead(Holding):
    """A held read side of an :class:`RWLock`: shared with other readers, never with a
    writer. ``token`` strictly increases across the lock's grants, reads and writes."""

    _what = "read lock"
    _kind: ClassVar[Kind] = "read"
    _lost_error = LockLost

    async def release(self) -> None:
        """Release it. Raises :class:`~coordination.LockLost` if it was lost meanwhile and
        :class:`~coordination.NotHeld` if it was already released."""
        await self._end()


class HeldWrite(HeldRead):
    """A held write side of an :class:`RWLock`: exclusive of every reader and writer."""

    _what = "write lock"
    _kind = "write"


class ReadLock(_Acquirer[HeldRead]):
    """The read side of an :class:`RWLock` (``rw.read()``): shared by readers; a reader
    that comes after a waiting writer waits for it."""

    _kind = "read"
    _holding = HeldRead


class WriteLock(_Acquirer[HeldWrite]):
    """The write side of an :class:`RWLock` (``rw.write()``): exclusive."""

    _kind = "write"
    _holding = HeldWrite


class RWLock:
    """A distributed read/write lock: many readers or one writer. One queue in arrival
    order for both, so a waiting writer blocks the readers after it (writers are not
    starved). ``async with rw.read() as r:`` and ``async with rw.write() as w:``."""

    def __init__(self, engine: Engine, name: str) -> None:
        self._engine = engine
        self.name = name

    def __repr__(self) -> str:
        return f"<RWLock {self.name!r}>"

    def read(self) -> ReadLock:
        """The read side (no I/O until acquired)."""
        return ReadLock(self._engine, self.name)

    def write(self) -> WriteLock:
        """The write side (no I/O until acquired)."""
        return WriteLock(self._engine, self.name)


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
        election = self._election
        leadership = await election._engine.acquire(
            "election", election.name, self._value, blocking=True, timeout=self._timeout, holding=Leadership
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

    def __init__(self, engine: Engine, name: str) -> None:
        self._engine = engine
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
        engine = self._engine
        engine.check_open()
        return await engine.call(engine.backend.leader(engine.key(self.name)), "reading the leader")

    async def candidates(self) -> list[bytes]:
        """The values of every candidate queued, leader first (kazoo's ``contenders()``,
        Curator's ``getParticipants()``)."""
        engine = self._engine
        engine.check_open()
        return await engine.call(engine.backend.candidates(engine.key(self.name)), "listing the candidates")

    async def run(
        self,
        job: Callable[[Leadership], Awaitable[object]],
        value: bytes,
        *,
        min_interval: float = 5.0,
        propagate: bool = False,
    ) -> NoReturn:
        """Lead whenever this coordinator can, forever, running ``job`` in each term.

        Campaigns with ``value``; once leader, runs ``await job(leadership)`` as the guarded
        body of the term (cancelled if leadership is lost). The term ends when the job
        returns, raises, or leadership is lost; then it resigns if it still leads and
        campaigns again, but never before ``min_interval`` seconds since the term began (so
        a job that ends at once, or a flapping network, cannot make the leader change more
        often than that). After a term that ended in a loss or a job error it also waits
        :data:`RUN_BACKOFF` seconds from the term's end, doubling with each such term in a
        row (a term that held longer than the longest delay starts the count again).

        A job's exception is logged at ERROR (with the term's token) and the loop goes on, as
        a scheduler's would; ``propagate=True`` raises it from ``run()`` instead, after
        resigning. Returns only by raising: cancelled (resigning at once, so another
        candidate leads without waiting for a TTL), the coordinator closed (a term it ends
        is lost, then the next campaign raises), or a campaign refused
        (:class:`~coordination.PermissionDenied`). A resignation that fails ends the session,
        so that its leadership cannot outlive the term on the server.
        """
        value = validate_value(value)
        if not (math.isfinite(min_interval) and min_interval >= 0):
            raise ValueError(f"min_interval must be a finite number of seconds >= 0, got {min_interval!r}")
        failures = Backoff(*RUN_BACKOFF)
        terms = 0
        while True:
            leadership = await self.campaign(value)
            # The term began when the server granted it (the holding's own time), so the
            # next grant is at least min_interval after this one, not only after this line.
            began, terms = leadership._since, terms + 1
            failed = await self._term(job, leadership, terms, propagate)
            ended = time.monotonic()
            resume = began + min_interval
            if not failed:
                failures.reset()
            else:
                if ended - began > failures.longest:
                    failures.reset()
                resume = max(resume, ended + failures.next())
            await anyio.sleep(max(0.0, resume - time.monotonic()))

    async def _term(
        self,
        job: Callable[[Leadership], Awaitable[object]],
        leadership: Leadership,
        term: int,
        propagate: bool,
    ) -> bool:
        """One term of :meth:`run`: the job as the guarded body; True if it ended in a
        loss or a job error."""
        where = f"election {self.name!r} term {term} (token {leadership.token})"
        with leadership._bound():
            log.info("%s: leading, running the job", where)
            failure: Exception | None = None
            try:
                async with leadership:
                    try:
                        await job(leadership)
                    except Exception as exc:  # the job's own; leaving the block resigns first
                        failure = exc
            except LeadershipLost as exc:  # this term's loss (the job's own are in failure)
                log.warning("%s: leadership lost, the job was cancelled: %s", where, exc)
                return True
            except Exception as exc:
                # Resigning failed: the contender may still be on the server, where it would
                # lead with no job running. End the session: the server drops it with the session.
                log.error("%s: resigning failed, ending the session: %r", where, exc)
                leadership._session.lose(f"resigning {self.name!r} failed: {exc!r}")
                return True
            if failure is not None:
                if propagate:
                    raise failure
                log.error("%s: the job failed; campaigning again", where, exc_info=failure)
                return True
            log.info("%s: the job returned; resigned", where)
            return False

    async def observe(self) -> AsyncGenerator[Leader | None, None]:
        """Yield the current leader (or ``None``) now and at every change."""
        key = self._engine.key(self.name)
        backend = self._engine.backend
        last: Leader | bool | None = False  # False: nothing yielded yet
        async for leader in self._engine.stream(
            lambda resume: backend.observe(key, resume), f"observing {self.name!r}"
        ):
            if leader != last:
                last = leader
                yield leader


class Config:
    """A config value: ``bytes`` with a version that strictly increases at every write."""

    def __init__(self, engine: Engine, name: str) -> None:
        self._engine = engine
        self.name = name
        self._key = engine.key(name)

    def __repr__(self) -> str:
        return f"<Config {self.name!r}>"

    async def get(self) -> Versioned | None:
        """The value and its version, or ``None`` if absent."""
        self._engine.check_open()
        return await self._engine.call(self._engine.backend.get(self._key), f"reading config {self.name!r}")

    async def set(self, value: bytes, *, guard: HeldLock | Leadership | None = None) -> int:
        """Write ``value``; return its new version.

        With ``guard`` (a :class:`HeldLock` or :class:`Leadership` of this coordinator) the
        server applies the write only if that holding still owns its lock or leads its
        election, checked by the server in the same atomic operation as the write. Refused,
        it writes nothing and raises the holding's loss error (:class:`~coordination.LockLost`,
        :class:`~coordination.LeadershipLost`), and the holding is lost from here on.
        """
        value = validate_value(value)
        if guard is not None:
            return await self._guarded(
                guard, lambda bs, contender: bs.guarded_set(contender, self._key, value), "writing"
            )
        self._engine.check_open()
        return await self._engine.call(
            self._engine.backend.set(self._key, value), f"writing config {self.name!r}"
        )

    async def compare_and_set(
        self, value: bytes, expected_version: int | None, *, guard: HeldLock | Leadership | None = None
    ) -> bool:
        """Write only if the current version is ``expected_version`` (``None``: only if absent).

        With ``guard``, also only while that holding is the owner (see :meth:`set`): a
        version that does not match returns ``False``, a guard that does not hold raises.
        """
        value = validate_value(value)
        if expected_version is not None and (
            not isinstance(expected_version, int) or isinstance(expected_version, bool)
        ):
            raise TypeError(f"expected_version must be an int or None, not {type(expected_version).__name__}")
        if guard is not None:
            return await self._guarded(
                guard,
                lambda bs, contender: bs.guarded_compare_and_set(
                    contender, self._key, value, expected_version
                ),
                "writing",
            )
        self._engine.check_open()
        return await self._engine.call(
            self._engine.backend.compare_and_set(self._key, value, expected_version),
            f"writing config {self.name!r}",
        )

    async def delete(self, *, guard: HeldLock | Leadership | None = None) -> bool:
        """Delete the value; return whether it existed. With ``guard``, only while that
        holding is the owner (see :meth:`set`)."""
        if guard is not None:
            return await self._guarded(
                guard, lambda bs, contender: bs.guarded_delete(contender, self._key), "deleting"
            )
        self._engine.check_open()
        return await self._engine.call(
            self._engine.backend.delete(self._key), f"deleting config {self.name!r}"
        )

    async def _guarded(
        self,
        guard: HeldLock | Leadership,
        write: Callable[[BackendSession[Any], Any], Awaitable[T]],
        verb: str,
    ) -> T:
        """A write guarded by ``guard``: what :meth:`set`, :meth:`compare_and_set` and
        :meth:`delete` do with ``guard=``.

        The server refuses the write, writing nothing, once the holding is no longer the
        owner, even while this client still thinks it is (its key or node deleted by an
        operator, its session ended while this process was paused): then the holding's loss
        error is raised (:class:`~coordination.LockLost`, :class:`~coordination.LeadershipLost`)
        and the holding is lost from here on, its ``async with`` body cancelled. A guard
        already released raises :class:`~coordination.NotHeld` and one known to be lost its
        loss error, both before any I/O. Needs :attr:`Capability.GUARDED_WRITES`.
        """
        engine = self._engine
        if not isinstance(guard, Holding):
            raise TypeError(f"guard must be a HeldLock or a Leadership, not {type(guard).__name__}")
        if guard._engine is not engine:
            raise ValueError(
                f"the guard {guard!r} belongs to another coordinator: guard writes of {self!r} with a"
                " lock or leadership of the coordinator that made it"
            )
        engine.check_open()
        if Capability.GUARDED_WRITES not in engine.backend.capabilities:
            raise Unsupported(f"the {engine.backend.scheme} backend cannot guard writes by a holding")
        return await guard._guarded(
            write, f"{verb} config {self.name!r} guarded by {guard._what} {guard.name!r}"
        )

    async def watch(self) -> AsyncGenerator[Versioned | None, None]:
        """Yield the current state first, then each change (``None`` when absent).

        Versions strictly increase: an item never follows a newer one. Whether every
        intermediate version is seen is the capability ``EVERY_VERSION``; the latest
        value always is. (Only where the server's own version counter went backwards, as
        after a Consul snapshot restore, does the next version start lower.)
        """
        backend, key = self._engine.backend, self._key
        last_version = -1
        absent: bool | None = None  # None: nothing yielded yet
        async for item in self._engine.stream(
            lambda resume: backend.watch(key, resume), f"watching {self.name!r}"
        ):
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


class Counter:
    """A shared integer: ``await counter.add(n)`` adds atomically and returns the new value.

    Stored as the config value ``name`` in ASCII decimal (``b"42"``; absent is 0), the
    format kazoo's ``Counter`` uses, readable by ``etcdctl get`` and ``consul kv get``.
    Adding is a compare-and-set loop on the value's version: it retries when another
    writer got in between, and never adds twice.
    """

    def __init__(self, engine: Engine, name: str) -> None:
        self._engine = engine
        self.name = name
        self._key = engine.key(name)

    def __repr__(self) -> str:
        return f"<Counter {self.name!r}>"

    def _parse(self, stored: Versioned | None) -> int:
        if stored is None:
            return 0
        try:
            return int(stored.value.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise ValueError(
                f"counter {self.name!r}: the stored value {stored.value[:40]!r} is not an integer "
                "in ASCII decimal (is the name used for something else?)"
            ) from None

    async def get(self) -> int:
        """The current value (0 if never added to)."""
        engine = self._engine
        engine.check_open()
        return self._parse(await engine.call(engine.backend.get(self._key), f"reading counter {self.name!r}"))

    async def add(self, n: int = 1) -> int:
        """Add ``n`` (negative subtracts) and return the value after this addition.

        An :class:`~coordination.OperationTimeout` or :class:`~coordination.Unavailable`
        from the write means its fate is unknown (the server may have applied it): this
        never retries a write that may have been applied, so nothing is added twice.
        """
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError(f"counter {self.name!r}: add() takes an int, not {type(n).__name__}")
        engine = self._engine
        engine.check_open()
        backend, what = engine.backend, f"adding to counter {self.name!r}"
        backoff = Backoff(first=0.001, longest=0.05)
        while True:
            stored = await engine.call(backend.get(self._key), what)
            value = self._parse(stored) + n
            expected = None if stored is None else stored.version
            if await engine.call(backend.compare_and_set(self._key, str(value).encode(), expected), what):
                return value
            # Another writer got in between: read again, after a short random pause so that
            # writers that collided do not collide again in lock step.
            await anyio.sleep(random.uniform(0, backoff.next()))


class Joining:
    """A pending join: ``await`` it for the :class:`Membership`, or use ``async with`` (the
    member leaves at the end of the block)."""

    def __init__(self, group: Group, value: bytes) -> None:
        self._group = group
        self._value = value
        self._membership: Membership | None = None

    async def _run(self) -> Membership:
        engine = self._group._engine
        membership = Membership(engine, self._group.name, uuid.uuid4().hex, self._value)
        await engine.join(membership)
        return membership

    def __await__(self) -> Generator[Any, None, Membership]:
        return self._run().__await__()

    async def __aenter__(self) -> Membership:
        if self._membership is not None:
            raise RuntimeError("a Joining can be entered only once; call join() again")
        self._membership = await self._run()
        return self._membership

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._membership is not None
        await self._membership.leave()


class Group:
    """A group: who is a member right now. A member exists while its session lives."""

    def __init__(self, engine: Engine, name: str) -> None:
        self._engine = engine
        self.name = name
        self._key = engine.key(name)

    def __repr__(self) -> str:
        return f"<Group {self.name!r}>"

    def join(self, value: bytes) -> Joining:
        """Join with ``value`` (an address, say); re-joined by itself after a session loss.

        ``async with group.join(b"10.0.0.7:8080") as member:`` is a member for the block;
        ``member = await group.join(...)`` until ``await member.leave()``. Raises
        :class:`~coordination.OperationTimeout` if the server cannot be reached in time.
        """
        return Joining(self, validate_value(value))

    async def members(self) -> list[Member]:
        """Every member, sorted by id."""
        engine = self._engine
        engine.check_open()
        found = await engine.call(engine.backend.members(self._key), f"listing group {self.name!r}")
        return sorted(found)

    async def watch(self) -> AsyncGenerator[list[Member], None]:
        """Yield the members (sorted by id) now, then after every change."""
        backend, key = self._engine.backend, self._key
        last: list[Member] | None = None
        async for found in self._engine.stream(
            lambda resume: backend.watch_group(key, resume), f"watching group {self.name!r}"
        ):
            members = sorted(found)
            if members != last:
                last = members
                yield members
