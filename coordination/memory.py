"""The embedded in-process backend: ``memory://`` and ``memory://NAME``.

A real implementation of the backend interface, kept in this process: sessions with a
TTL, FIFO contender queues whose waiters each watch only the contender ahead, strictly
increasing revisions for tokens and versions, and watches woken by events. Use it to try
the library and to unit-test code that uses it; switch the URL for production.

URL: ``memory://[NAME][/namespace][?ttl=10&timeout=10&identity=...]``

Connections to the same ``NAME`` on one event loop share one store (each connection has
its own session); ``memory://`` is the store named ``default``. A store lives as long as a
connection to it is open.

======== ======= ===========================================================
option   default meaning
======== ======= ===========================================================
ttl      10      session time to live, seconds
timeout  10      operation timeout, seconds
identity         holder identity recorded with locks (default ``hostname:pid``)
======== ======= ===========================================================

Declared capabilities: FAIR, SINGLE_WAKEUP, EXPIRE_SESSION, GUARDED_WRITES. Not CROSS_PROCESS (state is
in this process) and not EVERY_VERSION (a watcher sees the latest value when it wakes).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
import weakref
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from ._types import Leader, Member, Versioned
from ._url import ParsedURL
from .abc import Backend, BackendSession, Kind, Queued, ResumePoint, SessionMonitor
from .capabilities import Capability
from .exceptions import InvalidURL, NotHeld, SessionExpired

__all__ = ["MemoryBackend", "MemoryStore"]

# The stores of each event loop by name; a store leaves when its last connection closes.
_stores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, MemoryStore]]
_stores = weakref.WeakKeyDictionary()
# Session numbers are unique in the process, not per store: a store dropped and made again
# under the same name must not reuse the id of a session a caller still remembers.
_session_numbers = itertools.count(1)


@dataclass(eq=False)
class _Contender:
    session: _MemorySession
    kind: Kind
    name: str
    value: bytes
    revision: int
    gone: anyio.Event = field(default_factory=anyio.Event)


class _Changes:
    """A one-shot event per key, replaced at every change: waiters grab it, then read."""

    def __init__(self) -> None:
        self._events: dict[Any, anyio.Event] = {}

    def event(self, key: Any) -> anyio.Event:
        event = self._events.get(key)
        if event is None:
            event = self._events[key] = anyio.Event()
        return event

    def notify(self, key: Any) -> None:
        event = self._events.pop(key, None)
        if event is not None:
            event.set()


class MemoryStore:
    """The shared state behind one ``memory://NAME``: sessions, queues and config."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.connections = 0
        self.revision = 0
        self.sessions: dict[str, _MemorySession] = {}
        self.queues: dict[tuple[Kind, str], list[_Contender]] = {}
        self.values: dict[str, Versioned] = {}
        self.groups: dict[str, dict[str, tuple[_MemorySession, bytes]]] = {}
        self.changes = _Changes()
        self.watching: dict[str, int] = {}
        """Per group, how many watches wait on it now (the suite counts them)."""

    @classmethod
    def attach(cls, name: str) -> MemoryStore:
        """The store for ``name`` on the running event loop, counting one more connection."""
        stores = _stores.setdefault(asyncio.get_running_loop(), {})
        store = stores.get(name)
        if store is None:
            store = stores[name] = cls(name)
        store.connections += 1
        return store

    def detach(self) -> None:
        """Count one connection less; the last one to leave drops the store."""
        self.connections -= 1
        if self.connections == 0:
            stores = _stores.get(asyncio.get_running_loop(), {})
            if stores.get(self.name) is self:
                del stores[self.name]

    def next_revision(self) -> int:
        self.revision += 1
        return self.revision

    def expire(self, session_id: str) -> bool:
        """End a session now, as a server would at its TTL. Returns whether it existed."""
        session = self.sessions.get(session_id)
        if session is None:
            return False
        self._end(session)
        session.monitor.expired()
        return True

    def reap(self) -> None:
        """Expire every session whose TTL has run out."""
        now = time.monotonic()
        for session in [s for s in self.sessions.values() if s.expires_at <= now]:
            self._end(session)
            session.monitor.expired()

    def _end(self, session: _MemorySession) -> None:
        del self.sessions[session.id]
        for contender in list(session.contenders):
            self.remove(contender)
        for group, member_id in list(session.members):
            self.drop_member(session, group, member_id)

    def drop_member(self, session: _MemorySession, group: str, member_id: str) -> None:
        """Remove ``session``'s entry for ``member_id`` (not another session's)."""
        session.members.discard((group, member_id))
        members = self.groups.get(group, {})
        entry = members.get(member_id)
        if entry is None or entry[0] is not session:
            return
        del members[member_id]
        if not members:
            del self.groups[group]
        self.changes.notify(("group", group))

    def members(self, group: str) -> list[Member]:
        self.reap()
        return [Member(member_id, value) for member_id, (_, value) in self.groups.get(group, {}).items()]

    def members_ttl_left(self, group: str) -> float:
        """Seconds until the first member session of ``group`` expires unless renewed."""
        now = time.monotonic()
        entries = self.groups.get(group, {}).values()
        return max(0.0, min((session.expires_at - now for session, _ in entries), default=math.inf))

    def remove(self, contender: _Contender) -> None:
        key = (contender.kind, contender.name)
        queue = self.queues.get(key)
        if queue is None or contender not in queue:
            return
        was_head = queue[0] is contender
        queue.remove(contender)
        contender.session.contenders.discard(contender)
        if not queue:
            del self.queues[key]
        contender.gone.set()  # wakes the one contender waiting behind this one
        if was_head:
            self.changes.notify(key)

    def evict(self, kind: Kind, name: str) -> bool:
        """Remove the owner of lock or election ``name`` while its session lives, as an
        operator deleting its key or node on a server would; whether there was one."""
        head = self.head(kind, name)
        if head is None:
            return False
        self.remove(head)
        return True

    def head(self, kind: Kind, name: str) -> _Contender | None:
        self.reap()
        queue = self.queues.get((kind, name))
        return queue[0] if queue else None

    def ttl_left(self, contender: _Contender | None) -> float:
        """Seconds until ``contender``'s session expires unless renewed (inf if none)."""
        if contender is None:
            return math.inf
        return max(0.0, contender.session.expires_at - time.monotonic())

    def compare_and_set(self, key: str, value: bytes, expected: int | None) -> bool:
        current = self.values.get(key)
        if (current.version if current else None) != expected:
            return False
        self.write(key, value)
        return True

    def delete(self, key: str) -> bool:
        if key not in self.values:
            return False
        self.write(key, None)
        return True

    def write(self, key: str, value: bytes | None) -> int:
        revision = self.next_revision()
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = Versioned(value, revision)
        self.changes.notify(key)
        return revision


class _MemorySession(BackendSession[_Contender]):
    def __init__(self, backend: MemoryBackend, ttl: float, monitor: SessionMonitor) -> None:
        self.backend = backend
        store = self.store = backend.store
        self.id = f"{store.name}-{next(_session_numbers)}"
        self.ttl = ttl
        self.keepalive_interval = ttl / 3
        self.monitor = monitor
        self.expires_at = time.monotonic() + ttl
        self.contenders: set[_Contender] = set()
        self.members: set[tuple[str, str]] = set()

    def _check(self) -> None:
        self.store.reap()
        if self.store.sessions.get(self.id) is not self:
            raise SessionExpired(f"memory session {self.id} expired")

    async def keepalive(self) -> float:
        await anyio.lowlevel.checkpoint()
        self._check()
        self.expires_at = time.monotonic() + self.ttl
        return self.ttl

    async def close(self) -> None:
        await anyio.lowlevel.checkpoint()
        if self.store.sessions.get(self.id) is self:
            self.store._end(self)

    async def enqueue(self, kind: Kind, name: str, value: bytes) -> Queued[_Contender]:
        await anyio.lowlevel.checkpoint()
        self._check()
        contender = _Contender(self, kind, name, value, self.store.next_revision())
        queue = self.store.queues.setdefault((kind, name), [])
        queue.append(contender)
        self.contenders.add(contender)
        if len(queue) == 1:
            self.store.changes.notify((kind, name))
            return Queued(contender, contender.revision)
        return Queued(contender, None)

    async def wait_owner(self, contender: _Contender) -> int:
        store = self.store
        await anyio.lowlevel.checkpoint()
        while True:
            self._check()
            queue = store.queues[(contender.kind, contender.name)]
            position = queue.index(contender)
            if position == 0:
                return contender.revision
            ahead = queue[position - 1]
            # Woken only by the contender just ahead leaving: released, withdrawn, or its
            # session's TTL run out. That expiry is checked here as a server would check it,
            # at the deadline, without waking the waiter while the session is renewed.
            while not ahead.gone.is_set():
                with anyio.move_on_after(store.ttl_left(ahead)):
                    await ahead.gone.wait()
                store.reap()
                if store.sessions.get(self.id) is not self:
                    break  # this session expired: _check raises
            if ahead.gone.is_set():
                self.backend.woke()  # woken to look again (Backend.wakeups)

    async def withdraw(self, contender: _Contender) -> None:
        await anyio.lowlevel.checkpoint()
        self.store.remove(contender)

    async def proclaim(self, contender: _Contender, value: bytes) -> None:
        await anyio.lowlevel.checkpoint()
        if self.store.head(contender.kind, contender.name) is not contender:
            raise NotHeld(f"{contender.name!r}: this candidate is not the leader")
        contender.value = value
        self.store.changes.notify((contender.kind, contender.name))

    def _guard(self, contender: _Contender) -> None:
        """The ownership check of a guarded write, as a server makes it."""
        self._check()
        if self.store.head(contender.kind, contender.name) is not contender:
            raise NotHeld(f"{contender.name!r}: this contender is no longer the owner")

    async def guarded_set(self, contender: _Contender, key: str, value: bytes) -> int:
        await anyio.lowlevel.checkpoint()
        self._guard(contender)
        return self.store.write(key, value)

    async def guarded_compare_and_set(
        self, contender: _Contender, key: str, value: bytes, expected: int | None
    ) -> bool:
        await anyio.lowlevel.checkpoint()
        self._guard(contender)
        return self.store.compare_and_set(key, value, expected)

    async def guarded_delete(self, contender: _Contender, key: str) -> bool:
        await anyio.lowlevel.checkpoint()
        self._guard(contender)
        return self.store.delete(key)

    async def join(self, group: str, member_id: str, value: bytes) -> None:
        await anyio.lowlevel.checkpoint()
        self._check()
        members = self.store.groups.setdefault(group, {})
        previous = members.get(member_id)
        if previous is not None and previous[0] is not self:
            previous[0].members.discard((group, member_id))  # an earlier session's entry
        members[member_id] = (self, value)
        self.members.add((group, member_id))
        self.store.changes.notify(("group", group))

    async def leave(self, group: str, member_id: str) -> None:
        await anyio.lowlevel.checkpoint()
        self.store.drop_member(self, group, member_id)


class MemoryBackend(Backend):
    """``memory://[NAME]``: the embedded in-process backend (see the module docstring)."""

    scheme = "memory"
    capabilities = frozenset(
        {Capability.FAIR, Capability.SINGLE_WAKEUP, Capability.EXPIRE_SESSION, Capability.GUARDED_WRITES}
    )
    wakeups: int  # counted (Backend.wakeups): set to 0 in __init__

    def __init__(self, url: ParsedURL, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        if len(url.hosts) > 1 or (url.hosts and url.hosts[0][1] is not None):
            raise InvalidURL("memory:// takes one store name and no port, e.g. 'memory://tests'")
        self.store_name = url.hosts[0][0] if url.hosts else "default"
        self._store: MemoryStore | None = None
        self.wakeups = 0

    @property
    def store(self) -> MemoryStore:
        """The shared store (available once the connection is open)."""
        return self.opened(self._store)

    async def open(self) -> None:
        self._store = MemoryStore.attach(self.store_name)

    async def aclose(self) -> None:
        if self._store is not None:
            self._store.detach()
            self._store = None

    async def open_session(self, ttl: float, monitor: SessionMonitor) -> _MemorySession:
        await anyio.lowlevel.checkpoint()
        session = _MemorySession(self, ttl, monitor)
        self.store.sessions[session.id] = session
        return session

    async def expire_session(self, session_id: str) -> None:
        await anyio.lowlevel.checkpoint()
        self.store.expire(session_id)

    async def leader(self, name: str) -> Leader | None:
        await anyio.lowlevel.checkpoint()
        head = self.store.head("election", name)
        return Leader(head.value, head.revision) if head else None

    async def candidates(self, name: str) -> list[bytes]:
        await anyio.lowlevel.checkpoint()
        self.store.reap()
        return [contender.value for contender in self.store.queues.get(("election", name), [])]

    async def observe(self, name: str, resume: ResumePoint) -> AsyncIterator[Leader | None]:
        store = self.store
        while True:
            changed = store.changes.event(("election", name))
            head = store.head("election", name)
            yield Leader(head.value, head.revision) if head else None
            with anyio.move_on_after(store.ttl_left(head)):
                await changed.wait()

    async def members(self, group: str) -> list[Member]:
        await anyio.lowlevel.checkpoint()
        return self.store.members(group)

    async def watch_group(self, group: str, resume: ResumePoint) -> AsyncIterator[list[Member]]:
        store = self.store
        while True:
            changed = store.changes.event(("group", group))
            yield store.members(group)
            store.watching[group] = store.watching.get(group, 0) + 1
            try:
                with anyio.move_on_after(store.members_ttl_left(group)):
                    await changed.wait()
            finally:
                store.watching[group] -= 1

    async def get(self, key: str) -> Versioned | None:
        await anyio.lowlevel.checkpoint()
        return self.store.values.get(key)

    async def set(self, key: str, value: bytes) -> int:
        await anyio.lowlevel.checkpoint()
        return self.store.write(key, value)

    async def compare_and_set(self, key: str, value: bytes, expected: int | None) -> bool:
        await anyio.lowlevel.checkpoint()
        return self.store.compare_and_set(key, value, expected)

    async def delete(self, key: str) -> bool:
        await anyio.lowlevel.checkpoint()
        return self.store.delete(key)

    async def watch(self, key: str, resume: ResumePoint) -> AsyncIterator[Versioned | None]:
        store = self.store
        while True:
            changed = store.changes.event(key)
            yield store.values.get(key)
            await changed.wait()
