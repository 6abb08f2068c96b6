"""The Consul backend (see :class:`ConsulBackend`)."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Mapping
from functools import partial
from typing import Any, ClassVar

from coordination._types import Leader, Member, Versioned
from coordination.abc import (
    COMMON_OPTIONS,
    HISTORY_RESET,
    TLS_OPTIONS,
    Backend,
    HistoryReset,
    Option,
    ParsedURL,
    ResumePoint,
    SessionMonitor,
    client_certificate,
    get_logger,
    ssl_context,
)
from coordination.capabilities import Capability
from coordination.exceptions import (
    InvalidURL,
)

from ._client import ConsulClient, KVPair
from ._session import (
    BLOCKING_WAIT,
    LOCK_FLAG_VALUE,
    ConsulSession,
    answered,
    blocking_read,
    compare_and_set_ops,
    delete_ops,
    lock_key,
    members_prefix,
    read_key,
    set_ops,
    token_of,
    written,
)

__all__ = ["LOCK_FLAG_VALUE", "ConsulBackend", "lock_key", "token_of"]

log = get_logger("coordination.consul")

DEFAULT_PORT = 8500


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

    **Groups**: a member is the key ``<name>@members/<id>/<session id>`` locked by its
    session (``@`` is in no name, so no lock key is under it; a session of its own in the key,
    so a re-join on the next session never waits out the last one's lock-delay). A group
    watch is one blocking query on ``<name>@members/``; keys that ended sessions left
    unlocked are not members, and the watch deletes those it sees.

    **Config** values are plain keys: the version is the ``ModifyIndex``, compare-and-set is a
    ``cas`` write (index 0: only if absent) and ``watch()`` is a blocking query. Writing the
    value a key already has is a no-op in Consul: it keeps its version.

    **ACLs.** The token needs ``session:write`` on the node name of the agent the URL names
    (``session_prefix "" { policy = "write" }``, or ``session "<node>"``) to create, renew and
    destroy its sessions, and ``key:write`` on the namespace (``key_prefix "<namespace>/" {
    policy = "write" }``; write includes the reads, listings and blocking queries; with
    ``acl.enable_key_list_policy`` the listings need ``list`` too). Nothing else: no
    ``node``, ``agent`` or ``operator`` rule. A refusal is
    :class:`~coordination.PermissionDenied`, at once and never retried as transient: an HTTP
    403 or 401, a transaction an ACL refused, a listing ACLs left keys out of (rather than,
    say, a group without its members). Its message names the request refused, Consul's
    reason (which names the token by its AccessorID, or the anonymous token) and where the
    token came from, never its secret. Without session rights, ``connect()`` itself is
    refused. An agent that refuses the client certificate (``verify_incoming``) in the TLS
    handshake is a PermissionDenied naming ``cert_file``; an agent certificate the client
    does not trust is :class:`~coordination.Unavailable`.

    Capabilities: CROSS_PROCESS and EXPIRE_SESSION (destroying a session through the API).
    Not FAIR: Consul's lock is not a queue, whoever locks first after a release wins. Not
    SINGLE_WAKEUP: a blocking query wakes every waiter. Not EVERY_VERSION: a watch sees
    the latest value when it reads.
    """

    scheme = "consul"
    wakeups: int  # counted (Backend.wakeups): set to 0 in __init__
    capabilities = frozenset({Capability.CROSS_PROCESS, Capability.EXPIRE_SESSION, Capability.GUARDED_WRITES})
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
        # Which token the requests carry, for the messages of refusals (never the token).
        self._token_source = (
            "the token given in the 'token' option"
            if options["token"]
            else "the token given in $CONSUL_HTTP_TOKEN"
            if self._token
            else "no token: neither the 'token' option nor $CONSUL_HTTP_TOKEN is set"
        )
        self._certificate = client_certificate(options)
        self._ssl = ssl_context(options)  # an unusable TLS file is an InvalidURL here, at once
        self.tls = self._ssl is not None
        self._http: ConsulClient | None = None
        self.wakeups = 0

    def __repr__(self) -> str:
        return f"<ConsulBackend {'https' if self.tls else 'http'}://{','.join(self.hosts)}>"

    @property
    def http(self) -> ConsulClient:
        """The HTTP client (available while the connection is open)."""
        return self.opened(self._http)

    async def open(self) -> None:
        self._http = ConsulClient(
            self.hosts,
            scheme="https" if self.tls else "http",
            tls=self._ssl,
            token=self._token,
            datacenter=self.datacenter,
            token_source=self._token_source,
            certificate=self._certificate,
        )

    async def failover(self, reason: str) -> None:
        if self._http is not None and len(self.hosts) > 1:
            log.info("moving off Consul agent %s: %s", self._http.host, reason)
            self._http.move_off(self._http.host)

    async def aclose(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()

    async def open_session(self, ttl: float, monitor: SessionMonitor) -> ConsulSession:
        session_id = await self.http.session_create(
            name=f"coordination: {self.identity}", ttl=ttl, lock_delay=self.lock_delay
        )
        return ConsulSession(
            self, self.http, session_id, ttl, monitor, lock_delay=self.lock_delay, timeout=self.timeout
        )

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

    async def candidates(self, name: str) -> list[bytes]:
        """The leader (the election key's holder), then the live registrations of the
        waiting candidates (:func:`candidate_key`) in the order they were made (a waiter that
        took over keeps its registration until it resigns: not listed twice)."""
        election = lock_key("election", name)
        prefix = election.rsplit("/", 1)[0] + "/"
        pairs = [p for p in await self.http.kv_list(prefix) if p.session and "/" not in p.key[len(prefix) :]]
        leader = next((p for p in pairs if p.key == election), None)
        leading = leader.session if leader else None
        waiting = sorted(
            (p for p in pairs if p.key != election and p.session != leading), key=lambda p: p.create_index
        )
        return ([leader.value] if leader else []) + [p.value for p in waiting]

    async def observe(self, name: str, resume: ResumePoint) -> AsyncGenerator[Leader | None, None]:
        # A blocking query may return without a change; the core drops repeats.
        key, http, index = lock_key("election", name), self.http, 0
        while True:
            pair, index = await read_key(http, key, index, self.timeout)
            yield self._leader(pair)

    # -- groups ----------------------------------------------------------------------------

    async def members(self, group: str) -> list[Member]:
        return _members(await self.http.kv_list(members_prefix(group)), members_prefix(group))[0]

    async def watch_group(self, group: str, resume: ResumePoint) -> AsyncGenerator[list[Member], None]:
        """One blocking query on the group's prefix at a time. Keys that ended sessions left
        (unlocked, ``behavior=release``) are not members; the watch deletes those it sees."""
        http, prefix, index = self.http, members_prefix(group), 0
        while True:
            read = partial(http.kv_list_after, prefix, index=index, wait=BLOCKING_WAIT)
            pairs, index = await blocking_read(read, prefix, index, self.timeout)
            members, dead = _members(pairs, prefix)
            yield members
            if dead:  # a conflict means another pruned them first: nothing to do
                prune = [
                    {"KV": {"Verb": "delete-cas", "Key": pair.key, "Index": pair.modify_index}}
                    for pair in dead
                ]
                await http.txn(prune[:64], f"to prune the dead members of {group!r}")

    # -- config ----------------------------------------------------------------------------

    async def get(self, key: str) -> Versioned | None:
        pair, _ = await read_key(self.http, key, 0, self.timeout)
        return Versioned(pair.value, pair.modify_index) if pair is not None else None

    async def set(self, key: str, value: bytes) -> int:
        return written(await self.http.txn(set_ops(key, value), f"to write {key!r}"), key)

    async def compare_and_set(self, key: str, value: bytes, expected: int | None) -> bool:
        ops = compare_and_set_ops(key, value, expected)
        return bool(ops) and answered(await self.http.txn(ops, f"to write {key!r}"), f"to write {key!r}")

    async def delete(self, key: str) -> bool:
        outcome = await self.http.txn(delete_ops(key), f"to delete {key!r}")
        return answered(outcome, f"to delete {key!r}")  # "doesn't exist": nothing deleted

    async def watch(
        self, key: str, resume: ResumePoint
    ) -> AsyncGenerator[Versioned | HistoryReset | None, None]:
        # A blocking query may return without a change; the core drops what is not newer.
        http, index = self.http, 0
        while True:
            previous = index
            pair, index = await read_key(http, key, index, self.timeout)
            if previous and not index:  # the index went backwards: versions restart lower
                yield HISTORY_RESET
            yield Versioned(pair.value, pair.modify_index) if pair is not None else None


def _members(pairs: list[KVPair], prefix: str) -> tuple[list[Member], list[KVPair]]:
    """The members among ``pairs`` (keys :func:`member_key` locked by their session), one per
    id (while a re-join's key and the last session's both stand), and the dead keys."""
    members: dict[str, Member] = {}
    dead = []
    for pair in pairs:
        member_id, _, session = pair.key[len(prefix) :].partition("/")
        if pair.session and pair.session == session:
            members.setdefault(member_id, Member(member_id, pair.value))
        elif not pair.session:
            dead.append(pair)
    return list(members.values()), dead
