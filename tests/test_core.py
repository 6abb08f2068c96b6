"""The core: URL parsing, backend lookup, the error tree, public names."""

from __future__ import annotations

import importlib.metadata
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

import coordination
from coordination import exceptions
from coordination._url import (
    Option,
    certificate_refusal,
    client_certificate,
    credentials,
    parse_url,
    resolve_options,
    ssl_context,
)
from coordination.memory import MemoryBackend


def test_public_names_importable_from_the_package() -> None:
    for name in (
        "connect", "Capability", "SessionState", "Leader", "Versioned", "HeldLock", "Leadership",
        "Lock", "Election", "Config", "CoordinationError", "BackendNotFound", "InvalidURL",
        "InvalidName", "Unavailable", "OperationTimeout", "AcquireTimeout", "SessionExpired",
        "LockLost", "LeadershipLost", "NotHeld", "Unsupported",
    ):  # fmt: skip
        assert hasattr(coordination, name), name
        assert name in coordination.__all__


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (coordination.BackendNotFound, LookupError),
        (coordination.InvalidURL, ValueError),
        (coordination.InvalidName, ValueError),
        (coordination.OperationTimeout, TimeoutError),
        (coordination.AcquireTimeout, TimeoutError),
    ],
)
def test_error_tree_builtins(error: type[Exception], builtin: type[Exception]) -> None:
    assert issubclass(error, coordination.CoordinationError)
    assert issubclass(error, builtin)


def test_every_public_error_is_a_coordination_error_and_drawn_in_the_docstring() -> None:
    doc = exceptions.__doc__ or ""
    for name in exceptions.__all__:
        assert issubclass(getattr(exceptions, name), coordination.CoordinationError)
        assert name in doc, f"{name} missing from the drawn tree"


def test_parse_url_parts() -> None:
    url = parse_url("etcd://user:s%40cret@10.0.0.1:2379,10.0.0.2,[::1]:2380/my/app?ttl=10&identity=x")
    assert url.scheme == "etcd"
    assert url.hosts == (("10.0.0.1", 2379), ("10.0.0.2", None), ("::1", 2380))
    assert url.namespace == "my/app"
    assert url.query == {"ttl": "10", "identity": "x"}
    assert (url.username, url.password) == ("user", "s@cret")
    assert "s@cret" not in repr(url)
    assert url.host_strings(2379) == ["10.0.0.1:2379", "10.0.0.2:2379", "[::1]:2380"]


def test_parse_url_minimal() -> None:
    url = parse_url("memory://")
    assert (url.scheme, url.hosts, url.namespace, dict(url.query)) == ("memory", (), "", {})


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("etcd://h?ttl=1&ttl=2", "'ttl' is given twice"),
        ("etcd://h:0", "invalid port"),
        ("etcd://h/a/../b", "namespace"),
        ("etcd://h#frag", "fragment"),
        ("etcd://h?&=", "malformed"),
        ("etcd://[::1", "malformed"),
    ],
)
def test_parse_url_errors(url: str, fragment: str) -> None:
    with pytest.raises(coordination.InvalidURL, match=fragment.replace("(", r"\(")):
        parse_url(url)


def test_password_never_in_error_messages() -> None:
    with pytest.raises(coordination.InvalidURL) as info:
        coordination.connect("nosuch-without-scheme-sep:user:hunter2@h")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "etcd://h/ns?password=hunter2-secret#frag",  # a fragment
        "etcd:/h?token=hunter2-secret",  # no scheme separator
        "etcd://h?token=hunter2-secret&&=",  # a malformed query
        "etcd://h,,h2?password=hunter2-secret",  # an empty host
    ],
)
def test_no_option_value_in_url_errors(url: str) -> None:
    """An option may be a secret (a password, a token): URL errors show no option's value."""
    with pytest.raises(coordination.InvalidURL) as info:
        parse_url(url)
    assert "hunter2-secret" not in str(info.value)


def _ssl_error(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, f"[SSL: {reason}] ...")
    error.reason = reason
    return error


def test_a_refused_client_certificate_is_told_from_other_tls_errors() -> None:
    """The server's TLS alert refusing the client certificate, however deep in the chain of
    causes (aiohttp keeps it as ``os_error``), is named; the client's own verification
    failure of the server's certificate is not a refusal of ours."""
    wrapped = ConnectionError("handshake failed")
    wrapped.__cause__ = _ssl_error("TLSV13_ALERT_CERTIFICATE_REQUIRED")
    assert certificate_refusal(wrapped) == (
        "its alert 'certificate required' (TLSV13_ALERT_CERTIFICATE_REQUIRED)"
    )
    aiohttp_like = OSError("cannot connect")
    aiohttp_like.os_error = _ssl_error("TLSV1_ALERT_UNKNOWN_CA")  # type: ignore[attr-defined]
    assert certificate_refusal(aiohttp_like) == "its alert 'unknown ca' (TLSV1_ALERT_UNKNOWN_CA)"
    assert certificate_refusal(_ssl_error("CERTIFICATE_VERIFY_FAILED")) is None
    assert certificate_refusal(ConnectionRefusedError()) is None
    assert client_certificate({"cert_file": "/c.pem"}) == "the client certificate '/c.pem'"
    assert "'cert_file' option is not set" in client_certificate({"cert_file": None})


def test_credentials_and_tls_options() -> None:
    options = {"user": None, "password": None}
    assert credentials(parse_url("x://u:p@h"), options) == ("u", "p")
    assert credentials(parse_url("x://u:p@h"), {"user": "o", "password": None}) == ("o", None)
    assert credentials(parse_url("x://u:p@h"), {"user": None, "password": "o"}) == ("u", "o")
    with pytest.raises(coordination.InvalidURL, match="a password needs a user"):
        credentials(parse_url("x://:p@h"), options)
    assert ssl_context({"tls": False}) is None
    with pytest.raises(coordination.InvalidURL, match="option 'ca_file'"):
        ssl_context({"ca_file": "/nonexistent/ca.pem"})
    with pytest.raises(coordination.InvalidURL, match="'cert_file', 'key_file'"):
        ssl_context({"tls": True, "cert_file": "/nonexistent/c.pem"})
    with pytest.raises(coordination.InvalidURL, match="'key_file' needs 'cert_file'"):
        ssl_context({"key_file": "/nonexistent/k.pem"})  # even with TLS not turned on
    relaxed = ssl_context({"tls": True, "tls_verify": False})
    assert relaxed is not None
    assert not relaxed.check_hostname


def test_resolve_options_types_and_precedence() -> None:
    declared = {
        "n": Option(int, 1, "n", minimum=0),
        "f": Option(float, 1.0, "f"),
        "b": Option(bool, False, "b"),
        "s": Option(str, None, "s", secret=True),
    }
    values = resolve_options(declared, {"n": "3", "f": "2.5", "b": "yes", "s": "x"}, {"n": 4})
    assert values == {"n": 4, "f": 2.5, "b": True, "s": "x"}
    assert resolve_options(declared, {}, {"f": 2})["f"] == 2.0
    with pytest.raises(coordination.InvalidURL, match="'b'"):
        resolve_options(declared, {"b": "maybe"}, {})
    with pytest.raises(coordination.InvalidURL, match="'n' must be at least 0"):
        resolve_options(declared, {"n": "-1"}, {})
    with pytest.raises(coordination.InvalidURL) as info:
        resolve_options(declared, {}, {"s": 12345})
    assert "12345" not in str(info.value), "secret values are never shown"


def test_missing_backend_names_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coordination, "entry_points", lambda **_: importlib.metadata.EntryPoints(()))
    for scheme, package in (
        ("zk", "coordination-zookeeper"),
        ("zookeeper", "coordination-zookeeper"),
        ("etcd", "coordination-etcd"),
        ("consul", "coordination-consul"),
    ):
        with pytest.raises(coordination.BackendNotFound, match=f"pip install {package}"):
            coordination.connect(f"{scheme}://127.0.0.1:1")
    with pytest.raises(coordination.BackendNotFound, match=r"coordination\.backends"):
        coordination.connect("other://h")


def test_memory_backend_is_found_through_its_entry_point() -> None:
    (entry_point,) = importlib.metadata.entry_points(group="coordination.backends", name="memory")
    assert entry_point.load() is MemoryBackend


def test_register_and_unregister() -> None:
    class Custom(MemoryBackend):
        scheme = "custom"

    coordination.register("custom", Custom)
    try:
        assert coordination.connect("custom://x").backend == "custom"
    finally:
        coordination.unregister("custom")
    with pytest.raises(coordination.BackendNotFound):
        coordination.connect("custom://x")
    with pytest.raises(TypeError):
        coordination.register("bad", object)  # type: ignore[arg-type]


def test_connect_does_no_io_and_needs_no_event_loop() -> None:
    coord = coordination.connect("memory://no-loop?ttl=2", identity="me")
    assert (coord.backend, coord.ttl, coord.identity, coord.session_id) == ("memory", 2.0, "me", None)
    assert coord.state is coordination.SessionState.LOST


def test_memory_url_takes_a_store_name_only() -> None:
    with pytest.raises(coordination.InvalidURL, match="store name"):
        coordination.connect("memory://a:1")
    with pytest.raises(coordination.InvalidURL, match="store name"):
        coordination.connect("memory://a,b")


def test_core_imports_run_one_way() -> None:
    """__init__ -> _coordinator -> primitives -> _engine -> abc: no cycle, not even a lazy one."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "import-graph"
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no import cycles" in result.stdout, result.stdout
    edges = {line.split()[0]: line.partition("->")[2] for line in result.stdout.splitlines() if "->" in line}
    assert "coordination._coordinator" not in edges["coordination.primitives"]
    assert "coordination.primitives" not in edges["coordination._engine"]


def test_find_backend_is_public_and_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    assert coordination.find_backend("memory") is MemoryBackend
    assert coordination.find_backend("MEMORY") is MemoryBackend
    monkeypatch.setattr(coordination, "entry_points", lambda **_: importlib.metadata.EntryPoints(()))
    with pytest.raises(coordination.BackendNotFound, match="pip install coordination-etcd"):
        coordination.find_backend("etcd")


def test_connect_require_refuses_a_missing_capability_before_any_io() -> None:
    Capability = coordination.Capability
    assert coordination.connect("memory://r", require={Capability.FAIR}).backend == "memory"
    with pytest.raises(coordination.Unsupported, match=r"memory backend \(memory://\) lacks CROSS_PROCESS"):
        coordination.connect("memory://r", require={Capability.CROSS_PROCESS, Capability.FAIR})
    with pytest.raises(TypeError, match="Capability members"):
        coordination.connect("memory://r", require={"cross_process"})  # type: ignore[arg-type]


def test_the_memory_fallback_is_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("COORDINATION_URL", raising=False)
    coordination._default_url.cache_clear()
    with caplog.at_level("WARNING", logger="coordination"):
        assert coordination.connect().backend == "memory"
        assert coordination.connect().backend == "memory"
    warnings = [r.getMessage() for r in caplog.records if "COORDINATION_URL is not set" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "memory://" in warnings[0]
    monkeypatch.setenv("COORDINATION_URL", "memory://from-env")
    caplog.clear()
    with caplog.at_level("WARNING", logger="coordination"):
        assert coordination.connect().namespace == ""
    assert not caplog.records


def test_map_errors_takes_the_most_specific_match_whatever_the_order() -> None:
    from coordination.abc import map_errors

    class ClientError(Exception):
        pass

    class NoNode(ClientError):
        pass

    mapping = {ClientError: exceptions.Unavailable, NoNode: exceptions.SessionExpired}
    with pytest.raises(exceptions.SessionExpired) as info, map_errors(mapping):
        raise NoNode("gone")
    assert isinstance(info.value.__cause__, NoNode)
    with pytest.raises(exceptions.Unavailable), map_errors(mapping):
        raise ClientError("down")
    with pytest.raises(KeyError), map_errors(mapping):
        raise KeyError("not mapped: passes through")
    with pytest.raises(exceptions.NotHeld), map_errors(mapping):
        raise exceptions.NotHeld("ours: passes through")
