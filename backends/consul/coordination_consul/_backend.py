"""The Consul backend (see :class:`ConsulBackend`)."""

from __future__ import annotations

import base64
import logging
import os
import ssl
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import anyio

from coordination._types import Leader, Versioned
from coordination.abc import (
    COMMON_OPTIONS,
    HISTORY_RESET,
    TLS_OPTIONS,
    Backend,
    BackendSession,
    HistoryReset,
    Kind,
    Option,
    ParsedURL,
    SessionMonitor,
)
from coordination.capabilities import Capability
from coordination.exceptions import (
    CoordinationError,
    InvalidName,
    InvalidURL,
    NotHeld,
    SessionExpired,
    Unavailable,
)

from ._http import ConsulHTTP, KVPair, TxnOutcome

__all__ = ["LOCK_FLAG_VALUE", "ConsulBackend", "lock_key", "token_of"]

log = logging.getLogger("coordination.consul")

LOCK_FLAG_VALUE = 0x2DDCCBC058A50C18
"""The ``Flags`` of a lock key: Consul's ``api.LockFlagValue``, as ``consul lock`` sets it."""

DEFAULT_PORT = 8500
BLOCKING_WAIT = 15.0
"""Longest wait of one blocking query, in seconds (what Consul's own lock uses)."""
_DELAY_RETRY = (0.05, 0.5)
"""First and longest pause between acquire attempts refused by a lock-delay, in seconds."""


def lock_key(kind: Kind, name: str) -> str:
    """The Consul key behind lock or election ``name`` (already joined with the namespace).

    A lock is ``<name>/.lock``, the key ``consul lock <name>`` uses. An election is
    ``<name>/.election/.lock``: its own key, so that a lock and an election of one name
    stay independent, and still one that ``consul lock <name>/.election`` campaigns on.
    """
    return f"{name}/.lock" if kind == "lock" else f"{name}/.election/.lock"


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


async def read_key(http: ConsulHTTP, key: str, index: int, timeout: float) -> tuple[KVPair | None, int]:
    """Read ``key`` consistently: at once if ``index`` is 0, else as a blocking query.

    Returns the pair (or ``None``) and the index for the next query. A reply that does
    not come within the wait (plus Consul's jitter) and ``timeout`` raises Unavailable.
    """
    limit = timeout + (BLOCKING_WAIT * 17 / 16 if index else 0)
    with anyio.move_on_after(limit):
        pair, returned = await http.kv_get(key, index=index, wait=BLOCKING_WAIT)
        return pair, next_index(index, returned)
    raise Unavailable(f"Consul did not answer a read of {key!r} within {limit:g}s")


def _b64(value: bytes) -> str:
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


def _why(outcome: TxnOutcome, what: str) -> str:
    """Why a transaction failed: ``expired``, ``delay`` or ``conflict``; Unavailable otherwise."""
    text = "; ".join(outcome.errors)
    if "invalid session" in text:
        return "expired"
    if "lock delay" in text:
        return "delay"
    if any(marker in text for marker in _CONFLICTS):
        return "conflict"
    raise Unavailable(f"Consul refused {what}: {text or 'no reason given'}")


@dataclass(eq=False)
class _Contender:
    kind: Kind
    key: str
    value: bytes
    turn: anyio.Event = field(default_factory=anyio.Event)
    """Set once this is the first contender of its session for ``key`` (see ``enqueue``)."""
    maybe_held: bool = False
    """A lock request was sent and did not fail: this may hold the key."""


class _ConsulSession(BackendSession[_Contender]):
    """A Consul session (TTL, lock-delay, ``behavior=release``) and the locks taken with it."""

    def __init__(
        self, backend: ConsulBackend, http: ConsulHTTP, session_id: str, ttl: float, monitor: SessionMonitor
    ) -> None:
        self.id = session_id
        # The core's bound: the TTL, or the lock-delay if shorter (see ConsulBackend).
        self.ttl = backend.guarded_for(ttl)
        self.keepalive_interval = self.ttl / 3
        self._backend = backend
        self._http = http
        self._monitor = monitor
        # Consul locks belong to sessions, and a session may take a key it already holds.
        # So within one session, only the first contender of a key goes to Consul; the
        # others wait here, in order, until it has withdrawn.
        self._queues: dict[str, list[_Contender]] = {}

    def __repr__(self) -> str:
        return f"<ConsulSession {self.id}>"

    async def keepalive(self) -> float:
        granted = await self._http.session_renew(self.id)
        if granted is None:
            raise SessionExpired(f"Consul no longer knows session {self.id}")
        return self._backend.guarded_for(granted) if granted else self.ttl

    async def close(self) -> None:
        # Release first: destroying a session that holds keys would put them under
        # lock-delay, which exists for holders that may still be running, not for a clean exit.
        # What could not be released is kept for the next try (the core retries a lost
        # session's close); destroying the session frees it anyway, under the lock-delay.
        released = True
        for contender in [c for queue in self._queues.values() for c in queue if c.maybe_held]:
            try:
                await self._release(contender.key)
                contender.maybe_held = False
            except CoordinationError:
                released = False
        await self._http.session_destroy(self.id)
        if released:
            self._queues.clear()

    async def enqueue(self, kind: Kind, name: str, value: bytes) -> _Contender:
        await anyio.lowlevel.checkpoint()
        contender = _Contender(kind, lock_key(kind, name), value)
        queue = self._queues.setdefault(contender.key, [])
        queue.append(contender)
        if len(queue) == 1:
            contender.turn.set()
        return contender

    async def wait_owner(self, contender: _Contender, *, blocking: bool) -> int | None:
        if not contender.turn.is_set():
            if not blocking:
                return None
            await contender.turn.wait()
        key = contender.key
        pair: KVPair | None = None  # what we last saw of the key (None: absent, assumed at first)
        index = 0  # for the next blocking query; 0 reads without blocking
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
                why = _why(outcome, f"to lock {key!r}")
                if why == "expired":
                    raise SessionExpired(f"Consul no longer knows session {self.id}")
                if why == "delay":
                    # Every session is refused until the lock-delay of the last holder's
                    # invalidated session has passed; nothing to watch meanwhile.
                    if not blocking:
                        return None
                    await anyio.sleep(delay)
                    self._backend.wakeups += 1  # a poll: woken to try again
                    delay = min(delay * 2, longest_delay)
                    continue
                if not blocking and tries >= 3:
                    return None
                index = 0  # the key changed since we looked: look again, now
            elif pair.session == self.id:
                # Held by this session for no contender of it (a release that never got an
                # answer): free it rather than inherit the previous holder's token.
                await self._release(key)
                pair, index = None, 0
                continue
            elif not blocking:
                return None
            blocking_query = index != 0  # else a plain read, still part of this look
            pair, index = await read_key(self._http, key, index, self._backend.timeout)
            if blocking_query:
                # Answered: the key changed, or the wait ran out. Either way the waiter
                # looks again (Backend.wakeups); all waiters on the key do (no SINGLE_WAKEUP).
                self._backend.wakeups += 1

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
            "Value": _b64(contender.value),
            "Flags": LOCK_FLAG_VALUE,
            "Session": self.id,
        }
        contender.maybe_held = True
        # Let the request finish even if the caller is cancelled: abandoned, it may still be
        # applied after the release that withdraw() sends on another connection, and leave the
        # key held by this live session with no contender to release it. Bounded: if no
        # answer comes in time, withdraw() releases whatever the outcome was.
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._backend.timeout):
            outcome = await self._http.txn([{"KV": guard}, {"KV": lock}], f"to lock {contender.key!r}")
            contender.maybe_held = outcome.ok
            return outcome
        raise Unavailable(
            f"Consul did not answer the lock of {contender.key!r} within {self._backend.timeout:g}s"
        )

    async def _release(self, key: str) -> None:
        """Release ``key`` if this session holds it, and delete it (as ``consul lock`` does)."""
        outcome = await self._http.txn(
            [
                {"KV": {"Verb": "check-session", "Key": key, "Session": self.id}},
                {"KV": {"Verb": "delete", "Key": key}},
            ],
            f"to release {key!r}",
        )
        if not outcome.ok:
            _why(outcome, f"to release {key!r}")  # not held (any more): nothing to do

    async def withdraw(self, contender: _Contender) -> None:
        if contender.maybe_held:
            await self._release(contender.key)  # Unavailable: the core retries; we stay first
            contender.maybe_held = False
        queue = self._queues.get(contender.key, [])
        if contender in queue:
            first = queue[0] is contender
            queue.remove(contender)
            if not queue:
                del self._queues[contender.key]
            elif first:
                queue[0].turn.set()

    async def proclaim(self, contender: _Contender, value: bytes) -> None:
        # Locking again with the same session rewrites the value and keeps LockIndex, so
        # the token; check-session keeps it from taking a key it no longer holds.
        outcome = await self._http.txn(
            [
                {"KV": {"Verb": "check-session", "Key": contender.key, "Session": self.id}},
                {
                    "KV": {
                        "Verb": "lock",
                        "Key": contender.key,
                        "Value": _b64(value),
                        "Flags": LOCK_FLAG_VALUE,
                        "Session": self.id,
                    }
                },
            ],
            f"to proclaim on {contender.key!r}",
        )
        if not outcome.ok:
            if _why(outcome, f"to proclaim on {contender.key!r}") == "expired":
                self._monitor.expired()
            raise NotHeld(f"{contender.key!r}: this session no longer holds the election key")
        contender.value = value


MIN_LOCK_DELAY = 0.5
"""The shortest lock-delay the SDK accepts, in seconds (see ``ConsulBackend``)."""


def _lock_delay(value: float) -> str | None:
    if value > 60:
        return "Consul allows at most 60 seconds"
    if value < MIN_LOCK_DELAY:
        return (
            f"must be at least {MIN_LOCK_DELAY:g} seconds: Consul ends a session at once, whatever its "
            "TTL, when the agent it was made through leaves the cluster, and only the lock-delay "
            "then keeps its locks from others, so the SDK must hear from Consul within it to learn "
            "of the loss first (Consul's default is 15)"
        )
    return None


class ConsulBackend(Backend):
    """``consul://host[:8500][,host...][/namespace][?option=value&...]``: Consul through its HTTP API.

    Several hosts are agents tried in turn when one cannot be reached. The path is a KV
    prefix every name is put under. The ACL token comes from the ``token`` option, else
    ``$CONSUL_HTTP_TOKEN``; it is sent as the ``X-Consul-Token`` header, never in a URL,
    and never logged.

    ============ ==================== ======================================================
    option       default              meaning
    ============ ==================== ======================================================
    ttl          15                   session TTL, seconds (Consul allows its
                                      ``session_ttl_min``, 10 s by default, to 24 h)
    lock_delay   15                   session lock-delay, seconds (0.5 to 60): after a session
                                      holding a lock is invalidated, nobody can take that
                                      lock for this long; sessions are renewed every third
                                      of the shorter of ``ttl`` and ``lock_delay``
    timeout      10                   timeout of one request, seconds
    identity     hostname:pid         holder identity: the value of lock keys, and part of
                                      the session name
    token        $CONSUL_HTTP_TOKEN   ACL token, sent as ``X-Consul-Token`` (secret: never
                                      shown)
    datacenter   the agent's          datacenter to use (``?dc=``)
    tls          false                use HTTPS (implied by ``ca_file`` or ``cert_file``)
    ca_file      system trust store   CA bundle (PEM) to verify the agent's certificate with
    cert_file                         client certificate (PEM), for ``verify_incoming``
    key_file                          its private key (PEM), if not in ``cert_file``
    tls_verify   true                 verify the agent's certificate and host name
    ============ ==================== ======================================================

    **Sessions.** A session has the TTL, the lock-delay, ``behavior=release`` and no health
    checks: by default Consul binds a session to its agent's ``serfHealth`` check and
    invalidates it when that agent dies or is cut off, at any moment of its TTL, which no
    client-side deadline could bound. Without checks, Consul ends a session only when its TTL
    runs out (it waits up to twice the TTL after the last renewal) or when the agent it was
    made through leaves the catalog (``consul leave``, a client agent stopped gracefully, a
    reaped node); then the session's locks are free to others after the lock-delay. So the
    local loss deadline is measured from each renewal's send time plus the shorter of the TTL
    and the lock-delay (less a tenth of it), renewals go every third of that, and a
    ``lock_delay`` under 0.5 s is refused. Closing releases every held key, then destroys the
    session.

    **Clusters.** List several agents or servers: a request that cannot connect goes to the
    next at once; a renewal that fails or is not answered within a fifth of the bound above
    moves every request to the next host, and requests still waiting on the old one are
    ended and retried there. Sessions are the cluster's, not the agent's: the lock survives
    its agent dying while a quorum of servers is reachable through another listed host.

    **Locks**, wire-compatible with ``consul lock``: the lock ``name`` is the key
    ``<name>/.lock``, locked by the session (Consul's ``acquire``) with the flags
    ``0x2ddccbc058a50c18`` of Consul's own lock and the holder identity as value. Waiting is a
    consistent blocking query until the key has no ``Session``; release deletes the key if
    the session holds it, as ``consul lock`` does when it exits. So ``consul lock <name> CMD``
    and this SDK exclude each other. Acquire, release and proclaim are transactions
    (``/v1/txn``) running the same KV lock operation as ``?acquire=``, guarded so that they
    act only on the state just read, and returning the indexes the token comes from.

    **Elections** lock ``<name>/.election/.lock`` the same way; the leader value is its value,
    ``proclaim()`` rewrites it with the same session, and ``consul lock <name>/.election CMD``
    runs CMD as a candidate. The fencing token of both is ``CreateIndex + LockIndex - 1`` of
    the key (see :func:`token_of`): strictly increasing across holders, fixed for a term.

    **Config** values are plain keys: the version is the ``ModifyIndex``, compare-and-set is a
    ``cas`` write (index 0: only if absent) and ``watch()`` is a blocking query. Writing the
    value a key already has is a no-op in Consul: it keeps its version.

    Capabilities: CROSS_PROCESS and EXPIRE_SESSION (destroying a session through the API).
    Not FAIR: Consul's lock is not a queue, whoever locks first after a release wins. Not
    SINGLE_WAKEUP: a blocking query wakes every waiter. Not EVERY_VERSION: a watch sees
    the latest value when it reads.
    """

    scheme = "consul"
    wakeups: int  # counted (Backend.wakeups): set to 0 in __init__
    capabilities = frozenset({Capability.CROSS_PROCESS, Capability.EXPIRE_SESSION})
    options: ClassVar[Mapping[str, Option]] = {
        **COMMON_OPTIONS,
        "ttl": Option(float, 15.0, "Session TTL in seconds.", minimum=0.1),
        "lock_delay": Option(
            float, 15.0, "Session lock-delay in seconds (0.5 to 60).", minimum=0.0, check=_lock_delay
        ),
        "token": Option(str, None, "ACL token (default: $CONSUL_HTTP_TOKEN).", secret=True),
        "datacenter": Option(str, None, "Datacenter to use (default: the agent's)."),
        **{name: TLS_OPTIONS[name] for name in ("tls", "ca_file", "cert_file", "key_file", "tls_verify")},
    }

    def __init__(self, url: ParsedURL, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        if url.username is not None or url.password is not None:
            raise InvalidURL(
                "consul:// URLs take no user or password: give the ACL token as the 'token' "
                "option or in $CONSUL_HTTP_TOKEN"
            )
        self.hosts = url.host_strings(DEFAULT_PORT) or [f"127.0.0.1:{DEFAULT_PORT}"]
        self.timeout: float = options["timeout"]
        self.lock_delay: float = options["lock_delay"]
        self.identity: str = options["identity"]
        self.datacenter: str | None = options["datacenter"] or None
        self._token: str | None = options["token"] or os.environ.get("CONSUL_HTTP_TOKEN") or None
        self._ca_file: str | None = options["ca_file"]
        self._cert_file: str | None = options["cert_file"]
        self._key_file: str | None = options["key_file"]
        if self._key_file and not self._cert_file:
            raise InvalidURL("option 'key_file' needs 'cert_file' too")
        self.tls = bool(options["tls"] or self._ca_file or self._cert_file)
        self._tls_verify: bool = options["tls_verify"]
        self._http: ConsulHTTP | None = None
        self.wakeups = 0

    def __repr__(self) -> str:
        return f"<ConsulBackend {'https' if self.tls else 'http'}://{','.join(self.hosts)}>"

    @property
    def http(self) -> ConsulHTTP:
        """The HTTP client (available while the connection is open)."""
        if self._http is None:
            raise RuntimeError("the Consul backend is not open")
        return self._http

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(cafile=self._ca_file)
            if self._cert_file:
                context.load_cert_chain(self._cert_file, self._key_file)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidURL(f"cannot load the TLS files (ca_file, cert_file, key_file): {exc}") from exc
        if not self._tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def open(self) -> None:
        self._http = ConsulHTTP(
            self.hosts,
            scheme="https" if self.tls else "http",
            tls=self._ssl_context(),
            token=self._token,
            datacenter=self.datacenter,
        )

    def guarded_for(self, ttl: float) -> float:
        """How long after a renewal with TTL ``ttl`` Consul keeps a session's locks from others,
        even if it ends the session: the TTL, or the lock-delay if shorter."""
        return min(ttl, self.lock_delay)

    async def failover(self, reason: str) -> None:
        if self._http is not None and len(self.hosts) > 1:
            log.info("moving off Consul agent %s: %s", self._http.host, reason)
            self._http.move_off(self._http.host)

    async def aclose(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()

    async def open_session(self, ttl: float, monitor: SessionMonitor) -> _ConsulSession:
        session_id = await self.http.session_create(
            name=f"coordination: {self.identity}", ttl=ttl, lock_delay=self.lock_delay
        )
        return _ConsulSession(self, self.http, session_id, ttl, monitor)

    async def expire_session(self, session_id: str) -> None:
        """Destroy session ``session_id``: its keys are released, under its lock-delay."""
        await self.http.session_destroy(session_id)

    # -- elections -------------------------------------------------------------------------

    @staticmethod
    def _leader(pair: KVPair | None) -> Leader | None:
        return Leader(pair.value, token_of(pair)) if pair is not None and pair.session else None

    async def leader(self, name: str) -> Leader | None:
        pair, _ = await read_key(self.http, lock_key("election", name), 0, self.timeout)
        return self._leader(pair)

    async def observe(self, name: str) -> AsyncGenerator[Leader | None, None]:
        # A blocking query may return without a change; the core drops repeats.
        key, http, index = lock_key("election", name), self.http, 0
        while True:
            pair, index = await read_key(http, key, index, self.timeout)
            yield self._leader(pair)

    # -- config ----------------------------------------------------------------------------

    async def get(self, key: str) -> Versioned | None:
        pair, _ = await read_key(self.http, key, 0, self.timeout)
        return Versioned(pair.value, pair.modify_index) if pair is not None else None

    async def set(self, key: str, value: bytes) -> int:
        outcome = await self.http.txn(
            [{"KV": {"Verb": "set", "Key": key, "Value": _b64(value)}}], f"to write {key!r}"
        )
        if not outcome.ok or not outcome.results:
            raise Unavailable(f"Consul refused to write {key!r}: {'; '.join(outcome.errors)}")
        return outcome.results[-1].modify_index

    async def compare_and_set(self, key: str, value: bytes, expected: int | None) -> bool:
        if expected is not None and expected <= 0:
            return False  # no version is 0 or less (and cas=0 would mean "only if absent")
        outcome = await self.http.txn(
            [{"KV": {"Verb": "cas", "Key": key, "Value": _b64(value), "Index": expected or 0}}],
            f"to write {key!r}",
        )
        if not outcome.ok:
            _why(outcome, f"to write {key!r}")
        return outcome.ok

    async def delete(self, key: str) -> bool:
        outcome = await self.http.txn(
            [{"KV": {"Verb": "get", "Key": key}}, {"KV": {"Verb": "delete", "Key": key}}],
            f"to delete {key!r}",
        )
        if not outcome.ok:
            _why(outcome, f"to delete {key!r}")  # "doesn't exist": nothing deleted
        return outcome.ok

    async def watch(self, key: str) -> AsyncGenerator[Versioned | HistoryReset | None, None]:
        # A blocking query may return without a change; the core drops what is not newer.
        http, index = self.http, 0
        while True:
            previous = index
            pair, index = await read_key(http, key, index, self.timeout)
            if previous and not index:  # the index went backwards: versions restart lower
                yield HISTORY_RESET
            yield Versioned(pair.value, pair.modify_index) if pair is not None else None
