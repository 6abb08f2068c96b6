"""ACL tokens and TLS (server verification, client certificates) on real Consul 1.22 agents.

Three agents, each a one-node ``consul agent -dev`` of :class:`ConsulProcess` (module-scoped):

* **ACLs**: ``acl { enabled = true, default_policy = "deny", enable_token_persistence =
  false, tokens { initial_management = <management secret>, agent = <the same> } }`` (the
  agent token only lets the agent keep its own node entry up to date; the SDK never uses it).
  The management token then makes, over HTTP, the policies and tokens of the tests:

  ``sdk``       ``key_prefix "allowed/" { policy = "write" }`` and
                ``session_prefix "" { policy = "write" }``: the least the SDK needs for every
                primitive in the namespace ``allowed`` (write covers the reads, listings,
                blocking queries and transactions; sessions are the agent node's);
  ``elsewhere`` ``key_prefix "other/" { policy = "read" }`` and the same session rule: can
                open a session but lacks the namespace's keys;
  ``viewer``    ``key_prefix "allowed/" { policy = "read" }`` and the session rule: reads only;
  ``keys-only`` the namespace's ``key_prefix`` rule without the session rule.

* **HTTPS with client certificates**: ``ports { http = -1, https = <port> }`` and ``tls {
  defaults { ca_file, cert_file, key_file } https { verify_incoming = true } }`` with the test
  CA and the server certificate for localhost and 127.0.0.1 (``verify_incoming`` is set on the
  HTTPS listener only: under ``defaults`` it would also make the agent's own RPC, which sends
  no client certificate, refuse itself).

* **The same with the wrong host name**: its certificate is ``other.pem`` (``other.invalid``
  only).

Every refusal is checked for the secrets: none is in the message, the repr or any error the
refusal was caused by.
"""

from __future__ import annotations

import json
import logging
import ssl
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from _certs import make_certificates
from _secret_scan import scan

import coordination
from coordination import PermissionDenied, Unavailable, Versioned
from coordination.testing.servers import ConsulProcess, free_port
from coordination_consul._client import ConsulClient

asyncio = pytest.mark.asyncio

NAMESPACE = "allowed"
OPTIONS: dict[str, Any] = {"ttl": 3.0, "lock_delay": 1.0, "timeout": 5.0}
TLS_OPTIONS: dict[str, Any] = {"ttl": 3.0, "lock_delay": 1.0, "timeout": 3.0}

SESSION_RULE = 'session_prefix "" { policy = "write" }'


def _request(
    method: str,
    url: str,
    *,
    token: str | None = None,
    body: Any = None,
    context: ssl.SSLContext | None = None,
    timeout: float,
) -> tuple[int, Any]:
    """One request to an agent's HTTP API: the status and the JSON reply (``None`` if none)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if token is not None:
        request.add_header("X-Consul-Token", token)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as reply:
            text = reply.read()
            return int(reply.status), json.loads(text) if text else None
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code), None


def _node_is_healthy(status: int, checks: Any) -> bool:
    return (
        status == 200
        and isinstance(checks, list)
        and any(
            isinstance(check, dict)
            and check.get("CheckID") == "serfHealth"
            and check.get("Status") == "passing"
            for check in checks
        )
    )


class AclConsul(ConsulProcess):
    """The test agent with ACLs on, denying by default, and a known management token."""

    def __init__(self, *, start_timeout: float) -> None:
        self.management = str(uuid.uuid4())
        super().__init__(start_timeout=start_timeout)

    def _config(self) -> dict[str, Any]:
        return {
            **super()._config(),
            "acl": {
                "enabled": True,
                "default_policy": "deny",
                "enable_token_persistence": False,
                "tokens": {"initial_management": self.management, "agent": self.management},
            },
        }

    def _is_ready(self, timeout: float) -> bool:
        # The node's health is not the anonymous token's to read: ask with the management token.
        status, leader = _request("GET", f"{self.http_url}/v1/status/leader", timeout=timeout)
        if status != 200 or not leader:
            return False
        node = urllib.parse.quote(self.node_name)
        status, checks = _request(
            "GET", f"{self.http_url}/v1/health/node/{node}", token=self.management, timeout=timeout
        )
        return _node_is_healthy(status, checks)

    def api(self, method: str, path: str, body: Any = None, *, timeout: float) -> Any:
        """``method /v1/<path>`` with the management token; the JSON reply (must be a 200)."""
        status, reply = _request(
            method, f"{self.http_url}/v1/{path}", token=self.management, body=body, timeout=timeout
        )
        assert status == 200, (method, path, status)
        return reply


@dataclass(frozen=True)
class Token:
    """An ACL token made for the tests: its secret (sent) and accessor (named in refusals)."""

    secret: str
    accessor: str


class Tokens:
    """The tokens of the policies the module docstring lists."""

    def __init__(self, server: AclConsul, timeout: float) -> None:
        policies = {
            "sdk": f'key_prefix "{NAMESPACE}/" {{ policy = "write" }}\n{SESSION_RULE}',
            "elsewhere": f'key_prefix "other/" {{ policy = "read" }}\n{SESSION_RULE}',
            "viewer": f'key_prefix "{NAMESPACE}/" {{ policy = "read" }}\n{SESSION_RULE}',
            "keys-only": f'key_prefix "{NAMESPACE}/" {{ policy = "write" }}',
        }
        made: dict[str, Token] = {}
        for name, rules in policies.items():
            server.api("PUT", "acl/policy", {"Name": name, "Rules": rules}, timeout=timeout)
            secret = str(uuid.uuid4())
            reply = server.api(
                "PUT", "acl/token", {"SecretID": secret, "Policies": [{"Name": name}]}, timeout=timeout
            )
            made[name] = Token(secret, str(reply["AccessorID"]))
        self.sdk, self.elsewhere = made["sdk"], made["elsewhere"]
        self.viewer, self.keys_only = made["viewer"], made["keys-only"]
        self.management = server.management
        self.secrets = [server.management, *(token.secret for token in made.values())]


@pytest.fixture(scope="module")
def acl_consul(session_scaled: Callable[[float], float]) -> Iterator[AclConsul]:
    with AclConsul(start_timeout=session_scaled(60)) as server:
        yield server


@pytest.fixture(scope="module")
def tokens(acl_consul: AclConsul, session_scaled: Callable[[float], float]) -> Tokens:
    return Tokens(acl_consul, session_scaled(10))


def acl_url(server: ConsulProcess, namespace: str = NAMESPACE) -> str:
    return f"{server.url}/{namespace}"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def assert_hidden(exc: BaseException, secrets: list[str]) -> None:
    """No secret in the message, repr or arguments of ``exc`` or any error it came from."""
    chain, error, seen = [], exc, set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    for link in chain:
        texts = [str(link), repr(link), *(str(arg) for arg in link.args)]
        for secret in secrets:
            assert not any(secret in text for text in texts), (type(link), secret)


# -- ACLs ------------------------------------------------------------------------------------


@asyncio
async def test_the_least_policy_is_enough_for_every_primitive(
    acl_consul: AclConsul, tokens: Tokens, scaled: Callable[[float], float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sdk`` (key_prefix write on the namespace, session_prefix write): locks, elections,
    config (watch and guarded writes) and groups all work, also across session renewals."""
    renewals, renewed = 0, anyio.Event()
    original = ConsulClient.session_renew

    async def counting(self: ConsulClient, session_id: str) -> float | None:
        nonlocal renewals
        granted = await original(self, session_id)
        renewals += 1
        renewed.set()
        return granted

    monkeypatch.setattr(ConsulClient, "session_renew", counting)
    url = acl_url(acl_consul)
    async with coordination.connect(url, token=tokens.sdk.secret, **OPTIONS) as coord:
        lock, config = coord.lock(unique("job")), coord.config(unique("c"))
        async with lock as held:
            version = await config.set(b"one", guard=held)
            assert await config.get() == Versioned(b"one", version)
        assert not held.held
        election = coord.election(unique("e"))
        async with election.campaign(b"me"):
            leader = await election.leader()
            assert leader is not None
            assert leader.value == b"me"
        group = coord.group(unique("g"))
        async with group.join(b"10.0.0.7:80") as member:
            assert [m.value for m in await group.members()] == [b"10.0.0.7:80"]
            async for members in group.watch():
                assert [m.id for m in members] == [member.id]
                break
        two = anyio.Event()
        seen: list[Versioned | None] = []
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                async for item in config.watch():
                    seen.append(item)
                    if item is not None and item.value == b"two":
                        two.set()

            tg.start_soon(watch)
            newer = await config.set(b"two")
            with anyio.fail_after(scaled(10)):
                await two.wait()
            tg.cancel_scope.cancel()
        assert seen[-1] == Versioned(b"two", newer)
        session = coord.session_id
        # Renewals (every third of the 1 s lock-delay) go through under the ACL too.
        wanted = renewals + 2
        with anyio.fail_after(scaled(10)):
            while renewals < wanted:
                await renewed.wait()
                renewed = anyio.Event()
        assert coord.session_id == session
        assert await config.get() == Versioned(b"two", newer)


@asyncio
async def test_a_token_without_the_namespace_is_refused_at_once(
    acl_consul: AclConsul,
    tokens: Tokens,
    scaled: Callable[[float], float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``elsewhere`` opens a session, but the first operation on the namespace is refused
    with PermissionDenied naming the key and the token's AccessorID: at once, never retried.
    No secret is in the refusals or in the logs."""
    caplog.set_level(logging.DEBUG)
    url = acl_url(acl_consul)
    accessor = tokens.elsewhere.accessor
    async with coordination.connect(url, token=tokens.elsewhere.secret, **OPTIONS) as coord:
        name = unique("job")
        started = anyio.current_time()
        with pytest.raises(PermissionDenied) as caught:
            await coord.lock(name).acquire(timeout=scaled(30))
        assert anyio.current_time() - started < OPTIONS["timeout"] / 2  # not retried until a timeout
        message = str(caught.value)
        assert f"to lock '{NAMESPACE}/{name}/.lock'" in message, message
        assert f"lacks permission 'key:write' on \"{NAMESPACE}/{name}/.lock\"" in message, message
        assert f"token with AccessorID '{accessor}'" in message, message
        assert "(as the token given in the 'token' option)" in message, message
        assert isinstance(caught.value, PermissionError)
        refusals = [caught.value]

        config = coord.config(unique("c"))
        with pytest.raises(
            PermissionDenied, match=f"to read '{NAMESPACE}/.*'{accessor}' lacks permission 'key:read'"
        ) as caught:
            await config.get()
        refusals.append(caught.value)
        with pytest.raises(PermissionDenied, match=f"to write '{NAMESPACE}/.*key:write") as caught:
            await config.set(b"v")
        refusals.append(caught.value)
        with pytest.raises(PermissionDenied) as caught:
            async for _ in config.watch():
                pass
        refusals.append(caught.value)
        with pytest.raises(PermissionDenied, match=r"to lock .*election") as caught:
            await coord.election(unique("e")).campaign(b"me")
        refusals.append(caught.value)
        with pytest.raises(PermissionDenied, match="key:read") as caught:
            await coord.election(unique("e")).leader()
        refusals.append(caught.value)
        with pytest.raises(PermissionDenied, match="to join") as caught:
            await coord.group(unique("g")).join(b"x")
        refusals.append(caught.value)
        # The session is still there: refusals are the key's, not the connection's.
        assert coord.state is coordination.SessionState.CONNECTED
    for refusal in refusals:
        assert_hidden(refusal, tokens.secrets)
    assert not [secret for secret in tokens.secrets if secret in caplog.text]


@asyncio
async def test_a_listing_the_token_may_not_read_is_refused_not_emptied(
    acl_consul: AclConsul, tokens: Tokens
) -> None:
    """A group with members, listed by a token that may not read them: Consul leaves the keys
    out of the listing (and says so in a header); the SDK raises PermissionDenied, not []."""
    url, group = acl_url(acl_consul), unique("g")
    async with (
        coordination.connect(url, token=tokens.sdk.secret, **OPTIONS) as member,
        member.group(group).join(b"here"),
        coordination.connect(url, token=tokens.elsewhere.secret, **OPTIONS) as outsider,
    ):
        with pytest.raises(PermissionDenied, match=r"left out.*key:read") as caught:
            await outsider.group(group).members()
        assert_hidden(caught.value, tokens.secrets)
        with pytest.raises(PermissionDenied):
            async for _ in outsider.group(group).watch():
                pass


@asyncio
async def test_a_read_only_token_reads_and_is_refused_writes(acl_consul: AclConsul, tokens: Tokens) -> None:
    url, name = acl_url(acl_consul), unique("c")
    async with coordination.connect(url, token=tokens.sdk.secret, **OPTIONS) as writer:
        version = await writer.config(name).set(b"v")
    async with coordination.connect(url, token=tokens.viewer.secret, **OPTIONS) as viewer:
        assert await viewer.config(name).get() == Versioned(b"v", version)
        with pytest.raises(
            PermissionDenied, match=f"'{tokens.viewer.accessor}' lacks permission 'key:write'"
        ) as caught:
            await viewer.config(name).set(b"w")
        assert_hidden(caught.value, tokens.secrets)
        with pytest.raises(PermissionDenied, match="key:write"):
            await viewer.lock(unique("job")).acquire(timeout=10)


@asyncio
async def test_without_session_rights_connect_is_refused(acl_consul: AclConsul, tokens: Tokens) -> None:
    """``keys-only`` has the namespace but cannot make sessions: ``connect`` is refused."""
    started = anyio.current_time()
    with pytest.raises(PermissionDenied, match=r"create a session.*session:write") as caught:
        async with coordination.connect(acl_url(acl_consul), token=tokens.keys_only.secret, **OPTIONS):
            pass
    assert anyio.current_time() - started < OPTIONS["timeout"] / 2
    assert tokens.keys_only.accessor in str(caught.value)
    assert_hidden(caught.value, tokens.secrets)


@asyncio
async def test_no_token_is_the_anonymous_token_and_refused(
    acl_consul: AclConsul, tokens: Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    started = anyio.current_time()
    with pytest.raises(PermissionDenied) as caught:
        async with coordination.connect(acl_url(acl_consul), **OPTIONS):
            pass
    assert anyio.current_time() - started < OPTIONS["timeout"] / 2
    message = str(caught.value)
    assert "anonymous token lacks permission 'session:write'" in message, message
    assert "no token: neither the 'token' option nor $CONSUL_HTTP_TOKEN is set" in message, message
    assert_hidden(caught.value, tokens.secrets)


@asyncio
async def test_an_unknown_token_is_refused(acl_consul: AclConsul, tokens: Tokens) -> None:
    unknown = str(uuid.uuid4())
    with pytest.raises(PermissionDenied) as caught:
        async with coordination.connect(acl_url(acl_consul), token=unknown, **OPTIONS):
            pass
    message = str(caught.value)
    assert "ACL not found" in message, message
    assert "(as the token given in the 'token' option: Consul knows no token with that secret)" in message
    assert_hidden(caught.value, [unknown, *tokens.secrets])


@asyncio
async def test_the_token_of_the_url_and_of_the_environment(
    acl_consul: AclConsul, tokens: Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``?token=`` in the URL, and ``$CONSUL_HTTP_TOKEN`` when no option gives one; a
    refusal says which of them the token came from."""
    url, name = acl_url(acl_consul), unique("c")
    async with coordination.connect(f"{url}?token={tokens.sdk.secret}", **OPTIONS) as coord:
        version = await coord.config(name).set(b"url")
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", tokens.sdk.secret)
    async with coordination.connect(url, **OPTIONS) as coord:
        assert await coord.config(name).get() == Versioned(b"url", version)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", tokens.elsewhere.secret)
    async with coordination.connect(url, **OPTIONS) as coord:
        with pytest.raises(PermissionDenied, match=r"as the token given in \$CONSUL_HTTP_TOKEN") as caught:
            await coord.config(name).get()
        assert tokens.elsewhere.accessor in str(caught.value)
        assert_hidden(caught.value, tokens.secrets)
    # The option wins over the environment.
    async with coordination.connect(url, token=tokens.sdk.secret, **OPTIONS) as coord:
        assert await coord.config(name).get() == Versioned(b"url", version)


@asyncio
async def test_no_secret_is_shown(acl_consul: AclConsul, tokens: Tokens) -> None:
    """The ``sdk`` token in the URL and in the options, ``elsewhere``'s refused, an unknown
    token at a dead port: found nowhere (see tests/_secret_scan.py for what runs)."""
    with_token = f"{acl_url(acl_consul)}?token={tokens.sdk.secret}"
    refused = f"{acl_url(acl_consul)}?token={tokens.elsewhere.secret}"
    dead = with_token.replace(f":{acl_consul.port}/", f":{free_port()}/")
    found = await scan(
        with_token,
        secrets=tokens.secrets,
        options={"token": tokens.sdk.secret},
        refused_url=refused,
        dead_url=dead,
    )
    assert "a lock lost to an expired session" in found.exercised


# -- TLS -------------------------------------------------------------------------------------


class TlsConsul(ConsulProcess):
    """The test agent serving HTTPS only, requiring client certificates of the test CA, with
    the server certificate ``<cert>.pem`` (``server``: localhost and 127.0.0.1)."""

    def __init__(self, files: dict[str, str], cert: str, *, start_timeout: float) -> None:
        self.files, self.cert = files, cert
        self._https_port = 0
        super().__init__(start_timeout=start_timeout)

    def _allocate_ports(self) -> None:
        super()._allocate_ports()
        self._https_port = free_port()

    @property
    def port(self) -> int:
        return self._https_port

    @property
    def https_url(self) -> str:
        return f"https://{self._host}:{self._https_port}"

    def _config(self) -> dict[str, Any]:
        config = super()._config()
        return {
            **config,
            "ports": {**config["ports"], "http": -1, "https": self._https_port},
            "tls": {
                "defaults": {
                    "ca_file": self.files["ca.pem"],
                    "cert_file": self.files[f"{self.cert}.pem"],
                    "key_file": self.files[f"{self.cert}.key"],
                },
                "https": {"verify_incoming": True},
            },
        }

    def _is_ready(self, timeout: float) -> bool:
        context = ssl.create_default_context(cafile=self.files["ca.pem"])
        context.check_hostname = False  # other.pem names another host
        context.load_cert_chain(self.files["client.pem"], self.files["client.key"])
        status, leader = _request(
            "GET", f"{self.https_url}/v1/status/leader", context=context, timeout=timeout
        )
        if status != 200 or not leader:
            return False
        node = urllib.parse.quote(self.node_name)
        status, checks = _request(
            "GET", f"{self.https_url}/v1/health/node/{node}", context=context, timeout=timeout
        )
        return _node_is_healthy(status, checks)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_consul(certs: dict[str, str], session_scaled: Callable[[float], float]) -> Iterator[TlsConsul]:
    with TlsConsul(certs, "server", start_timeout=session_scaled(60)) as server:
        yield server


@pytest.fixture(scope="module")
def misnamed_consul(certs: dict[str, str], session_scaled: Callable[[float], float]) -> Iterator[TlsConsul]:
    with TlsConsul(certs, "other", start_timeout=session_scaled(60)) as server:
        yield server


def tls_url(server: TlsConsul, host: str = "127.0.0.1", **options: str) -> str:
    files = server.files
    query = {"ca_file": files["ca.pem"], "cert_file": files["client.pem"], "key_file": files["client.key"]}
    query.update(options)
    return f"consul://{host}:{server.port}/secure?" + urllib.parse.urlencode(
        {name: value for name, value in query.items() if value}
    )


async def round_trip(url: str) -> None:
    """A lock and a config write and read."""
    async with coordination.connect(url, **TLS_OPTIONS) as coord:
        config = coord.config(unique("c"))
        async with coord.lock(unique("job")) as held:
            version = await config.set(b"tls", guard=held)
        assert await config.get() == Versioned(b"tls", version)


@asyncio
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_https_with_a_client_certificate(tls_consul: TlsConsul, host: str) -> None:
    await round_trip(tls_url(tls_consul, host))


@asyncio
async def test_no_client_certificate_is_refused(tls_consul: TlsConsul) -> None:
    """The agent refuses the handshake (TLS 1.3 alert "certificate required"): PermissionDenied
    naming the missing certificate, at once."""
    started = anyio.current_time()
    with pytest.raises(PermissionDenied, match="certificate required") as caught:
        await round_trip(tls_url(tls_consul, cert_file="", key_file=""))
    assert anyio.current_time() - started < TLS_OPTIONS["timeout"] / 2
    assert "no client certificate: the 'cert_file' option is not set" in str(caught.value)


@asyncio
async def test_a_client_certificate_of_another_ca_is_refused(tls_consul: TlsConsul) -> None:
    files = tls_consul.files
    with pytest.raises(PermissionDenied, match="UNKNOWN_CA") as caught:
        await round_trip(tls_url(tls_consul, cert_file=files["stranger.pem"], key_file=files["stranger.key"]))
    assert files["stranger.pem"] in str(caught.value)


@asyncio
async def test_an_agent_of_an_untrusted_ca_is_refused(tls_consul: TlsConsul) -> None:
    """Without ``ca_file`` the system's CAs do not know the test CA: the client refuses the
    agent, which is Unavailable (retried until the connect timeout), saying why."""
    with pytest.raises(Unavailable, match="certificate verify failed"):
        await round_trip(tls_url(tls_consul, ca_file="", tls="true"))


@asyncio
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_an_agent_certificate_for_another_host_is_refused(
    misnamed_consul: TlsConsul, host: str
) -> None:
    with pytest.raises(Unavailable, match=r"certificate verify failed: (IP address|Hostname) mismatch"):
        await round_trip(tls_url(misnamed_consul, host))


@asyncio
async def test_tls_verify_false_accepts_an_agent_certificate_for_another_host(
    misnamed_consul: TlsConsul,
) -> None:
    await round_trip(tls_url(misnamed_consul, tls_verify="false"))
