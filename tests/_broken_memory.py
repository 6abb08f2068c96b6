"""Deliberately broken memory backends, for the suite's own regression test.

Each variant is :class:`~coordination.memory.MemoryBackend` with one mistake a backend author
could make, served under a scheme of its own (``memory-poll50://...``). The conformance suite
must fail each of them: ``tests/test_suite_catches.py`` runs the shipped mixins against every
variant (with :class:`BrokenMemoryFixtures`) and checks which tests caught it.

A variant that wakes a waiter counts it in ``Backend.wakeups``, as the correct backend does:
a poll is a wake-up (the waiter woke to look again), so is every waiter of a herd.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Collection
from typing import Any, ClassVar

import anyio
import pytest

import coordination
from coordination import Coordinator, Member, Versioned
from coordination.abc import Kind, Queued, ResumePoint
from coordination.memory import MemoryBackend, MemoryStore, _Contender, _MemorySession
from coordination.testing import CoordinationFixtures, Harness

__all__ = ["VARIANTS", "BrokenMemoryFixtures", "Variant", "register"]


class Variant(MemoryBackend):
    """A memory backend whose sessions are ``session_class``."""

    session_class: ClassVar[type[_MemorySession]] = _MemorySession

    async def open_session(self, ttl: float, monitor: Any) -> _MemorySession:
        await anyio.lowlevel.checkpoint()
        session = self.session_class(self, ttl, monitor)
        self.store.sessions[session.id] = session
        return session


# -- a waiter that polls instead of watching the contender ahead ----------------------------


class _PollingSession(_MemorySession):
    backend: PollingBackend

    async def wait_owner(self, contender: _Contender) -> int:
        await anyio.lowlevel.checkpoint()
        while True:
            self._check()
            queue = self.store.queues[(contender.kind, contender.name)]
            if queue.index(contender) == 0:
                return contender.revision
            await anyio.sleep(self.backend.poll_interval)
            self.backend.wakeups += 1  # it woke up to look again


class PollingBackend(Variant):
    """Waiters look again every ``poll_interval`` seconds instead of being woken."""

    poll_interval: ClassVar[float]
    session_class = _PollingSession


class Poll50Backend(PollingBackend):
    """Waiters poll every 50 ms."""

    scheme = "memory-poll50"
    poll_interval = 0.05


class Poll2sBackend(PollingBackend):
    """Waiters poll every 2 s."""

    scheme = "memory-poll2s"
    poll_interval = 2.0


# -- a release that wakes every waiter (a herd) ----------------------------------------------


class _HerdSession(_MemorySession):
    async def wait_owner(self, contender: _Contender) -> int:
        store, key = self.store, (contender.kind, contender.name)
        await anyio.lowlevel.checkpoint()
        while True:
            changed = store.changes.event(key)  # set when the head leaves: every waiter wakes
            self._check()
            queue = store.queues[key]
            if queue[0] is contender:
                return contender.revision
            with anyio.move_on_after(store.ttl_left(queue[0])):
                await changed.wait()
            if changed.is_set():
                self.backend.wakeups += 1
            # else the head's TTL was due: the next _check reaps it if it was not renewed


class HerdBackend(Variant):
    """Every waiter watches the owner, not the contender just ahead: a release wakes all."""

    scheme = "memory-herd"
    session_class = _HerdSession


# -- fencing tokens that do not increase ----------------------------------------------------


class _ConstantTokenSession(_MemorySession):
    async def enqueue(self, kind: Kind, name: str, value: bytes) -> Queued[_Contender]:
        contender, token = await super().enqueue(kind, name, value)
        contender.revision = 1  # every holder of every name: token 1
        return Queued(contender, None if token is None else contender.revision)


class ConstantTokenBackend(Variant):
    """Every holding's token is 1: tokens repeat."""

    scheme = "memory-token-constant"
    session_class = _ConstantTokenSession


class _SessionTokenSession(_MemorySession):
    async def enqueue(self, kind: Kind, name: str, value: bytes) -> Queued[_Contender]:
        contender, token = await super().enqueue(kind, name, value)
        contender.revision = int(self.id.rsplit("-", 1)[1])  # the session's number, like a lease id
        return Queued(contender, None if token is None else contender.revision)


class SessionTokenBackend(Variant):
    """A holding's token is its session's number (as if the lease id were the token): it
    repeats when a session takes the lock again and goes down when an older session follows a
    newer one, though it increases whenever sessions take turns in the order they were opened."""

    scheme = "memory-token-session"
    session_class = _SessionTokenSession


# -- a cancelled or timed-out waiter left queued ---------------------------------------------


class _NoWithdrawSession(_MemorySession):
    async def withdraw(self, contender: _Contender) -> None:
        await anyio.lowlevel.checkpoint()
        if self.store.head(contender.kind, contender.name) is contender:
            self.store.remove(contender)  # a release (the owner withdrawing) still works
        # a waiter's withdraw (cancelled, timed out, a try_acquire that lost) does nothing


class NoWithdrawBackend(Variant):
    """Withdrawing a waiter does nothing: cancelled and timed-out acquires stay queued (only
    the owner's withdraw, a release, removes it)."""

    scheme = "memory-no-withdraw"
    session_class = _NoWithdrawSession


# -- a lock that lets a second session in ----------------------------------------------------


class _SecondInSession(_MemorySession):
    async def enqueue(self, kind: Kind, name: str, value: bytes) -> Queued[_Contender]:
        contender, token = await super().enqueue(kind, name, value)
        if self.store.queues[(kind, name)].index(contender) <= 1:  # the bug, as below
            return Queued(contender, contender.revision)
        return Queued(contender, token)

    async def wait_owner(self, contender: _Contender) -> int:
        store = self.store
        await anyio.lowlevel.checkpoint()
        while True:
            self._check()
            queue = store.queues[(contender.kind, contender.name)]
            position = queue.index(contender)
            if position <= 1:  # the bug: the first waiter counts as an owner too
                return contender.revision
            ahead = queue[position - 2 : position]
            with anyio.move_on_after(min(store.ttl_left(c) for c in ahead)):
                async with anyio.create_task_group() as tg:
                    for other in ahead:
                        tg.start_soon(_cancel_when_gone, other, tg.cancel_scope)
            if any(c.gone.is_set() for c in ahead):
                self.backend.wakeups += 1


async def _cancel_when_gone(contender: _Contender, scope: anyio.CancelScope) -> None:
    await contender.gone.wait()
    scope.cancel()


class SecondInBackend(Variant):
    """The contender just behind the owner is told it owns too: two holders at once."""

    scheme = "memory-second-in"
    session_class = _SecondInSession


# -- a watch that goes back to an older version ------------------------------------------------


class OutOfOrderWatchBackend(Variant):
    """After each change, the watch yields the new value and then the one before it again (a
    late event replayed after a newer one): versions go backwards."""

    scheme = "memory-watch-backwards"

    async def watch(self, key: str, resume: ResumePoint) -> AsyncIterator[Versioned | None]:
        store = self.store
        previous: Versioned | None = None
        while True:
            changed = store.changes.event(key)
            current = store.values.get(key)
            yield current
            if previous is not None and previous != current:
                yield previous  # older than what was just yielded
            previous = current
            await changed.wait()


# -- a lost session the client never hears of -------------------------------------------------


class _DeafSession(_MemorySession):
    def _check(self) -> None:
        self.store.reap()  # ended or not, this session is answered as if alive

    async def wait_owner(self, contender: _Contender) -> int:
        store = self.store
        await anyio.lowlevel.checkpoint()
        while True:
            queue = store.queues.get((contender.kind, contender.name), [])
            if contender not in queue:  # dropped with its ended session: nobody tells the waiter
                await anyio.sleep_forever()
            position = queue.index(contender)
            if position == 0:
                return contender.revision
            ahead = queue[position - 1]
            with anyio.move_on_after(store.ttl_left(ahead)):
                await ahead.gone.wait()
            store.reap()
            if ahead.gone.is_set():
                self.backend.wakeups += 1


class SilentLossBackend(Variant):
    """When the server ends a session from outside, its locks go to others, but the client is
    never told: no expiry notice, and keepalives of the ended session are still answered. The
    holder's body runs on while another session holds the lock."""

    scheme = "memory-silent-loss"
    session_class = _DeafSession

    async def expire_session(self, session_id: str) -> None:
        await anyio.lowlevel.checkpoint()
        session = self.store.sessions.get(session_id)
        if session is not None:
            self.store._end(session)  # its contenders removed, its monitor not told


# -- candidates listed once and never forgotten ------------------------------------------------


class StaleCandidatesBackend(Variant):
    """``candidates()`` lists every candidate that ever joined, as it joined: one that left
    stays listed, and a proclaim does not show (a listing kept beside the queue)."""

    scheme = "memory-stale-candidates"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.joined: dict[str, dict[_Contender, bytes]] = {}  # by name: each contender's first value

    async def candidates(self, name: str) -> list[bytes]:
        await anyio.lowlevel.checkpoint()
        joined = self.joined.setdefault(name, {})
        for contender in self.store.queues.get(("election", name), []):
            joined.setdefault(contender, contender.value)
        return list(joined.values())


# -- group members not bound to their session ----------------------------------------------


class _UnboundMembersSession(_MemorySession):
    async def join(self, group: str, member_id: str, value: bytes) -> None:
        await anyio.lowlevel.checkpoint()
        self._check()
        _kept(self.store).setdefault(group, {})[member_id] = value
        self.store.changes.notify(("group", group))

    async def leave(self, group: str, member_id: str) -> None:
        await anyio.lowlevel.checkpoint()
        _kept(self.store).get(group, {}).pop(member_id, None)
        self.store.changes.notify(("group", group))


def _kept(store: MemoryStore) -> dict[str, dict[str, bytes]]:
    """The unbound members of ``store``, by group."""
    kept: dict[str, dict[str, bytes]] = store.__dict__.setdefault("unbound_members", {})
    return kept


class UnboundMembersBackend(Variant):
    """Members are kept apart from their session: leave() removes one, but a session that
    ends (closed, expired) leaves its members behind."""

    scheme = "memory-unbound-members"
    session_class = _UnboundMembersSession

    def _listed(self, group: str) -> list[Member]:
        return [Member(member_id, value) for member_id, value in _kept(self.store).get(group, {}).items()]

    async def members(self, group: str) -> list[Member]:
        await anyio.lowlevel.checkpoint()
        return self._listed(group)

    async def watch_group(self, group: str, resume: ResumePoint) -> AsyncIterator[list[Member]]:
        store = self.store
        while True:
            changed = store.changes.event(("group", group))
            yield self._listed(group)
            store.watching[group] = store.watching.get(group, 0) + 1
            try:
                await changed.wait()
            finally:
                store.watching[group] -= 1


# -- a group watch that polls, or watches every member ----------------------------------------


class GroupPollBackend(Variant):
    """The group watch reads the members again every 50 ms: no watch on the server."""

    scheme = "memory-group-poll"

    async def watch_group(self, group: str, resume: ResumePoint) -> AsyncIterator[list[Member]]:
        while True:
            yield self.store.members(group)
            await anyio.sleep(0.05)


class GroupWatchEachBackend(Variant):
    """The group watch holds one watch per member (and one for the group)."""

    scheme = "memory-group-watch-each"

    async def watch_group(self, group: str, resume: ResumePoint) -> AsyncIterator[list[Member]]:
        store = self.store
        while True:
            changed = store.changes.event(("group", group))
            members = store.members(group)
            yield members
            watches = 1 + len(members)
            store.watching[group] = store.watching.get(group, 0) + watches
            try:
                with anyio.move_on_after(store.members_ttl_left(group)):
                    await changed.wait()
            finally:
                store.watching[group] -= watches


# -- guarded writes that the server does not check ---------------------------------------------


class _UnguardedSession(_MemorySession):
    """A guarded write checks only that the session lives (as a client that trusts its own
    ``held`` would), not that the contender still owns the name."""

    def _guard(self, contender: _Contender) -> None:
        self._check()


class UnguardedBackend(Variant):
    """Guarded writes are applied whoever owns the name now."""

    scheme = "memory-unguarded"
    session_class = _UnguardedSession


VARIANTS: dict[str, type[MemoryBackend]] = {
    backend.scheme: backend
    for backend in (
        Poll50Backend,
        Poll2sBackend,
        HerdBackend,
        ConstantTokenBackend,
        SessionTokenBackend,
        NoWithdrawBackend,
        SecondInBackend,
        OutOfOrderWatchBackend,
        SilentLossBackend,
        StaleCandidatesBackend,
        UnboundMembersBackend,
        GroupPollBackend,
        GroupWatchEachBackend,
        UnguardedBackend,
    )
}
"""Every broken variant by its scheme."""


def register() -> None:
    """Serve every variant's scheme in this process (``coordination.register``)."""
    for scheme, backend in VARIANTS.items():
        coordination.register(scheme, backend)


class BrokenMemoryFixtures(CoordinationFixtures):
    """The memory conformance fixture (``tests/test_memory_conformance.py``) for any memory
    backend: set ``scheme`` to a variant's (or ``memory``)."""

    scheme: ClassVar[str] = "memory"

    @pytest.fixture
    def coordination_url(self) -> str:
        return f"{self.scheme}://conformance-{uuid.uuid4().hex[:8]}"

    async def watches(self, harness: Harness, coord: Coordinator) -> int:
        """The watches waiting in the store of ``coord``'s connection."""
        backend = coord.driver
        assert isinstance(backend, MemoryBackend)
        return sum(backend.store.watching.values())

    async def remove_owner(self, harness: Harness, kind: Kind, name: str) -> bool:
        """Evict the owner from the store, as an operator deleting its key would."""
        async with harness.session() as coord:
            backend = coord.driver
            assert isinstance(backend, MemoryBackend)
            return backend.store.evict(kind, f"{coord.namespace}/{name}")

    async def leftovers(self, harness: Harness, session_ids: Collection[str] = ()) -> list[str]:
        """Contenders queued under the namespace, and sessions of ``session_ids`` still alive."""
        async with harness.session() as coord:
            backend = coord.driver
            assert isinstance(backend, MemoryBackend)
            store = backend.store
            prefix = f"{coord.namespace}/"
            found = [
                f"{contender.kind} {contender.name} (session {contender.session.id})"
                for (_, name), queue in store.queues.items()
                if name.startswith(prefix)
                for contender in queue
            ]
            # Not this hook's own session: once every connection closed, the store was dropped
            # and its new one numbers sessions from 1 again, reusing a closed session's id.
            found += [
                f"session {sid}" for sid in session_ids if sid in store.sessions and sid != coord.session_id
            ]
        return found
