"""Typed access to the parts of Consul's HTTP API the backend uses, through py-consul.

py-consul's asyncio client (``consul.aio``) does the HTTP: its aiohttp session, URL building
and the ``X-Consul-Token`` header. Its session renew/destroy calls are used as they are.
Where it falls short, this module goes through its HTTP layer instead:

* ``Session.create`` insists on a TTL of at least 10 whole seconds (Consul's own minimum is
  the server's ``session_ttl_min``) and whole-second lock delays;
* ``Txn.put`` sends no ACL token and cannot read the body of a failed (409) transaction;
* ``KV.get`` hides the ``X-Consul-Results-Filtered-By-ACLs`` header of a listing that ACLs
  left keys out of;
* its client builds the aiohttp connector with arguments aiohttp deprecates, and lets
  ``CONSUL_HTTP_TOKEN`` override an explicit token.

No client exception leaves this module: everything is mapped to
:class:`~coordination.Unavailable` (or :class:`~coordination.SessionExpired` where the reply
says so), the original kept as ``__cause__``, except refusals, which are
:class:`~coordination.PermissionDenied`: an HTTP 403 or 401 (``Permission denied: token with
AccessorID '...' lacks permission 'key:write' on "..."``, ``ACL not found`` for a token
Consul does not know), a transaction whose operations an ACL refused (a 409 naming
``Permission denied``), a listing ACLs filtered, and a TLS handshake in which the agent
refused the client certificate (its alert: certificate required, unknown CA, bad
certificate...). Each names the request refused and the token it was sent with (where it
came from; Consul's message gives its AccessorID), or the client certificate; never the
token's secret, which is cut out of whatever Consul answered.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import ssl
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import aiohttp
import anyio
import consul.aio  # type: ignore[import-untyped]
import consul.base  # type: ignore[import-untyped]
import consul.callback  # type: ignore[import-untyped]
import consul.exceptions  # type: ignore[import-untyped]

from coordination.abc import certificate_refusal, map_errors
from coordination.exceptions import PermissionDenied, Unavailable

__all__ = ["ConsulClient", "KVPair", "TxnOutcome", "go_duration", "parse_go_duration"]

T = TypeVar("T")


@dataclass(frozen=True)
class KVPair:
    """One key of Consul's KV store, as a read or a transaction returns it."""

    key: str
    value: bytes
    flags: int
    session: str
    create_index: int
    modify_index: int
    lock_index: int

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> KVPair:
        value = raw.get("Value")
        if isinstance(value, str):  # base64 in JSON; py-consul's kv.get decodes it already
            value = base64.b64decode(value)
        return cls(
            key=str(raw["Key"]),
            value=bytes(value or b""),
            flags=int(raw.get("Flags") or 0),
            session=str(raw.get("Session") or ""),
            create_index=int(raw.get("CreateIndex") or 0),
            modify_index=int(raw.get("ModifyIndex") or 0),
            lock_index=int(raw.get("LockIndex") or 0),
        )


class TxnOutcome(NamedTuple):
    """The result of ``PUT /v1/txn``: the KV results if it committed, else Consul's reasons."""

    ok: bool
    results: list[KVPair]
    errors: list[str]
    failed: frozenset[int] = frozenset()
    """The indexes (in the list of operations) of the operations that failed."""


class _Response(NamedTuple):
    status: int
    body: str


_ERRORS: Mapping[type[BaseException], type[Unavailable]] = {
    consul.ConsulException: Unavailable,
    aiohttp.ClientError: Unavailable,
    OSError: Unavailable,
    ValueError: Unavailable,  # a reply that does not parse
    KeyError: Unavailable,
}


_ACL_ERRORS = (consul.exceptions.ACLPermissionDenied, consul.exceptions.ACLDisabled)
"""What py-consul raises for an HTTP 403 (``ACLPermissionDenied``) and 401 (``ACLDisabled``,
a misnomer: Consul answers 401 to a request it would not authenticate)."""

_REFUSED_STATUSES = frozenset({401, 403})

_ACL_REFUSALS = ("Permission denied", "ACL not found")
"""How Consul's reply (a body, or a transaction's error) starts when an ACL refused it."""


class _HTTPClient(consul.aio.HTTPClient):  # type: ignore[misc]
    """py-consul's aiohttp transport, with a connector built the way aiohttp 3.10+ wants it."""

    def __init__(self, hosts: Sequence[str], scheme: str, tls: ssl.SSLContext | None) -> None:
        # Not consul.aio.HTTPClient.__init__: it passes verify_ssl/ssl_context, which aiohttp
        # deprecates (a DeprecationWarning at every connect).
        consul.base.HTTPClient.__init__(self, scheme=scheme, verify=tls is not None)
        self.hosts = list(hosts)
        self.current = 0
        self.base_uri = f"{scheme}://{hosts[0]}"
        # No client-side cap on connections: blocking queries each hold one for up to
        # a wait period, and must never starve the session renewals.
        connector = aiohttp.TCPConnector(ssl=tls if tls is not None else False, limit=0)
        self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))

    def rotate(self) -> None:
        """Send the next requests to the next host of the URL."""
        self.current = (self.current + 1) % len(self.hosts)
        self.base_uri = f"{self.scheme}://{self.hosts[self.current]}"


class _Consul(consul.aio.Consul):  # type: ignore[misc]
    def __init__(self, hosts: Sequence[str], scheme: str, tls: ssl.SSLContext | None, dc: str | None) -> None:
        self._hosts, self._tls = hosts, tls
        # host/port/verify given explicitly so that no CONSUL_* variable is consulted.
        super().__init__(
            host="127.0.0.1", port=1, scheme=scheme, verify=True, dc=dc, consistency="consistent"
        )

    def http_connect(self, host: str, port: int, scheme: str, verify: bool = True, cert: Any = None) -> Any:
        return _HTTPClient(self._hosts, scheme, self._tls)


class ConsulClient:
    """The Consul HTTP API calls the backend makes, typed, with errors mapped.

    ``hosts`` are ``host:port`` strings tried in turn when a connection cannot be made.
    Make it inside the event loop (it owns an aiohttp session); close it with :meth:`close`.
    """

    def __init__(
        self,
        hosts: Sequence[str],
        *,
        scheme: str,
        tls: ssl.SSLContext | None,
        token: str | None,
        datacenter: str | None,
        token_source: str,
        certificate: str,
    ) -> None:
        """``token_source`` says which token requests are sent with, for the messages of
        refusals (never the token itself): where it was given, or that there is none.
        ``certificate`` says which client certificate TLS connections present (or that none
        is), for those of refused handshakes."""
        self._consul = _Consul(hosts, scheme, tls, datacenter)
        self._consul.token = token  # py-consul would let $CONSUL_HTTP_TOKEN win over it
        self._token = token
        self._token_source = token_source
        self._certificate = certificate
        self._http: _HTTPClient = self._consul.http
        self._dc = datacenter
        self._in_flight: dict[anyio.CancelScope, int] = {}
        """Requests under way, with the index of the host each went to."""

    def __repr__(self) -> str:
        return f"<ConsulClient {self._http.base_uri}>"  # never the token

    async def close(self) -> None:
        await self._http.close()

    @property
    def host(self) -> str:
        """The ``host:port`` requests go to now."""
        return str(self._http.hosts[self._http.current])

    def move_off(self, host: str) -> None:
        """Send the next requests to the host after ``host``, and end every request still
        waiting on ``host`` with Unavailable (a host that hangs may never answer them)."""
        http = self._http
        index = http.hosts.index(host)
        for scope, sent_to in self._in_flight.items():
            if sent_to == index:
                scope.cancel()
        if http.current == index:
            http.rotate()

    async def _request(self, make: Callable[[], Awaitable[T]], what: str, *, abandonable: bool = True) -> T:
        """Run one request (``make`` calls py-consul), mapping its errors; ``what`` it is for
        (``"to read 'key'"``) is named by a refusal (:meth:`_refusals`).

        A connection that cannot be made at all means the request never left: the next
        host of the URL gets it. After any other connection failure the next requests go
        to the next host. An ``abandonable`` request is ended by :meth:`move_off`; a write
        is not (``abandonable=False``): abandoned on a host that hangs, it could still be
        applied there later, after the clean-up its failure leads to.
        """
        http = self._http
        for attempt in range(len(http.hosts)):
            host, scope = http.current, anyio.CancelScope()
            if abandonable:
                self._in_flight[scope] = host
            try:
                with scope, map_errors(_ERRORS), self._refusals(what):
                    return await make()
                raise Unavailable(f"the request to {http.hosts[host]} was abandoned: it did not answer")
            except Unavailable as exc:
                cause = exc.__cause__
                if len(http.hosts) == 1 or not isinstance(cause, aiohttp.ClientConnectionError):
                    raise
                if http.current == host:  # not moved on already by another request
                    http.rotate()
                if not isinstance(cause, aiohttp.ClientConnectorError) or attempt + 1 == len(http.hosts):
                    raise
            finally:
                self._in_flight.pop(scope, None)
        raise AssertionError("unreachable")

    async def _put(self, path: str, data: str, what: str, *, abandonable: bool = True) -> _Response:
        """``PUT path`` through py-consul's HTTP layer, with the token header and ``dc``."""
        params = [("dc", self._dc)] if self._dc else []

        def keep(response: Any) -> _Response:
            return _Response(int(response.code), str(response.body))

        headers = self._consul.prepare_headers()
        return await self._request(
            lambda: self._http.put(keep, path, params=params, data=data, headers=headers),
            what,
            abandonable=abandonable,
        )

    # -- refusals --------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        """``text`` without the token's secret (Consul's messages name a token by its
        AccessorID, but nothing here relies on that)."""
        return text.replace(self._token, "<the token>") if self._token else text

    def _denied(self, what: str, reason: str) -> PermissionDenied:
        """The PermissionDenied of a request ``what`` that Consul's ACLs refused for ``reason``."""
        reason = self._redact(reason.strip())[:300] or "no reason given"
        who = self._token_source
        if "ACL not found" in reason and self._token:
            who += ": Consul knows no token with that secret"
        return PermissionDenied(f"Consul refused {what}: {reason} (as {who})")

    def _cause(self, exc: BaseException) -> BaseException | None:
        """``exc`` to keep as the ``__cause__`` of a refusal, unless it shows the secret."""
        if self._token and any(self._token in text for text in (str(exc), repr(exc))):
            return None
        return exc

    @contextlib.contextmanager
    def _refusals(self, what: str) -> Iterator[None]:
        """Raise what py-consul raises for a 403 or 401, and a TLS handshake in which the
        agent refused the client certificate, as PermissionDenied naming ``what``."""
        try:
            yield
            return
        except _ACL_ERRORS as exc:
            denied, cause = self._denied(what, str(exc)), self._cause(exc)
        except (aiohttp.ClientError, OSError) as exc:
            refusal = certificate_refusal(exc)
            if refusal is None:
                raise
            denied = PermissionDenied(
                f"Consul agent {self.host} refused the TLS connection {what}: {refusal} "
                f"(as {self._certificate})"
            )
            cause = exc
        # Raised here, not in the except clause: a py-consul error that showed the secret
        # (dropped by _cause) must not stay on as the refusal's __context__ either.
        raise denied from cause

    def _refused(self, what: str, response: _Response) -> Unavailable | PermissionDenied:
        """The error of a reply with an unexpected status: PermissionDenied for a 403 or 401."""
        if response.status in _REFUSED_STATUSES:
            return self._denied(what, f"HTTP {response.status}: {response.body}")
        return Unavailable(
            f"Consul refused {what}: HTTP {response.status}: {self._redact(response.body.strip())[:300]}"
        )

    # -- KV ------------------------------------------------------------------------------

    async def kv_get(
        self, key: str, *, index: int = 0, wait: float | None = None
    ) -> tuple[KVPair | None, int]:
        """A consistent read of ``key``: the pair (or ``None``) and the ``X-Consul-Index``.

        With ``index`` > 0 it is a blocking query: it returns when something may have
        changed after ``index``, or after ``wait`` seconds (plus Consul's jitter).
        """
        new_index, raw = await self._kv_read(key, recurse=False, index=index, wait=wait)
        with map_errors(_ERRORS):
            return (KVPair.from_json(raw) if raw else None), int(new_index)

    async def kv_list(self, prefix: str) -> list[KVPair]:
        """A consistent read of every key under ``prefix``, in key order."""
        _, raw = await self._kv_read(prefix, recurse=True, index=0, wait=None)
        with map_errors(_ERRORS):
            return [KVPair.from_json(item) for item in raw or ()]

    async def kv_list_after(self, prefix: str, *, index: int, wait: float) -> tuple[list[KVPair], int]:
        """Every key under ``prefix`` and the ``X-Consul-Index``, as a blocking query when
        ``index`` > 0 (see :meth:`kv_get`)."""
        new_index, raw = await self._kv_read(prefix, recurse=True, index=index, wait=wait)
        with map_errors(_ERRORS):
            return [KVPair.from_json(item) for item in raw or ()], int(new_index)

    async def _kv_read(self, key: str, *, recurse: bool, index: int, wait: float | None) -> tuple[Any, Any]:
        """``GET /v1/kv/<key>`` as py-consul's ``KV.get`` makes it (consistent, ``dc``, a
        blocking query with ``index``), returning its ``(index, value or values)``.

        A single key the token may not read is a 403; a listing leaves such keys out and
        says so in ``X-Consul-Results-Filtered-By-ACLs``: PermissionDenied too, rather than a
        listing with keys missing (a group without its members)."""
        what = f"to list the keys under {key!r}" if recurse else f"to read {key!r}"
        params: list[tuple[str, Any]] = []
        if index:
            params.append(("index", index))
            if wait:
                params.append(("wait", go_duration(wait)))
        if recurse:
            params.append(("recurse", "1"))
        if self._dc:
            params.append(("dc", self._dc))
        params.append(("consistent", "1"))
        decode = consul.callback.CB.json(index=True, decode="Value", one=not recurse)

        def callback(response: Any) -> tuple[Any, Any]:
            result = decode(response)  # raises py-consul's errors, a 403 included
            if str(response.headers.get("X-Consul-Results-Filtered-By-ACLs", "")).lower() == "true":
                raise self._denied(
                    what, "some keys under it were left out, which the token lacks 'key:read' on"
                )
            return result  # type: ignore[no-any-return]

        headers = self._consul.prepare_headers()
        return await self._request(
            lambda: self._http.get(callback, f"/v1/kv/{key}", params=params, headers=headers), what
        )

    async def txn(self, ops: list[dict[str, Any]], what: str) -> TxnOutcome:
        """Apply KV operations atomically (``PUT /v1/txn``); a 409 is a failed outcome.
        Never abandoned by :meth:`move_off` (locks, releases and writes are transactions)."""
        response = await self._put("/v1/txn", json.dumps(ops), what, abandonable=False)
        if response.status not in (200, 409):
            raise self._refused(what, response)
        with map_errors(_ERRORS):
            body = json.loads(response.body)
            results = [KVPair.from_json(r["KV"]) for r in body.get("Results") or () if r.get("KV")]
            errors = [str(e.get("What", "")) for e in body.get("Errors") or ()]
            failed = frozenset(int(e.get("OpIndex", -1)) for e in body.get("Errors") or ())
        # An operation an ACL refused fails the transaction (409) with "Permission denied: token
        # with AccessorID '...' lacks permission 'key:write' on ...": nothing was applied.
        denied = next((error for error in errors if error.startswith(_ACL_REFUSALS)), None)
        if denied is not None:
            raise self._denied(what, denied)
        return TxnOutcome(response.status == 200, results, errors, failed)

    # -- sessions --------------------------------------------------------------------------

    async def session_create(self, *, name: str, ttl: float, lock_delay: float) -> str:
        """Create a session with a TTL, ``behavior=release`` and no health checks; return its id."""
        body = {
            "Name": name,
            "TTL": go_duration(ttl),
            "LockDelay": go_duration(lock_delay),
            "Behavior": "release",
            # Bound to no health check: by default Consul ties a session to its agent's
            # serfHealth, and invalidates it whenever that agent dies or is cut off, at any
            # moment of its TTL; only the TTL may end it (and the node leaving the catalog).
            "NodeChecks": [],
            "Checks": [],  # the same, for Consul before 1.7
        }
        response = await self._put("/v1/session/create", json.dumps(body), "to create a session")
        if response.status != 200:
            raise self._refused("to create a session", response)
        with map_errors(_ERRORS):
            return str(json.loads(response.body)["ID"])

    async def session_renew(self, session_id: str) -> float | None:
        """Renew a session: the TTL the server granted (``0`` if not given), ``None`` if it is gone."""

        async def renew() -> Any:
            try:
                return await self._consul.session.renew(session_id)
            except consul.NotFound:
                return None

        entry = await self._request(renew, f"to renew session {session_id}")
        if not entry:
            return None
        return parse_go_duration(str(entry.get("TTL") or "")) or 0.0

    async def session_destroy(self, session_id: str) -> None:
        """Destroy a session (its locks are released, with its lock-delay)."""
        await self._request(
            lambda: self._consul.session.destroy(session_id), f"to destroy session {session_id}"
        )


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(seconds: float) -> str:
    """Seconds as a Go duration string (``"15s"``, ``"1500ms"``)."""
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def parse_go_duration(text: str) -> float | None:
    """A Go duration string (``"15s"``, ``"1m30s"``, ``"1.5s"``) in seconds; ``None`` if invalid."""
    text = text.strip()
    if not text or _DURATION_PART.sub("", text):
        return None
    return sum(float(number) * _UNITS[unit] for number, unit in _DURATION_PART.findall(text))
