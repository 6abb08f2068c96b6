"""One Consul session (TTL, lock-delay, ``behavior=release``) and the locks taken with it: the
key ``<name>/.lock`` acquired with ``?acquire=`` and the flag value ``consul lock`` uses;
waits are blocking queries."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from coordination.abc import (
    Backend,
    BackendSession,
    Kind,
    Queued,
    SessionMonitor,
    get_logger,
)
from coordination.exceptions import (
    CoordinationError,
    InvalidName,
    NotHeld,
    PermissionDenied,
    SessionExpired,
    Unavailable,
)

from ._client import ConsulClient, KVPair, TxnOutcome

__all__ = [
    "LOCK_FLAG_VALUE",
    "ConsulSession",
    "candidate_key",
    "lock_key",
    "member_key",
    "members_prefix",
    "next_index",
    "read_key",
    "token_of",
    "b64",
    "blocking_read",
    "refusal",
]

log = get_logger("coordination.consul")

T = TypeVar("T")

LOCK_FLAG_VALUE = 0x2DDCCBC058A50C18
"""The ``Flags`` of a lock key: Consul's ``api.LockFlagValue``, as ``consul lock`` sets it."""

DEFAULT_PORT = 8500
BLOCKING_WAIT = 15.0
"""Longest wait of one blocking query, in seconds (what Consul's own lock uses)."""
_DELAY_RETRY = (0.05, 0.5)
"""First and longest pause between acquire attempts refused by a lock-delay, in seconds."""
_VERSION_RETRIES = 5
"""How often a release or proclaim looks again when the key's version moved on under it."""


def lock_key(kind: Kind, name: str) -> str:
    """The Consul key behind lock or election ``name`` (already joined with the namespace).

    A lock is ``<name>/.lock``, the key ``consul lock <name>`` uses. An election is
    ``<name>/.election/.lock``: its own key, so that a lock and an election of one name
    stay independent, and still one that ``consul lock <name>/.election`` campaigns on.
    """
    return f"{name}/.lock" if kind == "lock" else f"{name}/.election/.lock"


def candidate_key(name: str, session_id: str) -> str:
    """Where a candidate of election ``name`` registers, locked by its session, so that
    :meth:`ConsulBackend.candidates` lists it: ``<name>/.election/<session id>`` (a session
    has one candidate per election at a time). Consul's lock is not a queue, so this is
    only a listing; who leads is decided by the election key alone."""
    return f"{name}/.election/{session_id}"


def members_prefix(group: str) -> str:
    """Where the members of ``group`` are: ``<group>@members/``. ``@`` is in no name, so no
    lock or election key (``consul lock``'s prefix ``<name>/`` included) is under it."""
    return f"{group}@members/"


def member_key(group: str, member_id: str, session_id: str) -> str:
    """The key of ``member_id`` joined on session ``session_id``, locked by that session:
    ``<group>@members/<id>/<session id>``. Each session joins a key of its own, so a re-join
    on the next session never waits for the last one's key (held until that session ends,
    then under its lock-delay)."""
    return f"{members_prefix(group)}{member_id}/{session_id}"


def token_of(pair: KVPair) -> int:
    """The fencing token of the current holder of a lock key: ``CreateIndex + LockIndex - 1``.

    ``LockIndex`` counts the acquisitions of the key since it was created, and every
    acquisition is a Raft write of its own, so for the holder that made the n-th one the
    token is at most the index of its acquiring write; a key deleted and made again starts
    at a ``CreateIndex`` above every earlier write. Hence the token strictly increases
    across successive holders, whoever they are (``consul lock`` included), and stays the
    same while one holder rewrites the value (an election's ``proclaim``).
    """
    return pair.create_index + pair.lock_index - 1


def next_index(previous: int, returned: int) -> int:
    """The index for the next blocking query, by Consul's rules.

    An ``X-Consul-Index`` lower than the one sent means the server's index was reset
    (a snapshot restore, another server): start again from 0, a plain read. One that is
    not above 0 would make every query return at once: use 1.
    """
    if returned < previous:
        return 0
    return max(returned, 1)


async def read_key(http: ConsulClient, key: str, index: int, timeout: float) -> tuple[KVPair | None, int]:
    """Read ``key`` consistently: at once if ``index`` is 0, else as a blocking query.

    Returns the pair (or ``None``) and the index for the next query. A reply that does
    not come within the wait (plus Consul's jitter) and ``timeout`` raises Unavailable.
    """
    return await blocking_read(lambda: http.kv_get(key, index=index, wait=BLOCKING_WAIT), key, index, timeout)


async def blocking_read(
    read: Callable[[], Awaitable[tuple[T, int]]], key: str, index: int, timeout: float
) -> tuple[T, int]:
    """``read()`` (a read of ``key``, blocking when ``index`` > 0), bounded by the wait plus
    Consul's jitter and ``timeout``; what it read and the index for the next query."""
    limit = timeout + (BLOCKING_WAIT * 17 / 16 if index else 0)
    with anyio.move_on_after(limit):
        found, returned = await read()
        return found, next_index(index, returned)
    raise Unavailable(f"Consul did not answer a read of {key!r} within {limit:g}s")


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


_CONFLICTS = (
    "exists",  # check-not-exists
    "index check",  # check-index
    "check index",
    "already held",  # lock
    "session check",  # check-session
    "check session",
    "doesn't exist",  # get
    "index is stale",  # cas
)


def refusal(outcome: TxnOutcome, what: str) -> str:
    """Why a transaction failed: ``expired``, ``delay`` or ``conflict``; Unavailable otherwise."""
    text = "; ".join(outcome.errors)
    if "invalid session" in text:
        return "expired"
    if "lock delay" in text:
        return "delay"
    if any(marker in text for marker in _CONFLICTS):
        return "conflict"
    raise Unavailable(f"Consul refused {what}: {text or 'no reason given'}")


def set_ops(key: str, value: bytes) -> list[dict[str, Any]]:
    """The transaction of a config write."""
    return [{"KV": {"Verb": "set", "Key": key, "Value": b64(value)}}]


def compare_and_set_ops(key: str, value: bytes, expected: int | None) -> list[dict[str, Any]]:
    """The transaction of a compare-and-set; none where no version can match (no version is
    0 or less, and ``cas`` with index 0 would mean "only if absent")."""
    if expected is not None and expected <= 0:
        return []
    return [{"KV": {"Verb": "cas", "Key": key, "Value": b64(value), "Index": expected or 0}}]


def delete_ops(key: str) -> list[dict[str, Any]]:
    """The transaction of a delete that tells whether the key existed (``get`` fails if not)."""
    return [{"KV": {"Verb": "get", "Key": key}}, {"KV": {"Verb": "delete", "Key": key}}]


def written(outcome: TxnOutcome, key: str) -> int:
    """The version a committed write transaction gave ``key``."""
    if not outcome.ok or not outcome.results:
        raise Unavailable(f"Consul refused to write {key!r}: {'; '.join(outcome.errors)}")
    return outcome.results[-1].modify_index


def answered(outcome: TxnOutcome, what: str) -> bool:
    """Whether a conditional transaction committed; Unavailable if it failed for another
    reason than its condition (see :func:`refusal`)."""
    if not outcome.ok:
        refusal(outcome, what)
    return outcome.ok


@dataclass(eq=False)
class _Contender:
    kind: Kind
    key: str
    value: bytes
    maybe_held: bool = False
    """A lock request was sent and did not fail: this may hold the key."""
    index: int | None = None
    """The key's ``ModifyIndex`` as this contender's last write (lock, proclaim) left it;
    ``None`` when that write's outcome is unknown. A release deletes only that version."""
    seen: KVPair | None = None
    """The key as last read (``None``: absent, assumed before the first read)."""
    seen_index: int = 0
    """The index for the next blocking query on the key; 0 reads without blocking."""
    registration: str | None = None
    """An election candidate's :func:`candidate_key`, once a write of it was sent."""


class ConsulSession(BackendSession[_Contender]):
    """A Consul session (TTL, lock-delay, ``behavior=release``) and the locks taken with it."""

    def __init__(
        self,
        backend: Backend,
        http: ConsulClient,
        session_id: str,
        ttl: float,
        monitor: SessionMonitor,
        *,
        lock_delay: float,
        timeout: float,
    ) -> None:
        self.id = session_id
        self._lock_delay = lock_delay
        self._timeout = timeout
        # The core's bound: the TTL, or the lock-delay if shorter (see ConsulBackend).
        self.ttl = self.guarded_for(ttl)
        self.keepalive_interval = self.ttl / 3
        self._backend = backend
        self._http = http
        self._monitor = monitor
        # Contenders that may hold their key, for close() to release.
        self._contenders: set[_Contender] = set()

    def __repr__(self) -> str:
        return f"<ConsulSession {self.id}>"

    def guarded_for(self, ttl: float) -> float:
        """How long after a renewal with TTL ``ttl`` Consul keeps a session's locks from others,
        even if it ends the session: the TTL, or the lock-delay if shorter."""
        return min(ttl, self._lock_delay)

    async def keepalive(self) -> float:
        granted = await self._http.session_renew(self.id)
        if granted is None:
            raise SessionExpired(f"Consul no longer knows session {self.id}")
        return self.guarded_for(granted) if granted else self.ttl

    async def close(self) -> None:
        # Release first: destroying a session that holds keys would put them under
        # lock-delay, which exists for holders that may still be running, not for a clean exit.
        # What could not be released is kept for the next try (the core retries a lost
        # session's close); destroying the session frees it anyway, under the lock-delay.
        released = True
        for contender in list(self._contenders):
            try:
                if contender.maybe_held:
                    await self._release(contender.key, contender.index)
                    contender.maybe_held = False
                await self._unregister(contender)
            except CoordinationError:
                released = False
        await self._http.session_destroy(self.id)
        if released:
            self._contenders.clear()

    def slot(self, kind: Kind, name: str) -> str:
        # Consul locks belong to sessions, and a session may take a key it already holds:
        # the core sends one contender of this session per key at a time.
        return lock_key(kind, name)

    async def enqueue(self, kind: Kind, name: str, value: bytes) -> Queued[_Contender]:
        contender = _Contender(kind, lock_key(kind, name), value)
        self._contenders.add(contender)
        try:
            token = await self._take(contender, blocking=False)
            if token is None and kind == "election":
                # Listed while it waits (a leader is listed by the election key itself).
                await self._register(contender, name)
        except BaseException:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._timeout):
                try:
                    await self.withdraw(contender)
                except CoordinationError as error:  # close() releases it, or the session's end
                    log.info("could not release %r after a failed lock: %r", contender.key, error)
            raise
        return Queued(contender, token)

    async def _register(self, contender: _Contender, name: str) -> None:
        """List waiting ``contender`` as a candidate of ``name`` (its key, locked by this session), and
        delete the registrations that ended sessions left (``behavior=release`` keeps a key
        whose session ended, unlocked), as Consul's own semaphore prunes dead holders."""
        key = contender.registration = candidate_key(name, self.id)
        lock = {"Verb": "lock", "Key": key, "Value": b64(contender.value), "Session": self.id}
        outcome = await self._http.txn([{"KV": lock}], f"to register a candidate at {key!r}")
        if not outcome.ok:
            if refusal(outcome, f"to register a candidate at {key!r}") == "expired":
                raise SessionExpired(f"Consul no longer knows session {self.id}")
            raise Unavailable(f"Consul refused the candidate key {key!r}: {outcome.errors}")
        election = lock_key("election", name)
        dead = [
            {"KV": {"Verb": "delete-cas", "Key": pair.key, "Index": pair.modify_index}}
            for pair in await self._http.kv_list(election.rsplit("/", 1)[0] + "/")
            if pair.key != election and not pair.session
        ]
        if dead:  # a conflict means another pruned them first: nothing to do
            await self._http.txn(dead[:64], f"to prune dead candidates of {name!r}")

    async def _unregister(self, contender: _Contender) -> None:
        key = contender.registration
        if key is None:
            return
        outcome = await self._http.txn(
            [
                {"KV": {"Verb": "check-session", "Key": key, "Session": self.id}},
                {"KV": {"Verb": "delete", "Key": key}},
            ],
            f"to unregister the candidate at {key!r}",
        )
        if not outcome.ok:
            refusal(outcome, f"to unregister the candidate at {key!r}")  # Unavailable unless gone
        contender.registration = None

    # -- writes guarded by an owner ------------------------------------------------------

    async def guarded_set(self, contender: _Contender, key: str, value: bytes) -> int:
        return written(await self._guarded(contender, set_ops(key, value), f"to write {key!r}"), key)

    async def guarded_compare_and_set(
        self, contender: _Contender, key: str, value: bytes, expected: int | None
    ) -> bool:
        ops = compare_and_set_ops(key, value, expected)
        outcome = await self._guarded(contender, ops, f"to write {key!r}")
        return bool(ops) and answered(outcome, f"to write {key!r}")

    async def guarded_delete(self, contender: _Contender, key: str) -> bool:
        return answered(
            await self._guarded(contender, delete_ops(key), f"to delete {key!r}"), f"to delete {key!r}"
        )

    async def _guarded(self, contender: _Contender, ops: list[dict[str, Any]], what: str) -> TxnOutcome:
        """``ops`` in one transaction after checks that this session still holds the
        contender's lock key (``check-session``) at the version the contender's own lock or
        proclaim left it (``check-index``): NotHeld if not, and nothing applied.

        The version check keeps out a write that came late: sent during a term of this
        contender, it may reach the servers after the lock went elsewhere and back to this
        session (a later term, of another contender: a new version of the key). Where the
        version is unknown (a proclaim went unanswered), it is read first.
        """
        key = contender.key
        index = contender.index if contender.index is not None else await self._held_version(key)
        if index is None:
            raise NotHeld(f"{key!r} is no longer held by session {self.id}")
        checks: list[dict[str, Any]] = [
            {"KV": {"Verb": "check-session", "Key": key, "Session": self.id}},
            {"KV": {"Verb": "check-index", "Key": key, "Index": index}},
        ]
        outcome = await self._http.txn([*checks, *ops], what)
        if not outcome.ok and outcome.failed & {0, 1}:
            why = refusal(outcome, what)  # Unavailable if not a failed check
            reasons = "; ".join(outcome.errors)
            if why == "expired":
                self._monitor.expired()
            raise NotHeld(f"{key!r} is no longer held by session {self.id} at index {index}: {reasons}")
        return outcome

    # -- group members ---------------------------------------------------------------------

    async def join(self, group: str, member_id: str, value: bytes) -> None:
        key = member_key(group, member_id, self.id)
        lock = {"Verb": "lock", "Key": key, "Value": b64(value), "Session": self.id}
        outcome = await self._http.txn([{"KV": lock}], f"to join {group!r} at {key!r}")
        if not outcome.ok:
            if refusal(outcome, f"to join {group!r} at {key!r}") == "expired":
                raise SessionExpired(f"Consul no longer knows session {self.id}")
            raise Unavailable(f"Consul refused the member key {key!r}: {outcome.errors}")

    async def leave(self, group: str, member_id: str) -> None:
        key = member_key(group, member_id, self.id)
        outcome = await self._http.txn(
            [
                {"KV": {"Verb": "check-session", "Key": key, "Session": self.id}},
                {"KV": {"Verb": "delete", "Key": key}},
            ],
            f"to leave {group!r} at {key!r}",
        )
        if not outcome.ok:
            refusal(outcome, f"to leave {group!r} at {key!r}")  # Unavailable unless already gone

    async def wait_owner(self, contender: _Contender) -> int:
        token = await self._take(contender, blocking=True)
        assert token is not None
        return token

    async def _take(self, contender: _Contender, *, blocking: bool) -> int | None:
        """Lock ``contender.key`` for this session; its token. Without ``blocking``, ``None``
        once another holds it (the reads so far are kept for the blocking wait to go on from)."""
        key = contender.key
        pair, index = contender.seen, contender.seen_index
        delay, longest_delay = _DELAY_RETRY
        tries = 0
        while True:
            if pair is None or not pair.session:
                if pair is not None and pair.flags != LOCK_FLAG_VALUE:
                    raise InvalidName(
                        f"Consul key {key!r} exists and is not a lock (flags {pair.flags:#x}, not "
                        f"{LOCK_FLAG_VALUE:#x}); it may be a `consul lock -n` semaphore or a plain value"
                    )
                tries += 1
                outcome = await self._lock(contender, pair)
                if outcome.ok:
                    return token_of(outcome.results[-1])
                why = refusal(outcome, f"to lock {key!r}")
                if why == "expired":
                    raise SessionExpired(f"Consul no longer knows session {self.id}")
                if why == "delay":
                    # Every session is refused until the lock-delay of the last holder's
                    # invalidated session has passed; nothing to watch meanwhile.
                    if not blocking:
                        contender.seen, contender.seen_index = pair, index
                        return None
                    await anyio.sleep(delay)
                    self._backend.woke()  # a poll: woken to try again
                    delay = min(delay * 2, longest_delay)
                    continue
                index = 0  # the key changed since we looked: look again, now
                if not blocking and tries >= 3:
                    contender.seen, contender.seen_index = pair, index
                    return None
            elif pair.session == self.id:
                # Held by this session for no contender of it (a release that never got an
                # answer): free it rather than inherit the previous holder's token.
                await self._release(key, pair.modify_index)
                pair, index = None, 0
                continue
            elif not blocking:
                contender.seen, contender.seen_index = pair, index
                return None
            blocking_query = index != 0  # else a plain read, still part of this look
            pair, index = await read_key(self._http, key, index, self._timeout)
            if blocking_query:
                # Answered: the key changed, or the wait ran out. Either way the waiter
                # looks again (Backend.wakeups); all waiters on the key do (no SINGLE_WAKEUP).
                self._backend.woke()

    async def _lock(self, contender: _Contender, seen: KVPair | None) -> TxnOutcome:
        """Lock ``contender.key`` if it is still as seen (absent, or free at that index)."""
        guard = (
            {"Verb": "check-not-exists", "Key": contender.key}
            if seen is None
            else {"Verb": "check-index", "Key": contender.key, "Index": seen.modify_index}
        )
        lock = {
            "Verb": "lock",
            "Key": contender.key,
            "Value": b64(contender.value),
            "Flags": LOCK_FLAG_VALUE,
            "Session": self.id,
        }
        contender.maybe_held, contender.index = True, None
        # Let the request finish even if the caller is cancelled: abandoned, it may still be
        # applied after the release that withdraw() sends on another connection, and leave the
        # key held by this live session with no contender to release it. Bounded: if no
        # answer comes in time, withdraw() releases what the session holds of the key then.
        # A lock applied later still (an agent holding it through a leader election) leaves
        # the key held until this session's next contender of it frees it, or the session
        # ends: a delay for others, never a second holder.
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._timeout):
            try:
                outcome = await self._http.txn([{"KV": guard}, {"KV": lock}], f"to lock {contender.key!r}")
            except PermissionDenied:
                contender.maybe_held = False  # an ACL refused the transaction: nothing applied
                raise
            contender.maybe_held = outcome.ok
            if outcome.ok:
                contender.index = outcome.results[-1].modify_index
            return outcome
        raise Unavailable(f"Consul did not answer the lock of {contender.key!r} within {self._timeout:g}s")

    async def _held_version(self, key: str) -> int | None:
        """The ``ModifyIndex`` of ``key`` if this session holds it now (a consistent read)."""
        pair, _ = await read_key(self._http, key, 0, self._timeout)
        return pair.modify_index if pair is not None and pair.session == self.id else None

    async def _release(self, key: str, index: int | None) -> None:
        """Release ``key`` if this session holds it, and delete it (as ``consul lock`` does):
        the version ``index`` of it (``None``: read which version this session holds).

        Only that version: Consul locks belong to sessions, not to contenders, and a release
        can reach the leader late (an agent holds requests while the servers elect a leader;
        one given up on by this client may still be applied). Deleting by session alone
        would then free a later holding of the same session; a ``delete-cas`` on the index
        cannot, since every lock and proclaim writes a new ``ModifyIndex``. If the version
        moved on while this session still holds the key, a write of this contender's own came
        late (a proclaim given up on): the callers run while the contender has its session's
        turn for the key (``slot``), so any version the session holds is its own; look again.
        """
        for _ in range(_VERSION_RETRIES):
            if index is None:
                index = await self._held_version(key)
                if index is None:
                    return  # not held by this session (any more): nothing to do
            outcome = await self._http.txn(
                [
                    {"KV": {"Verb": "check-session", "Key": key, "Session": self.id}},
                    {"KV": {"Verb": "delete-cas", "Key": key, "Index": index}},
                ],
                f"to release {key!r}",
            )
            if outcome.ok:
                return
            refusal(outcome, f"to release {key!r}")  # Unavailable unless a conflict or expiry
            index = None  # not held, or another version of it: look again
        raise Unavailable(f"the release of {key!r} met a newer version {_VERSION_RETRIES} times")

    async def withdraw(self, contender: _Contender) -> None:
        if contender.maybe_held:
            # Unavailable: the core retries; the key stays this contender's turn meanwhile.
            await self._release(contender.key, contender.index)
            contender.maybe_held = False
        await self._unregister(contender)
        self._contenders.discard(contender)

    async def proclaim(self, contender: _Contender, value: bytes) -> None:
        # Locking again with the same session rewrites the value and keeps LockIndex, so the
        # token; check-session keeps it from taking a key it no longer holds, and check-index
        # from rewriting any version but this contender's (a proclaim that came late must not
        # overwrite a later term of this session). Until the answer, which version of the key
        # is this contender's is unknown.
        key = contender.key
        for _ in range(_VERSION_RETRIES):
            index = contender.index if contender.index is not None else await self._held_version(key)
            if index is None:
                raise NotHeld(f"{key!r}: this session no longer holds the election key")
            contender.index = None
            outcome = await self._http.txn(
                [
                    {"KV": {"Verb": "check-session", "Key": key, "Session": self.id}},
                    {"KV": {"Verb": "check-index", "Key": key, "Index": index}},
                    {
                        "KV": {
                            "Verb": "lock",
                            "Key": key,
                            "Value": b64(value),
                            "Flags": LOCK_FLAG_VALUE,
                            "Session": self.id,
                        }
                    },
                ],
                f"to proclaim on {key!r}",
            )
            if outcome.ok:
                contender.index = outcome.results[-1].modify_index
                contender.value = value
                return
            if refusal(outcome, f"to proclaim on {key!r}") == "expired":
                self._monitor.expired()
                raise NotHeld(f"{key!r}: this session no longer holds the election key")
            # Not held, or another version: an earlier proclaim of this contender came late.
        raise Unavailable(f"the proclaim on {key!r} met a newer version {_VERSION_RETRIES} times")
