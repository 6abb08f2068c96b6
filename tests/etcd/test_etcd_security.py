"""TLS (server verification, client certificates) and user/password auth, on etcd 3.4 and 3.5.

One etcd per version serves only HTTPS, demands client certificates and has auth enabled,
with auth tokens that expire after a second so that renewing them is exercised.
"""

from __future__ import annotations

import ssl
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, Literal

import anyio
import pytest
from _certs import make_certificates
from _secret_scan import scan

import coordination
from coordination import PermissionDenied, SessionState, Unavailable, Versioned
from coordination.testing.servers import EtcdProcess, free_port
from coordination_etcd._client import EtcdClient

from .conftest import VERSIONS

asyncio = pytest.mark.asyncio

PASSWORD = "root-secret"
LIMITED_PASSWORD = "limited-secret"


class SecureEtcd(EtcdProcess):
    """The test etcd with HTTPS only, client certificates required, and short-lived auth tokens."""

    def __init__(
        self, version: Literal["3.4", "3.5"], files: dict[str, str], *, start_timeout: float
    ) -> None:
        self.files = files
        super().__init__(version, start_timeout=start_timeout)

    @property
    def client_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        return [
            *super()._command(),
            *("--cert-file", self.files["server.pem"], "--key-file", self.files["server.key"]),
            *("--trusted-ca-file", self.files["ca.pem"], "--client-cert-auth"),
            *("--auth-token", "simple", "--auth-token-ttl", "1"),
        ]

    def _is_ready(self, timeout: float) -> bool:
        context = ssl.create_default_context(cafile=self.files["ca.pem"])
        context.load_cert_chain(self.files["client.pem"], self.files["client.key"])
        with urllib.request.urlopen(f"{self.client_url}/health", timeout=timeout, context=context) as reply:
            return b'"health":"true"' in reply.read()

    def etcdctl_env(self) -> dict[str, str]:
        return {
            **super().etcdctl_env(),
            "ETCDCTL_CACERT": self.files["ca.pem"],
            "ETCDCTL_CERT": self.files["client.pem"],
            "ETCDCTL_KEY": self.files["client.key"],
        }


@pytest.fixture(scope="module", params=VERSIONS, ids=[f"etcd{v}" for v in VERSIONS])
def secure_etcd(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    session_scaled: Callable[[float], float],
) -> Iterator[SecureEtcd]:
    files = make_certificates(tmp_path_factory.mktemp("certs"))
    with SecureEtcd(request.param, files, start_timeout=session_scaled(60)) as server:
        server.etcdctl("user", "add", f"root:{PASSWORD}")
        # A least-privilege user: read and write under the namespace "allowed" only.
        server.etcdctl("role", "add", "allowed-rw")
        server.etcdctl("role", "grant-permission", "allowed-rw", "--prefix=true", "readwrite", "allowed/")
        server.etcdctl("user", "add", f"limited:{LIMITED_PASSWORD}")
        server.etcdctl("user", "grant-role", "limited", "allowed-rw")
        server.etcdctl("auth", "enable")
        yield server


def secure_url(server: SecureEtcd, namespace: str = "secure", **query: str) -> str:
    files = server.files
    options = {
        "ca_file": files["ca.pem"],
        "cert_file": files["client.pem"],
        "key_file": files["client.key"],
        **query,
    }
    return f"etcd://localhost:{server.port}/{namespace}?" + "&".join(
        f"{k}={v}" for k, v in options.items() if v
    )


@asyncio
async def test_tls_with_client_certificate_and_password(
    secure_etcd: SecureEtcd, monkeypatch: pytest.MonkeyPatch, scaled: Callable[[float], float]
) -> None:
    """Everything works over mutual TLS with a user, also after the auth token expired."""
    logins = 0
    original = EtcdClient.authenticate

    async def counting(self: EtcdClient) -> None:
        nonlocal logins
        logins += 1
        await original(self)

    monkeypatch.setattr(EtcdClient, "authenticate", counting)
    url = secure_url(secure_etcd, user="root", password=PASSWORD)
    # ttl 9: keepalives every 3 s, so the 1 s token expires between them too, and a keepalive
    # stream opened after it did is refused (etcd 3.5.35) until it logs in again.
    async with coordination.connect(url, ttl=9, timeout=5) as coord:
        session = coord.session_id
        held = await coord.lock("tls").acquire()
        config = coord.config("tls")
        seen: list[Versioned | None] = []
        two = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                async for item in config.watch():
                    seen.append(item)
                    if item is not None and item.value == b"two":
                        two.set()

            tg.start_soon(watch)
            version = await config.set(b"one")
            # etcd drops a token unused for a second: the next request fetches a new one.
            with anyio.fail_after(scaled(15)):
                while logins < 2:
                    await anyio.sleep(1.5)  # idle, so that the token expires
                    assert await config.get() == Versioned(b"one", version)
            newer = await config.set(b"two")
            with anyio.fail_after(scaled(10)):
                await two.wait()
            tg.cancel_scope.cancel()
        assert seen[-1] == Versioned(b"two", newer)
        assert coord.session_id == session
        assert coord.state is SessionState.CONNECTED
        assert held.held
        await held.release()


async def _open(url: str) -> None:
    backend: Any = coordination.connect(url, ttl=3, timeout=5)._engine.backend
    try:
        await backend.open()
        await backend.open_session(3.0, None)
    finally:
        await backend.aclose()


@asyncio
async def test_wrong_password_is_refused(secure_etcd: SecureEtcd) -> None:
    with pytest.raises(PermissionDenied, match=r"authentication failed.*user 'root'") as caught:
        async with coordination.connect(
            secure_url(secure_etcd, user="root", password="wrong"), ttl=3, timeout=5
        ):
            pass
    assert isinstance(caught.value, PermissionError)
    assert "wrong" not in str(caught.value)


@asyncio
async def test_a_role_limited_to_its_namespace(secure_etcd: SecureEtcd) -> None:
    """A user whose role covers ``allowed/`` only: everything works there; elsewhere the first
    operation is refused with PermissionDenied naming the user, at once, not retried."""
    allowed = secure_url(secure_etcd, "allowed", user="limited", password=LIMITED_PASSWORD)
    async with coordination.connect(allowed, ttl=3, timeout=5) as coord:
        async with coord.lock("job") as held:
            assert await coord.config("c").set(b"v", guard=held) > 0
        async with coord.election("e").campaign(b"me"):
            assert (await coord.election("e").leader()) is not None
        config = coord.config("c")
        async for item in config.watch():
            assert item is not None
            assert item.value == b"v"
            break
    forbidden = secure_url(secure_etcd, "forbidden", user="limited", password=LIMITED_PASSWORD)
    async with coordination.connect(forbidden, ttl=3, timeout=5) as coord:
        started = anyio.current_time()
        with pytest.raises(PermissionDenied, match="user 'limited'") as caught:
            await coord.lock("job").acquire(timeout=10)
        assert anyio.current_time() - started < 5  # not retried until a timeout
        assert LIMITED_PASSWORD not in str(caught.value)
        with pytest.raises(PermissionDenied, match="permission denied"):
            await coord.config("c").set(b"v")
        with pytest.raises(PermissionDenied):
            await coord.config("c").get()
        with pytest.raises(PermissionDenied):
            async for _ in coord.config("c").watch():
                pass


@asyncio
async def test_no_client_certificate_is_refused(secure_etcd: SecureEtcd) -> None:
    with pytest.raises(Unavailable):
        await _open(secure_url(secure_etcd, user="root", password=PASSWORD, cert_file="", key_file=""))


@asyncio
async def test_untrusted_server_is_refused(secure_etcd: SecureEtcd) -> None:
    with pytest.raises(Unavailable):
        await _open(secure_url(secure_etcd, user="root", password=PASSWORD, ca_file=""))


@asyncio
async def test_no_secret_is_shown(secure_etcd: SecureEtcd) -> None:
    """The password in the URL and in the options, a wrong one refused: found nowhere (see
    tests/_secret_scan.py for what runs)."""
    wrong = "wrong-etcd-password-3e8"
    with_password = secure_url(secure_etcd, "scan").replace("etcd://", f"etcd://root:{PASSWORD}@")
    refused = secure_url(secure_etcd, "scan", user="root", password=wrong)
    dead = with_password.replace(f":{secure_etcd.port}/", f":{free_port()}/")
    found = await scan(
        with_password,
        secrets=[PASSWORD, wrong],
        options={"password": PASSWORD},
        refused_url=refused,
        dead_url=dead,
    )
    assert "a lock lost to an expired session" in found.exercised
