"""The real test servers start, answer their protocol, and survive pause/resume and restart.

These tests need the binaries from ``scripts/install-servers``; a missing one fails the test
(ServerNotInstalled), it is never skipped.
"""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Literal

import pytest

from coordination.testing.servers import (
    ConsulProcess,
    EtcdProcess,
    ServerNotInstalled,
    ServerStartError,
    ZooKeeperProcess,
    find_consul,
    free_port,
)


def http(method: str, url: str, body: bytes | None = None, *, timeout: float) -> tuple[int, bytes]:
    """One HTTP request; the caller gives the timeout (scaled: ``timeout=scaled(5)``)."""
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def connect_refused(port: int, timeout: float) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return False
    except ConnectionRefusedError:
        return True


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_missing_binary_fails_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COORDINATION_CONSUL", "/nonexistent/consul")
    with pytest.raises(ServerNotInstalled, match="scripts/install-servers"):
        find_consul()
    server = ConsulProcess()
    with pytest.raises(ServerNotInstalled, match="COORDINATION_CONSUL"):
        server.start()
    server.close()


def test_server_dying_at_start_raises_with_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COORDINATION_ETCD35", "/bin/false")
    server = EtcdProcess("3.5")
    with pytest.raises(ServerStartError, match="exited with code 1") as raised:
        server.start()
    assert "=== coordination: starting /bin/false --name" in str(raised.value)  # the log tail
    assert not server.running
    server.close()


def test_server_ignores_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, scaled: Callable[[float], float]
) -> None:
    monkeypatch.setenv("ETCD_NAME", "from-the-shell")  # etcd would refuse: it conflicts with --name
    monkeypatch.setenv("ETCDCTL_ENDPOINTS", "http://127.0.0.1:1")
    with EtcdProcess("3.5", start_timeout=scaled(60)) as etcd:
        assert etcd.etcdctl("put", "k", "v").stdout.strip() == "OK"


# --------------------------------------------------------------------------- ZooKeeper


@pytest.fixture
def zookeeper(scaled: Callable[[float], float]) -> Iterator[ZooKeeperProcess]:
    with ZooKeeperProcess(start_timeout=scaled(60)) as server:
        yield server


def test_zookeeper_four_letter_words(zookeeper: ZooKeeperProcess, scaled: Callable[[float], float]) -> None:
    assert zookeeper.url == f"zookeeper://127.0.0.1:{zookeeper.port}"
    assert zookeeper.four_letter_word("ruok", scaled(5)) == "imok"
    srvr = zookeeper.four_letter_word("srvr", scaled(5))
    assert "Zookeeper version: 3.8." in srvr
    assert "Mode: standalone" in srvr
    conf = zookeeper.four_letter_word("conf", scaled(5))
    assert f"clientPort={zookeeper.port}" in conf
    assert "minSessionTimeout=400" in conf  # 2 * tickTime: 1-2 s sessions are allowed
    assert "tickTime=200" in conf


def zk_get(zookeeper: ZooKeeperProcess, path: str) -> str:
    return zookeeper.zkcli("get", path).stdout.splitlines()[-1]


def test_zookeeper_pause_resume_restart_keep_data(
    zookeeper: ZooKeeperProcess, scaled: Callable[[float], float]
) -> None:
    port, pid = zookeeper.port, zookeeper.pid
    assert "Created /kept" in zookeeper.zkcli("create", "/kept", "v1").stderr
    assert zk_get(zookeeper, "/kept") == "v1"

    zookeeper.pause()
    with pytest.raises(TimeoutError):
        zookeeper.four_letter_word("ruok", timeout=scaled(0.5))
    zookeeper.resume()
    assert zookeeper.four_letter_word("ruok", scaled(5)) == "imok"

    zookeeper.restart()
    assert (zookeeper.port, zookeeper.url) == (port, f"zookeeper://127.0.0.1:{port}")
    assert zookeeper.pid != pid
    assert zookeeper.four_letter_word("ruok", scaled(5)) == "imok"
    assert zk_get(zookeeper, "/kept") == "v1"

    zookeeper.zkcli("set", "/kept", "v2")
    zookeeper.kill()
    assert connect_refused(port, scaled(1.0))
    zookeeper.start()  # after SIGKILL: what was acknowledged survives
    assert zookeeper.port == port
    assert zk_get(zookeeper, "/kept") == "v2"


# --------------------------------------------------------------------------- etcd


@pytest.fixture(params=["3.4", "3.5"])
def etcd(request: pytest.FixtureRequest, scaled: Callable[[float], float]) -> Iterator[EtcdProcess]:
    version: Literal["3.4", "3.5"] = request.param
    with EtcdProcess(version, start_timeout=scaled(60)) as server:
        yield server


def test_etcd_put_get(etcd: EtcdProcess, scaled: Callable[[float], float]) -> None:
    assert etcd.url == f"etcd://127.0.0.1:{etcd.port}"
    status, body = http("GET", f"{etcd.client_url}/version", timeout=scaled(5))
    assert status == 200
    assert json.loads(body)["etcdserver"].startswith(etcd.version + ".")

    assert etcd.etcdctl("put", "/coordination/k", "hello").stdout.strip() == "OK"
    got = etcd.etcdctl("get", "/coordination/k", "--print-value-only")
    assert got.stdout.strip() == "hello"


def test_etcd_short_lease_allowed(etcd: EtcdProcess) -> None:
    granted = etcd.etcdctl("lease", "grant", "1").stdout
    assert re.search(r"granted with TTL\(1s\)", granted), granted


def test_etcd_pause_resume_restart_keep_data(etcd: EtcdProcess, scaled: Callable[[float], float]) -> None:
    port = etcd.port
    etcd.etcdctl("put", "kept", "v1")

    etcd.pause()
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        http("GET", f"{etcd.client_url}/health", timeout=scaled(0.5))
    etcd.resume()
    etcd.wait_ready(scaled(10))
    assert etcd.etcdctl("get", "kept", "--print-value-only").stdout.strip() == "v1"

    etcd.restart()
    assert etcd.port == port
    assert etcd.etcdctl("get", "kept", "--print-value-only").stdout.strip() == "v1"

    etcd.etcdctl("put", "kept", "v2")
    etcd.restart(graceful=False)  # SIGKILL: what was acknowledged survives
    assert etcd.port == port
    assert etcd.etcdctl("get", "kept", "--print-value-only").stdout.strip() == "v2"


# --------------------------------------------------------------------------- Consul


@pytest.fixture
def consul(scaled: Callable[[float], float]) -> Iterator[ConsulProcess]:
    with ConsulProcess(start_timeout=scaled(60)) as server:
        yield server


def test_consul_kv_and_cli(consul: ConsulProcess, scaled: Callable[[float], float]) -> None:
    assert consul.url == f"consul://127.0.0.1:{consul.port}"
    status, body = http("PUT", f"{consul.http_url}/v1/kv/coordination/k", b"hello", timeout=scaled(5))
    assert (status, body.strip()) == (200, b"true")
    status, body = http("GET", f"{consul.http_url}/v1/kv/coordination/k?raw", timeout=scaled(5))
    assert (status, body) == (200, b"hello")

    assert consul.consul("kv", "get", "coordination/k").stdout.strip() == "hello"
    members = consul.consul("members").stdout
    assert re.search(rf"{consul.node_name}\s+127\.0\.0\.1:\d+\s+alive\s+server", members), members


def test_consul_short_session_ttl_allowed(consul: ConsulProcess, scaled: Callable[[float], float]) -> None:
    body = json.dumps({"TTL": "1s"}).encode()
    status, body = http("PUT", f"{consul.http_url}/v1/session/create", body, timeout=scaled(5))
    assert status == 200, body
    assert json.loads(body)["ID"]


def test_consul_pause_resume_restart(consul: ConsulProcess, scaled: Callable[[float], float]) -> None:
    port = consul.port
    http("PUT", f"{consul.http_url}/v1/kv/k", b"v", timeout=scaled(5))

    consul.pause()
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        http("GET", f"{consul.http_url}/v1/kv/k?raw", timeout=scaled(0.5))
    consul.resume()
    assert http("GET", f"{consul.http_url}/v1/kv/k?raw", timeout=scaled(5)) == (200, b"v")

    consul.restart()
    assert consul.port == port
    status, body = http("GET", f"{consul.http_url}/v1/status/leader", timeout=scaled(5))
    assert status == 200
    assert json.loads(body)
    # -dev keeps everything in memory: a restarted agent is empty.
    assert http("GET", f"{consul.http_url}/v1/kv/k?raw", timeout=scaled(5))[0] == 404
