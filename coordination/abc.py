"""What a backend implements.

A backend is a distribution that registers a :class:`Backend` subclass in the entry-point
group ``coordination.backends``::

    [project.entry-points."coordination.backends"]
    etcd = "coordination_etcd:EtcdBackend"

The core owns everything a backend could get wrong: URL and option parsing, name checks,
the session state machine, the local loss deadline, keepalive scheduling, retries after a
lost session, cancellation clean-up, cancelling an ``async with`` body on loss, and the
ordering and de-duplication of watch streams. A backend implements only the I/O below,
in three layers:

* :class:`Backend` — one client connection per ``connect()``: config reads and writes,
  election reads, opening sessions.
* :class:`BackendSession` — one server-side session (a ZooKeeper session, an etcd lease,
  a Consul session): keepalive, close, the contender queue that locks and elections
  share (``enqueue`` → ``wait_owner`` → ``withdraw``), config writes guarded by an
  owner (``guarded_set``, ``guarded_compare_and_set``, ``guarded_delete``), and group
  members (``join`` → ``leave``).
* :class:`SessionMonitor` — given by the core; the backend calls it when it learns of a
  disconnect, a reconnect or an expiry before the next keepalive would.

Every name a hook receives is already validated and already joined with the URL's
namespace (``"myapp/jobs/nightly"``). Values are ``bytes``. Hooks raise only the errors in
:mod:`coordination.exceptions`; :func:`map_errors` helps map a client's own errors, keeping
the original as ``__cause__``.
"""

from __future__ import annotations

import contextlib
import enum
import math
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, ClassVar, Generic, Literal, NamedTuple, Protocol, TypeVar

import anyio
from anyio.abc import TaskGroup

from ._log import get_logger
from ._types import Leader, Member, Versioned
from ._url import (
    AUTH_OPTIONS,
    COMMON_OPTIONS,
    TLS_OPTIONS,
    Option,
    ParsedURL,
    certificate_refusal,
    client_certificate,
    credentials,
    parse_url,
    ssl_context,
    tls_enabled,
)
from .capabilities import Capability
from .exceptions import CoordinationError, Unsupported

__all__ = [
    "certificate_refusal",
    "client_certificate",
    "get_logger",
    "AUTH_OPTIONS",
    "COMMON_OPTIONS",
    "HISTORY_RESET",
    "TLS_OPTIONS",
    "Backend",
    "BackendSession",
    "Backoff",
    "HistoryReset",
    "Kind",
    "Option",
    "ParsedURL",
    "Queued",
    "RWMode",
    "ResumePoint",
    "SessionMonitor",
    "credentials",
    "map_errors",
    "mapped_error",
    "parse_url",
    "ssl_context",
    "tls_enabled",
]

Kind = Literal["lock", "election", "semaphore", "read", "write"]
"""Which primitive a contender queue belongs to: a lock, an election, a semaphore
(:meth:`BackendSession.enqueue_semaphore`), or a read/write lock's ``read`` and ``write``
sides (:meth:`BackendSession.enqueue_rw`, one queue for both). Backends may lay locks and
elections out the same way."""

RWMode = Literal["read", "write"]
"""Which side of a read/write lock a contender takes."""

ContenderT = TypeVar("ContenderT")
ClientT = TypeVar("ClientT")


class HistoryReset(enum.Enum):
    """The type of :data:`HISTORY_RESET`."""

    HISTORY_RESET = "history reset"


HISTORY_RESET = HistoryReset.HISTORY_RESET
"""Yielded by :meth:`Backend.watch` when the server's versions restarted lower."""


class Backoff:
    """Pauses between retries, doubling from ``first`` up to ``longest`` seconds: the one
    backoff of the core (session reopening, withdraws, stream restarts), for backends too."""

    def __init__(self, first: float = 0.05, longest: float = 2.0) -> None:
        self.first = first
        self.longest = longest
        self.delay = first

    def reset(self) -> None:
        self.delay = self.first

    def next(self) -> float:
        """The current delay; the next one is twice as long (up to ``longest``)."""
        delay, self.delay = self.delay, min(self.delay * 2, self.longest)
        return delay

    async def wait(self, at_most: float = math.inf) -> None:
        """Pause for the current delay (but not longer than ``at_most``), then double it."""
        await anyio.sleep(min(self.next(), at_most))


class ResumePoint:
    """Where a backend's watch or observe stream left off, kept by the core across restarts.

    The core makes one per ``config.watch()`` or ``election.observe()`` and passes the same
    one to every restart of :meth:`Backend.watch` / :meth:`Backend.observe`; ``position``
    starts as ``None``. A backend that can resume (etcd: the next revision to watch from)
    sets it as it goes and starts from it; others may ignore it. A stream that breaks raises
    :class:`~coordination.Unavailable` and does not retry by itself: the core is the one
    retry layer (one backoff, and no restart once the coordinator is closed).
    """

    __slots__ = ("position",)

    def __init__(self) -> None:
        self.position: Any = None

    def __repr__(self) -> str:
        return f"<ResumePoint {self.position!r}>"


class Queued(NamedTuple, Generic[ContenderT]):
    """What :meth:`BackendSession.enqueue` returns: the contender, and its fencing token if
    it was first in the queue as it joined (``None``: another contender was ahead)."""

    contender: ContenderT
    token: int | None


class SessionMonitor(Protocol):
    """Callbacks into the core's session state machine. Call them from the event loop."""

    def suspended(self) -> None:
        """The connection dropped; the session may still be alive on the server."""

    def resumed(self) -> None:
        """The connection is back and the server still knows the session."""

    def expired(self) -> None:
        """The server says the session is gone: every lock on it is lost, now."""


class BackendSession(ABC, Generic[ContenderT]):
    """One session on the server; the core keeps it alive and replaces it when it is lost.

    Locks and elections are both a queue of *contenders* under a name: the first contender
    owns the lock or leads the election. ``ContenderT`` is whatever the backend needs to
    find its contender again (a key, a node path); the core treats it as opaque.

    Attributes the backend sets before :meth:`Backend.open_session` returns:

    * ``id`` — the server's id for the session, as text (lease id in hex, ZooKeeper
      session id, Consul session UUID). Shown to users as ``coord.session_id``.
    * ``ttl`` — the time to live the server granted, in seconds: how long after handling a
      keepalive the server keeps the session (and its locks) from anyone else. Where the
      server may end a session sooner without the client hearing of it (Consul, when the
      agent that made it leaves: then its locks are free after the lock-delay), ``ttl`` is
      that shorter bound, since the core's local deadline is measured from it.
    * ``keepalive_interval`` — seconds between keepalives (default: a third of ``ttl``).
    """

    id: str
    ttl: float
    keepalive_interval: float

    @abstractmethod
    async def keepalive(self) -> float:
        """Renew the session once; return the TTL the server granted from now, in seconds.

        The core measures the local loss deadline from the moment it *sent* this call, so
        the reply must prove the session was alive when the server handled it.

        Raises :class:`~coordination.SessionExpired` if the server no longer knows the
        session, :class:`~coordination.Unavailable` if it could not be reached.
        """

    @abstractmethod
    async def close(self) -> None:
        """End the session on the server, releasing everything it holds.

        Best effort: the core bounds it with the operation timeout and ignores failures
        (the server expires the session at its TTL anyway).
        """

    def slot(self, kind: Kind, name: str) -> str | None:
        """Where on the server a contender of ``kind`` and ``name`` stands, if a session can
        have only one contender there at a time; ``None`` (the default) if it can have many.

        etcd's recipe gives a session one key per name (``<name>/<lease id>``) and Consul one
        holding of a lock key per session, so two contenders of one session must not go to
        the server for the same slot at once. The core queues them in the session, in
        arrival order: it calls :meth:`enqueue` for the next one only once the one before
        has been withdrawn. ZooKeeper (a sequential node each) and memory need no slot.
        """
        return None

    @abstractmethod
    async def enqueue(self, kind: Kind, name: str, value: bytes) -> Queued[ContenderT]:
        """Join the contender queue of ``name``, bound to this session, and say whether the
        new contender is first: its fencing token if so, ``None`` if another is ahead.

        For a lock ``value`` is the holder identity; for an election it is the candidate's
        value, which becomes the leader value. The contender is on the server when this
        returns (a ``try_acquire`` is this call and, if another is ahead, :meth:`withdraw`).
        If this raises, it must leave no contender behind (a lost reply to the create must
        not leave an orphan that blocks others).

        The token is an integer that strictly increases across successive owners of
        ``name``. Raises :class:`~coordination.SessionExpired` if the session is gone.
        """

    @abstractmethod
    async def wait_owner(self, contender: ContenderT) -> int:
        """Wait until ``contender`` (which :meth:`enqueue` found behind another) is first in
        its queue; return its fencing token.

        Waiting must be driven by a watch on the contender just ahead (not by polling) and,
        where the backend allows, wake only this waiter. The core cancels this call on a
        timeout, on cancellation of the caller, and when the session is lost; it then calls
        :meth:`withdraw`, so this method need not clean up. Raises
        :class:`~coordination.SessionExpired` if the session is gone.
        """

    @abstractmethod
    async def withdraw(self, contender: ContenderT) -> None:
        """Leave the queue: release the lock, resign the election, or abandon a wait.

        Must succeed if the contender is already gone. The core retries it in the
        background while the session lives if it raises
        :class:`~coordination.Unavailable`.
        """

    @abstractmethod
    async def proclaim(self, contender: ContenderT, value: bytes) -> None:
        """Replace the leader value of an owning election contender, keeping its token.

        Raises :class:`~coordination.NotHeld` if ``contender`` is no longer the owner.
        """

    # -- semaphores and read/write locks ---------------------------------------------------
    #
    # Both are contender queues too: :meth:`wait_owner` waits for a contender they made,
    # :meth:`withdraw` releases it, and the core makes its holding. A backend that lacks
    # them leaves the defaults, which refuse.

    async def enqueue_semaphore(self, name: str, value: bytes, limit: int) -> Queued[ContenderT]:
        """Join the semaphore ``name``, bound to this session: at most ``limit`` contenders
        hold it at once, granted in arrival order (the holders are always the first
        ``limit`` contenders in the queue). Return the contender, and its token if it holds
        already (``None``: ``limit`` others are ahead; :meth:`wait_owner` waits for a slot).

        ``value`` is the holder identity. Tokens strictly increase across successive grants
        of ``name``, whoever holds the other slots. Waking is driven by watches, waking a
        waiter only when a holder it could succeed leaves (not every waiter at every
        release), where the backend allows it.

        Raises :class:`~coordination.SemaphoreConflict` (leaving nothing behind) if the
        semaphore's holders or waiters use another limit, where the layout records it; the
        core's ``limit`` is always at least 1. Otherwise as :meth:`enqueue`.
        """
        raise Unsupported("this backend has no semaphores")

    async def enqueue_rw(self, mode: RWMode, name: str, value: bytes) -> Queued[ContenderT]:
        """Join the read/write lock ``name`` (one queue for both modes, in arrival order),
        bound to this session, and return its token if it holds already.

        A ``read`` contender holds while no ``write`` contender is ahead of it (readers
        share); a ``write`` contender holds when it is first. So a waiting writer blocks the
        readers that come after it: writers are not starved. Tokens strictly increase across
        successive grants of ``name`` in either mode. Otherwise as :meth:`enqueue`.
        """
        raise Unsupported("this backend has no read/write locks")

    # -- writes guarded by a holding ------------------------------------------------------

    async def guarded_set(self, contender: ContenderT, key: str, value: bytes) -> int:
        """:meth:`Backend.set`, applied only while ``contender`` (an owner: it holds its lock
        or leads its election) is still the owner, as the server sees it in the same atomic
        operation as the write: etcd's transaction comparing the contender's key, ZooKeeper's
        ``multi`` with a check of its node, Consul's transaction with a ``check-session``.
        One round trip where the write alone is one.

        Raises :class:`~coordination.NotHeld` if the server refused the write on that check
        (then nothing was written), :class:`~coordination.SessionExpired` if the session is
        gone. The core turns both into the holding's loss error. The default refuses: a
        backend that can guard writes overrides the three ``guarded_*`` hooks and declares
        :attr:`Capability.GUARDED_WRITES`.
        """
        raise Unsupported("this backend cannot guard writes by a holding")

    async def guarded_compare_and_set(
        self, contender: ContenderT, key: str, value: bytes, expected: int | None
    ) -> bool:
        """:meth:`Backend.compare_and_set`, guarded as :meth:`guarded_set` is: ``False`` if
        the version is not ``expected`` while the guard holds, NotHeld if the guard does not
        (whatever the version)."""
        raise Unsupported("this backend cannot guard writes by a holding")

    async def guarded_delete(self, contender: ContenderT, key: str) -> bool:
        """:meth:`Backend.delete`, guarded as :meth:`guarded_set` is: whether it existed."""
        raise Unsupported("this backend cannot guard writes by a holding")

    # -- group members -------------------------------------------------------------------

    async def join(self, group: str, member_id: str, value: bytes) -> None:
        """Make ``member_id`` (with ``value``) a member of ``group``, bound to this session: it
        leaves when the session ends, however it ends.

        The core picks the id and keeps it across sessions: after a loss it joins the same id
        on its next session, possibly while the server still keeps the entry of the session
        before (not yet expired or closed). Replace that entry then; never fail on it. A
        lost reply to the write may be retried with the same arguments. The default refuses:
        a backend that has groups overrides this, :meth:`leave`, :meth:`Backend.members` and
        :meth:`Backend.watch_group`.
        """
        raise Unsupported("this backend has no group membership")

    async def leave(self, group: str, member_id: str) -> None:
        """Remove ``member_id`` from ``group`` if this session's entry is still there (never
        another session's); succeed if it is gone already."""
        raise Unsupported("this backend has no group membership")


class Backend(ABC):
    """One client connection to a coordination service, made by ``connect()``.

    The class attributes describe the backend; the subclass docstring should give its
    URL format and a table of its options. ``__init__`` receives the parsed URL and the
    typed option values (``options`` includes the common ``ttl``, ``timeout`` and
    ``identity``) and must do no I/O.
    """

    scheme: ClassVar[str]
    """Canonical name shown as ``coord.backend``, e.g. ``"etcd"``."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    """What this backend can do beyond the common semantics."""

    options: ClassVar[Mapping[str, Option]] = COMMON_OPTIONS
    """Every option the URL query or ``connect(**options)`` may set (include the common ones)."""

    wakeups: int | None = None
    """How many times a waiting contender of this client woke up to look again whether it
    owns the lock or leads: a watch event on the contender ahead, a blocking query answered,
    a poll. Count it (start at 0 in ``__init__``) so that the conformance suite can tell a
    watch from a poll and one wake-up per release from a herd; ``None`` (the default): not
    counted, and the suite reports that it cannot check either."""

    background: TaskGroup | None = None
    """Where the backend runs background tasks of its own (a connection's read loop, a
    reconnect loop): the coordinator's task group, set by the core before :meth:`open` and
    cancelled after :meth:`aclose` returns. A task there ends when its client closes and
    never raises (an error would end the coordinator): catch and log. Reach it with
    ``self.opened(self.background)``."""

    def __init__(self, url: ParsedURL, options: Mapping[str, Any]) -> None:
        self.url = url
        self.settings = dict(options)

    def woke(self) -> None:
        """Count one wake-up of a waiting contender in :attr:`wakeups`. A backend that calls
        it sets ``self.wakeups = 0`` in ``__init__``."""
        if self.wakeups is None:
            raise RuntimeError(f"{type(self).__name__} counts wake-ups: set self.wakeups = 0 in __init__")
        self.wakeups += 1

    def opened(self, client: ClientT | None) -> ClientT:
        """``client`` (whatever :meth:`open` made), or the one error for a backend used
        before :meth:`open` or after :meth:`aclose`. The core never does that (it checks the
        coordinator is open before any call); a backend's own property uses this::

            @property
            def client(self) -> EtcdClient:
                return self.opened(self._client)
        """
        if client is None:
            raise RuntimeError(f"the {type(self).__name__} is not open (open() first; not after aclose())")
        return client

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect the client. Raise :class:`~coordination.Unavailable` if unreachable."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Close the client. Sessions are already closed when this is called."""

    async def failover(self, reason: str) -> None:  # noqa: B027 - optional hook
        """A keepalive failed or went unanswered for a fifth of the TTL: the node this client
        talks to may be dead, cut off, or hanging without closing the connection.

        Send the next requests (the core's next keepalive among them) to another node of the
        URL, and end requests still waiting on this one with
        :class:`~coordination.Unavailable` so that they are retried there. Called once per
        failed keepalive, so at most ten times per TTL while the cluster is out of reach.
        The default does nothing: for a client that detects a silent node and moves by
        itself (ZooKeeper's), or a single server.
        """

    @abstractmethod
    async def open_session(self, ttl: float, monitor: SessionMonitor) -> BackendSession[Any]:
        """Open a new session with (at least) ``ttl`` seconds to live.

        ``monitor`` is this session's link to the core state machine; keep it to report
        disconnects and expiry as soon as the client sees them.
        """

    async def expire_session(self, session_id: str) -> None:
        """End the session ``session_id`` from this client, as the server would on expiry.

        Lets an operator evict a stuck holder, and the conformance suite force an expiry
        from outside. Backends that can, declare :attr:`Capability.EXPIRE_SESSION`.
        """
        raise Unsupported(f"the {self.scheme} backend cannot expire another client's session")

    # -- elections (no session needed) ---------------------------------------------------

    @abstractmethod
    async def leader(self, name: str) -> Leader | None:
        """The current leader of election ``name``, or ``None`` if it has none."""

    async def candidates(self, name: str) -> list[bytes]:
        """The values of every candidate queued in election ``name``, leader first, then in
        the order they would lead (a candidate's value is what it campaigned with, or last
        proclaimed). A candidate that left (resigned, cancelled, its session ended) is not
        listed. The default refuses: a backend that can list them overrides this."""
        raise Unsupported(f"the {self.scheme} backend cannot list an election's candidates")

    # -- groups (no session needed) ------------------------------------------------------

    async def members(self, group: str) -> list[Member]:
        """Every member of ``group`` whose session lives, in any order (the core sorts them
        by id). Members that peers of the native layout made count too."""
        raise Unsupported(f"the {self.scheme} backend has no group membership")

    async def watch_group(self, group: str, resume: ResumePoint) -> AsyncIterator[list[Member]]:
        """Yield the members of ``group`` now, then after every change, in any order.

        One server-side watch for the whole group, however many members it has (not one per
        member). Repeats are fine: the core drops a list equal to the one before. Raise
        :class:`~coordination.Unavailable` when the stream breaks, without retrying: the
        core restarts it with the same ``resume`` point.
        """
        raise Unsupported(f"the {self.scheme} backend has no group membership")
        yield []  # pragma: no cover - makes this an async generator

    @abstractmethod
    def observe(self, name: str, resume: ResumePoint) -> AsyncIterator[Leader | None]:
        """Yield the current leader (or ``None``) of ``name`` now and after every change.

        Driven by watches. Repeats are fine: the core drops an item equal to the one before.
        Raise :class:`~coordination.Unavailable` when the stream breaks, without retrying:
        the core restarts it with the same ``resume`` point (see :class:`ResumePoint`).
        """

    # -- config ----------------------------------------------------------------------------

    @abstractmethod
    async def get(self, key: str) -> Versioned | None:
        """The value of ``key`` and its version, or ``None`` if absent (a consistent read)."""

    @abstractmethod
    async def set(self, key: str, value: bytes) -> int:
        """Write ``value``; return its version, greater than any earlier version of ``key``.

        (A backend whose server skips a write of the value already stored may return the
        unchanged version; its docstring says so.)
        """

    @abstractmethod
    async def compare_and_set(self, key: str, value: bytes, expected: int | None) -> bool:
        """Write only if the version is ``expected`` (``None``: only if absent)."""

    @abstractmethod
    async def delete(self, key: str) -> bool:
        """Delete ``key``; return whether it existed."""

    @abstractmethod
    def watch(self, key: str, resume: ResumePoint) -> AsyncIterator[Versioned | HistoryReset | None]:
        """Yield the state of ``key`` now, then after every change (``None`` = absent).

        Driven by watches, not polling. Where history is lost (compaction, a change while
        disconnected) re-read and yield the latest state. The core drops any item whose
        version is not above the last one yielded, so re-reads are safe. Where the server's
        version counter itself went backwards (a Consul index reset after a snapshot
        restore), yield :data:`HISTORY_RESET` before the re-read, so its lower version is
        not dropped. Raise :class:`~coordination.Unavailable` when the stream breaks, without
        retrying: the core restarts it with the same ``resume`` point (see :class:`ResumePoint`).
        """


@contextlib.contextmanager
def map_errors(mapping: Mapping[type[BaseException], type[CoordinationError]]) -> Iterator[None]:
    """Re-raise a client error as the public error of its most specific match, keeping it
    as ``__cause__``: the entry for the class nearest the error's own in its MRO wins,
    whatever the mapping's order. Errors that match nothing, and coordination errors,
    pass through.

    ::

        with map_errors({grpc.aio.AioRpcError: Unavailable, OSError: Unavailable}):
            await client.put(key, value)
    """
    try:
        yield
    except CoordinationError:
        raise
    except Exception as exc:
        public = mapped_error(exc, mapping)
        if public is None:
            raise
        raise public(f"{type(exc).__name__}: {exc}") from exc


def mapped_error(
    exc: BaseException, mapping: Mapping[type[BaseException], type[CoordinationError]]
) -> type[CoordinationError] | None:
    """The public error ``mapping`` gives ``exc``: its most specific match, or ``None``."""
    for cls in type(exc).__mro__:
        if cls in mapping:
            return mapping[cls]
    for client_error, public_error in mapping.items():  # virtual subclasses (ABCs)
        if isinstance(exc, client_error):
            return public_error
    return None
