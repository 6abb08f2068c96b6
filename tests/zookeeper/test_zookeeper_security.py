"""TLS (server verification, client certificates), digest users and creator-only ACLs, on
a real ZooKeeper 3.8 that enforces them.

The server (module-scoped) serves two ports with Netty (``NettyServerCnxnFactory``):

* ``secureClientPort``: TLS only, with a PEM key store (the server certificate for localhost
  and 127.0.0.1), a PEM trust store (the test CA) and ``ssl.clientAuth=need`` (a client
  certificate from that CA is required);
* ``clientPort``: plain, for the outside observers (kazoo) that check what other clients
  without the credential can do.

Digest authentication is ZooKeeper's built-in provider; the users ``alice`` and ``bob`` need
no server configuration (a digest identity is its user name and a hash of its password).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from _certs import make_certificates
from _secret_scan import scan
from kazoo.client import KazooClient  # type: ignore[import-untyped]
from kazoo.exceptions import NoAuthError  # type: ignore[import-untyped]

import coordination
from coordination import InvalidURL, PermissionDenied, Unavailable, Versioned
from coordination.testing.servers import ZooKeeperProcess, free_port

from .conftest import TICK_MS, in_thread

asyncio = pytest.mark.asyncio

ALICE_PASSWORD = "alice-secret-7f3a"
BOB_PASSWORD = "bob-secret-91c2"

# The parts of Netty a TLS port needs that Debian's zookeeper.jar manifest does not name.
_NETTY_EXTRA = ("netty-codec.jar", "netty-resolver.jar", "netty-transport-native-unix-common.jar")


class SecureZooKeeper(ZooKeeperProcess):
    """The test ZooKeeper with a TLS client port that requires client certificates."""

    def __init__(self, files: dict[str, str], *, start_timeout: float) -> None:
        self.files = files
        self.secure_port = 0
        super().__init__(tick_time_ms=TICK_MS, start_timeout=start_timeout)

    def _allocate_ports(self) -> None:
        super()._allocate_ports()
        self.secure_port = free_port()

    def _config_lines(self) -> list[str]:
        return [
            *super()._config_lines(),
            "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory",
            f"secureClientPort={self.secure_port}",
            f"secureClientPortAddress={self._host}",
            f"ssl.keyStore.location={self.base_dir / 'server-keystore.pem'}",
            "ssl.keyStore.type=PEM",
            f"ssl.trustStore.location={self.files['ca.pem']}",
            "ssl.trustStore.type=PEM",
            "ssl.clientAuth=need",
        ]

    def _command(self) -> list[str]:
        # A PEM key store is the private key and the certificate chain in one file.
        key, cert = (Path(self.files[name]).read_text() for name in ("server.key", "server.pem"))
        (self.base_dir / "server-keystore.pem").write_text(key + cert)
        command = super()._command()
        classpath = command.index("-cp") + 1
        java_dir = Path(command[classpath].split(":")[0]).parent
        extra = [str(java_dir / jar) for jar in _NETTY_EXTRA if (java_dir / jar).is_file()]
        command[classpath] = ":".join([command[classpath], *extra])
        return command


@pytest.fixture(scope="module")
def secure_zookeeper(
    tmp_path_factory: pytest.TempPathFactory, session_scaled: Callable[[float], float]
) -> Iterator[SecureZooKeeper]:
    files = make_certificates(tmp_path_factory.mktemp("certs"))
    with SecureZooKeeper(files, start_timeout=session_scaled(60)) as server:
        yield server


@contextlib.contextmanager
def kazoo_client(server: SecureZooKeeper, **options: Any) -> Iterator[KazooClient]:
    client = KazooClient(hosts=server.address, timeout=5.0, **options)
    client.start(timeout=15)
    try:
        yield client
    finally:
        client.stop()
        client.close()


@pytest.fixture
def kazoo(secure_zookeeper: SecureZooKeeper) -> Iterator[KazooClient]:
    """A kazoo client on the plain port, without any credential: "anyone on the network"."""
    with kazoo_client(secure_zookeeper) as client:
        yield client


def url(
    server: SecureZooKeeper,
    namespace: str,
    *,
    user: str | None = "alice",
    password: str | None = ALICE_PASSWORD,
    host: str = "localhost",
    **options: str,
) -> str:
    files = server.files
    query = {"ca_file": files["ca.pem"], "cert_file": files["client.pem"], "key_file": files["client.key"]}
    query.update(options)
    userinfo = f"{user}:{password}@" if user is not None else ""
    shown = "&".join(f"{k}={v}" for k, v in query.items() if v)
    return f"zookeeper://{userinfo}{host}:{server.secure_port}/{namespace}?{shown}"


CONNECT = {"ttl": 4.0, "timeout": 3.0}


@asyncio
async def test_tls_digest_user_and_creator_only_acls(
    secure_zookeeper: SecureZooKeeper, kazoo: KazooClient, scaled: Callable[[float], float]
) -> None:
    """Over mutual TLS as ``alice``: lock, election, config (with its watch) and group work,
    every znode the SDK made is creator-only (``digest:alice:...``), and a client without
    the credential can neither take the lock (delete or add a contender) nor touch the
    config value."""
    async with coordination.connect(url(secure_zookeeper, "acl"), **CONNECT) as coord:
        config = coord.config("settings")
        async with coord.lock("job") as held:
            version = await config.set(b"v1", guard=held)
            # Reading a node's children or its ACL needs a right on it (ZooKeeper 3.5 and
            # later): alice's, here through kazoo.
            with kazoo_client(
                secure_zookeeper, auth_data=[("digest", f"alice:{ALICE_PASSWORD}")]
            ) as as_alice:
                contenders = await in_thread(as_alice.get_children, "/acl/job")
                assert len(contenders) == 1
                contender = f"/acl/job/{contenders[0]}"
                for path in ("/acl", "/acl/job", contender, "/acl/settings"):
                    acls, _ = await in_thread(as_alice.get_acls, path)
                    # Over TLS the client certificate is an identity too (ZooKeeper's x509
                    # provider): creator-only means alice's digest and that certificate.
                    assert {(a.id.scheme, a.id.id.partition(":")[0], a.perms) for a in acls} == {
                        ("digest", "alice", 31),
                        ("x509", "CN=client-cert", 31),
                    }, path
            with pytest.raises(NoAuthError):
                await in_thread(kazoo.get_children, "/acl/job")
            with pytest.raises(NoAuthError):
                await in_thread(kazoo.delete, contender)
            with pytest.raises(NoAuthError):
                await in_thread(kazoo.create, "/acl/job/x__lock__", b"", ephemeral=True, sequence=True)
            with pytest.raises(NoAuthError):
                await in_thread(kazoo.set, "/acl/settings", b"forged")
            with pytest.raises(NoAuthError):
                await in_thread(kazoo.delete, "/acl/settings")
            with pytest.raises(NoAuthError):
                await in_thread(kazoo.get, "/acl/settings")
            assert held.held
            assert await config.get() == Versioned(b"v1", version)
        election = coord.election("leader")
        async with election.campaign(b"alice-1"):
            leader = await election.leader()
            assert leader is not None
            assert leader.value == b"alice-1"
        async with coord.group("workers").join(b"w1") as member:
            assert [m.id for m in await coord.group("workers").members()] == [member.id]
        seen: list[Versioned | None] = []
        with anyio.fail_after(scaled(10)):
            async for item in config.watch():
                seen.append(item)
                if len(seen) == 1:
                    await config.set(b"v2")
                elif item is not None and item.value == b"v2":
                    break
        assert seen[0] == Versioned(b"v1", version)


def plain_url(server: SecureZooKeeper, namespace: str, user: str, password: str) -> str:
    """The plain port, where a client's only identity is its digest user (over TLS, the
    client certificate is one too, shared here by every test client)."""
    return f"zookeeper://{user}:{password}@{server.address}/{namespace}"


@pytest.mark.parametrize(
    ("user", "password"),
    [("bob", BOB_PASSWORD), ("alice", "wrong-password-5d1")],
    ids=["other-user", "wrong-password"],
)
@asyncio
async def test_other_credentials_are_refused_the_nodes(
    secure_zookeeper: SecureZooKeeper, user: str, password: str, caplog: pytest.LogCaptureFixture
) -> None:
    """ZooKeeper accepts any digest credential (it is an identity, a user name and a hash of
    the password), so another user, or alice with a wrong password, connects; alice's
    creator-only znodes then refuse every operation: PermissionDenied naming the znode and
    the user, at once (not retried), with nothing of the password anywhere."""
    caplog.set_level(logging.DEBUG)
    namespace = f"shared-{user}"
    async with coordination.connect(
        plain_url(secure_zookeeper, namespace, "alice", ALICE_PASSWORD), **CONNECT
    ) as alice:
        version = await alice.config("value").set(b"alice's")
        async with (
            alice.lock("job"),
            coordination.connect(plain_url(secure_zookeeper, namespace, user, password), **CONNECT) as other,
        ):
            started = anyio.current_time()
            with pytest.raises(
                PermissionDenied, match=rf"'/{namespace}/value'.*digest user '{user}'"
            ) as caught:
                await other.config("value").get()
            assert anyio.current_time() - started < 2
            assert isinstance(caught.value, PermissionError)
            with pytest.raises(PermissionDenied, match=f"digest user '{user}'"):
                await other.config("value").set(b"forged")
            with pytest.raises(PermissionDenied, match=f"digest user '{user}'"):
                await other.config("value").delete()
            with pytest.raises(PermissionDenied, match=f"'/{namespace}/job'.*digest user '{user}'"):
                await other.lock("job").acquire(timeout=5)
            assert anyio.current_time() - started < 4
        assert await alice.config("value").get() == Versioned(b"alice's", version)
    shown = caplog.text + str(caught.value) + repr(caught.value) + repr(caught.value.__cause__)
    assert password not in shown


@asyncio
async def test_a_given_acl_lets_anyone_read(secure_zookeeper: SecureZooKeeper, kazoo: KazooClient) -> None:
    """``acl=creator,read``: the owner keeps every right, anyone may read, nobody else write."""
    async with coordination.connect(
        url(secure_zookeeper, "readable", acl="creator,read"), **CONNECT
    ) as coord:
        await coord.config("c").set(b"public")
        data, _ = await in_thread(kazoo.get, "/readable/c")
        assert data == b"public"
        with pytest.raises(NoAuthError):
            await in_thread(kazoo.set, "/readable/c", b"forged")


def test_bad_acl_options_are_refused_before_any_io() -> None:
    with pytest.raises(InvalidURL, match=r"option 'acl'.*'world:anyone'"):
        coordination.connect("zookeeper://127.0.0.1:1/x?acl=world:anyone")
    with pytest.raises(InvalidURL, match=r"option 'acl'.*needs a user"):
        coordination.connect("zookeeper://127.0.0.1:1/x?acl=creator")
    with pytest.raises(InvalidURL, match="has a ':'"):
        coordination.connect("zookeeper://127.0.0.1:1/x", user="a:b", password="p")
    with pytest.raises(InvalidURL, match="a password needs a user"):
        coordination.connect("zookeeper://:pw@127.0.0.1:1/x")


async def _refusal(address: str) -> BaseException:
    try:
        async with coordination.connect(address, **CONNECT):
            pass
    except (PermissionDenied, Unavailable) as exc:
        return exc
    pytest.fail(f"{address} was not refused")


@pytest.mark.parametrize(
    ("options", "refusal", "message"),
    [
        (
            {"cert_file": "", "key_file": ""},
            PermissionDenied,
            r"alert 'bad certificate'.*no client certificate",
        ),
        (
            {"cert_file": "stranger.pem", "key_file": "stranger.key"},
            PermissionDenied,
            r"alert 'certificate unknown'.*the client certificate '.*stranger.pem'",
        ),
        ({"ca_file": "stranger-ca.pem"}, Unavailable, "CERTIFICATE_VERIFY_FAILED.*local issuer"),
        ({"server_name": "other.invalid"}, Unavailable, "CERTIFICATE_VERIFY_FAILED.*Hostname mismatch"),
    ],
    ids=["no-client-cert", "untrusted-client-cert", "untrusted-server", "wrong-host-name"],
)
@asyncio
async def test_tls_refusals(
    secure_zookeeper: SecureZooKeeper, options: dict[str, str], refusal: type[Exception], message: str
) -> None:
    """Each of these is refused by the TLS handshake. The server refusing the client's
    certificate (its TLS alert) is PermissionDenied at once, naming the certificate; the
    client refusing the server's is Unavailable after the connect attempts."""
    files = secure_zookeeper.files
    given = {k: (files.get(v, v)) for k, v in options.items()}
    refused = await _refusal(url(secure_zookeeper, "x", **given))
    assert type(refused) is refusal, refused
    assert re.search(message, str(refused)), refused


@asyncio
async def test_tls_verify_false_accepts_another_host_name(secure_zookeeper: SecureZooKeeper) -> None:
    address = url(secure_zookeeper, "noverify", server_name="other.invalid", tls_verify="false")
    async with coordination.connect(address, **CONNECT) as coord:
        assert await coord.config("c").set(b"v") > 0


@asyncio
async def test_plain_port_with_digest_user(secure_zookeeper: SecureZooKeeper, kazoo: KazooClient) -> None:
    """Without TLS, digest users and creator-only ACLs work the same."""
    async with coordination.connect(
        plain_url(secure_zookeeper, "plain", "alice", ALICE_PASSWORD), **CONNECT
    ) as coord:
        await coord.config("c").set(b"v")
        with pytest.raises(NoAuthError):
            await in_thread(kazoo.set, "/plain/c", b"forged")


@asyncio
async def test_no_secret_is_shown(secure_zookeeper: SecureZooKeeper) -> None:
    """alice's password in the URL and the options over TLS, and bob's refused at a write
    to alice's znodes: found nowhere (see tests/_secret_scan.py for what runs)."""
    with_password = url(secure_zookeeper, "scan")
    # bob on the plain port: over TLS the shared test certificate would let him in.
    refused = plain_url(secure_zookeeper, "scan", "bob", BOB_PASSWORD)
    dead = with_password.replace(f":{secure_zookeeper.secure_port}/", f":{free_port()}/")
    found = await scan(
        with_password,
        secrets=[ALICE_PASSWORD, BOB_PASSWORD],
        options={"password": ALICE_PASSWORD},
        refused_url=refused,
        dead_url=dead,
    )
    assert "a lock lost to an expired session" in found.exercised
