"""Real ZooKeeper, etcd and Consul servers for tests.

Each launcher runs one real server process on 127.0.0.1, on free ports, with its own
temporary directory (configuration, data and the server log). The binaries are put on the
machine by ``scripts/install-servers``; a missing one raises :class:`ServerNotInstalled`, so a
test suite that needs it fails instead of skipping.

Typical use::

    with EtcdProcess(version="3.5") as etcd:
        etcd.etcdctl("put", "k", "v")
        etcd.pause()      # SIGSTOP: the server stops answering, its sockets stay open
        etcd.resume()     # SIGCONT
        etcd.restart()    # stop, then start again on the same ports with the same data

Clusters (:class:`ZooKeeperEnsemble`, :class:`EtcdCluster`, :class:`ConsulCluster`) start three
such processes (and, for Consul, a client agent) as one cluster, with the same controls per
node::

    with EtcdCluster(version="3.4") as cluster:
        connect(cluster.url)                  # etcd://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3
        cluster.nodes[cluster.leader()].kill()
        cluster.leader()                      # waits until the others elected a new leader

Where the binaries are looked up (an environment variable always wins):

* ZooKeeper: ``COORDINATION_ZOOKEEPER_HOME`` (a folder holding ``zookeeper.jar``, as
  Debian's ``/usr/share/java``, or an upstream distribution with a ``lib/`` folder), else
  Debian's ``/usr/share/java``; ``java`` from ``JAVA_HOME`` or ``PATH``.
* etcd 3.4: ``COORDINATION_ETCD34``, else Debian's ``/usr/bin/etcd``.
* etcd 3.5: ``COORDINATION_ETCD35``, else the binary the install script built into the cache
  folder (``etcd-<version>/etcd``).
* ``etcdctl``: ``COORDINATION_ETCDCTL``, else Debian's ``/usr/bin/etcdctl``.
* Consul: ``COORDINATION_CONSUL``, else the binary the install script built into the cache
  folder (``consul-<version>/consul``), else ``consul`` on ``PATH``.

The cache folder is ``$COORDINATION_CACHE``, else ``$XDG_CACHE_HOME/coordination``, else
``~/.cache/coordination``: the same rule as in ``scripts/install-servers``.
"""

from __future__ import annotations

import abc
import atexit
import concurrent.futures
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Generic, Literal, Self, TypeVar

__all__ = [
    "CONSUL_VERSION",
    "ETCD35_VERSION",
    "ConsulCluster",
    "ConsulClusterMember",
    "ConsulProcess",
    "EtcdCluster",
    "EtcdClusterMember",
    "EtcdProcess",
    "ServerCluster",
    "ServerNotInstalled",
    "ServerProcess",
    "ServerStartError",
    "ZooKeeperEnsemble",
    "ZooKeeperEnsembleMember",
    "ZooKeeperProcess",
    "cache_dir",
    "find_consul",
    "find_etcd",
    "find_etcdctl",
    "find_java",
    "find_zookeeper_classpath",
    "free_port",
]

#: Consul release that ``scripts/install-servers`` builds first (keep the two in step).
CONSUL_VERSION = "1.22.5"
#: etcd 3.5 release that ``scripts/install-servers`` builds (keep the two in step). 3.5.11 and
#: later no longer let a stalled old leader revoke live leases when it runs again
#: (etcd-io/etcd#15247); 3.5.1 did, and gave a lock to two holders on a 3-member cluster.
ETCD35_VERSION = "3.5.35"

INSTALL_HINT = "run scripts/install-servers"
_DEBIAN_JAVA_DIR = Path("/usr/share/java")
_POLL_INTERVAL = 0.05


def wait_stopped(pid: int, timeout: float = 5.0) -> None:
    """Wait until every thread of process ``pid`` is stopped (after SIGSTOP).

    ``kill()`` returns before the signal has reached every thread; a test that pauses a
    server and then expects no answer must not race the threads still running. Reads
    ``/proc``; where there is none (not Linux) it returns at once."""
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        return
    deadline = time.monotonic() + timeout
    while True:
        running = []
        for stat in tasks.glob("*/stat"):
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                state = stat.read_text().rpartition(")")[2].split()[0]
                if state not in ("T", "t", "Z", "X"):
                    running.append(stat.parent.name)
        if not running:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid}: threads {running} still run {timeout:g}s after SIGSTOP")
        time.sleep(0.001)


class ServerNotInstalled(RuntimeError):
    """A server binary (or the runtime it needs) is not on this machine."""

    def __init__(self, what: str, looked_at: str = "") -> None:
        message = f"{what} is not installed"
        if looked_at:
            message += f" (looked at: {looked_at})"
        super().__init__(f"{message}; {INSTALL_HINT}")
        self.what = what


class ServerStartError(RuntimeError):
    """A server process died while starting or did not become ready in time."""


# --------------------------------------------------------------------------- locating binaries


def cache_dir() -> Path:
    """The folder, outside the repository, where the install script keeps what it built."""
    explicit = os.environ.get("COORDINATION_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "coordination"


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _from_env(variable: str, what: str) -> Path | None:
    value = os.environ.get(variable)
    if not value:
        return None
    path = Path(value)
    if not _executable(path):
        raise ServerNotInstalled(what, f"${variable}={value} is not an executable file")
    return path


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))


def find_java() -> Path:
    """The ``java`` launcher: ``$JAVA_HOME/bin/java``, else ``java`` on ``PATH``."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and _executable(Path(java_home, "bin", "java")):
        return Path(java_home, "bin", "java")
    found = shutil.which("java")
    if found:
        return Path(found)
    raise ServerNotInstalled("java (a JRE for ZooKeeper)", "$JAVA_HOME/bin/java, PATH")


def find_zookeeper_classpath() -> list[str]:
    """Class path entries to run a ZooKeeper server with.

    Debian's ``zookeeper.jar`` names its dependencies in its manifest, so the jar itself and
    an SLF4J binding (``slf4j-simple``, configured by system properties) are enough. An
    upstream binary distribution brings everything in its ``lib/`` folder.
    """
    home_env = os.environ.get("COORDINATION_ZOOKEEPER_HOME")
    home = Path(home_env) if home_env else _DEBIAN_JAVA_DIR
    if (home / "lib").is_dir() and any((home / "lib").glob("zookeeper-*.jar")):
        return [str(home / "lib" / "*")]
    jar = home / "zookeeper.jar"
    if jar.is_file():
        entries = [str(jar)]
        binding = home / "slf4j-simple.jar"
        if not binding.is_file():
            binding = _DEBIAN_JAVA_DIR / "slf4j-simple.jar"
        if binding.is_file():
            entries.append(str(binding))
        return entries
    where = f"$COORDINATION_ZOOKEEPER_HOME={home_env}" if home_env else str(jar)
    raise ServerNotInstalled("ZooKeeper (Debian package zookeeper)", where)


def find_etcd(version: Literal["3.4", "3.5"] = "3.5") -> Path:
    """The etcd server binary of the given minor version."""
    if version == "3.4":
        found = _from_env("COORDINATION_ETCD34", "etcd 3.4")
        if found:
            return found
        debian = Path("/usr/bin/etcd")
        if _executable(debian):
            return debian
        raise ServerNotInstalled("etcd 3.4 (Debian package etcd-server)", str(debian))
    if version != "3.5":
        raise ValueError(f"unsupported etcd version {version!r}: use '3.4' or '3.5'")
    found = _from_env("COORDINATION_ETCD35", "etcd 3.5")
    if found:
        return found
    cached = cache_dir() / f"etcd-{ETCD35_VERSION}" / "etcd"
    if _executable(cached):
        return cached
    raise ServerNotInstalled(f"etcd {ETCD35_VERSION} (built by the install script)", str(cached))


def find_etcdctl() -> Path:
    """Debian's ``etcdctl`` (3.4; it speaks API v3 to etcd 3.4 and 3.5 alike)."""
    found = _from_env("COORDINATION_ETCDCTL", "etcdctl")
    if found:
        return found
    debian = Path("/usr/bin/etcdctl")
    if _executable(debian):
        return debian
    raise ServerNotInstalled("etcdctl (Debian package etcd-client)", str(debian))


def find_consul() -> Path:
    """The Consul binary built by the install script (or given by ``COORDINATION_CONSUL``)."""
    found = _from_env("COORDINATION_CONSUL", "consul")
    if found:
        return found
    cache = cache_dir()
    preferred = cache / f"consul-{CONSUL_VERSION}" / "consul"
    if _executable(preferred):
        return preferred
    built = sorted(
        (path for path in cache.glob("consul-*/consul") if _executable(path)),
        key=_version_key,
        reverse=True,
    )
    if built:
        return built[0]
    on_path = shutil.which("consul")
    if on_path:
        return Path(on_path)
    raise ServerNotInstalled("consul (built from source)", f"{cache}/consul-*/consul, PATH")


# --------------------------------------------------------------------------- ports and processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return _free_ports(1)[0]


def _free_ports(count: int) -> list[int]:
    # Hold all the sockets open together so that one call never returns the same port twice.
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


_LIVE: dict[int, subprocess.Popen[bytes]] = {}


@atexit.register
def _kill_leftovers() -> None:
    # Last resort for servers whose owner never called stop()/close(): don't leave them behind.
    for proc in list(_LIVE.values()):
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
    _LIVE.clear()


def _http_get(url: str, timeout: float) -> tuple[int, bytes]:
    return _http_request("GET", url, None, timeout)


def _http_request(method: str, url: str, body: bytes | None, timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code), bytes(error.read())


def _environ_without(*prefixes: str) -> dict[str, str]:
    """This process's environment less the variables a server or its CLI would read as settings."""
    return {name: value for name, value in os.environ.items() if not name.startswith(prefixes)}


_ADDRESS_IN_USE = re.compile(rb"address already in use|BindException", re.IGNORECASE)


class ServerProcess(abc.ABC):
    """One real server process on 127.0.0.1 with a temporary folder for its data and log.

    The ports are chosen when the object is made and kept for its whole life, so ``url``
    is known before ``start()`` and stays the same across ``restart()``. The temporary
    folder is made by the first ``start()`` and removed by ``close()``.
    """

    #: Short name used for the temporary folder and in messages.
    name: ClassVar[str]
    #: URL scheme of the coordination SDK for this backend.
    scheme: ClassVar[str]

    def __init__(self, *, start_timeout: float = 60.0, stop_timeout: float = 10.0) -> None:
        self._host = "127.0.0.1"
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._last_pid: int | None = None
        self._paused = False
        self._base_dir: Path | None = None
        self._started_once = False
        self._allocate_ports()

    # ----------------------------------------------------------------- what subclasses provide

    @abc.abstractmethod
    def _allocate_ports(self) -> None:
        """Choose free ports for every listener of the server."""

    @abc.abstractmethod
    def _command(self) -> list[str]:
        """The command line; configuration files may be written here."""

    @abc.abstractmethod
    def _is_ready(self, timeout: float) -> bool:
        """Whether the server answers at the protocol level (may raise OSError)."""

    @property
    @abc.abstractmethod
    def port(self) -> int:
        """The client port."""

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    # ----------------------------------------------------------------- properties

    @property
    def host(self) -> str:
        return self._host

    @property
    def url(self) -> str:
        """URL of this server for the coordination SDK, e.g. ``etcd://127.0.0.1:PORT``."""
        return f"{self.scheme}://{self._host}:{self.port}"

    @property
    def address(self) -> str:
        """``host:port`` of the client port."""
        return f"{self._host}:{self.port}"

    @property
    def pid(self) -> int:
        """Process id of the running (or last started) server process."""
        if self._last_pid is None:
            raise RuntimeError(f"{self.name} server was never started")
        return self._last_pid

    @property
    def running(self) -> bool:
        """Whether the server process exists (it may be paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused and self.running

    @property
    def base_dir(self) -> Path:
        """Temporary folder holding configuration, data and log (made on first access)."""
        if self._base_dir is None:
            self._base_dir = Path(tempfile.mkdtemp(prefix=f"coordination-{self.name}-"))
        return self._base_dir

    @property
    def data_dir(self) -> Path:
        path = self.base_dir / "data"
        path.mkdir(exist_ok=True)
        return path

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr, across all starts."""
        return self.base_dir / "server.log"

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                size = log.tell()
                log.seek(max(0, size - 16384))
                text = log.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # ----------------------------------------------------------------- life cycle

    def start(self) -> Self:
        """Spawn the server and wait until it answers at the protocol level.

        Raises :class:`ServerNotInstalled` if the binary is missing and
        :class:`ServerStartError` (with the tail of the log) if the process dies or is not
        ready within ``start_timeout`` seconds.
        """
        if self.running:
            raise RuntimeError(f"{self.name} server is already running (pid {self.pid})")
        attempts = 1 if self._started_once else 3
        for attempt in range(attempts):
            try:
                self._spawn_and_wait()
            except ServerStartError:
                # The ports were free when chosen, but something else may have taken one since:
                # on a first start only, choose new ports and try again.
                if attempt + 1 < attempts and self._lost_port_race():
                    self._allocate_ports()
                    continue
                raise
            self._started_once = True
            return self
        raise AssertionError("unreachable")

    def _lost_port_race(self) -> bool:
        return bool(_ADDRESS_IN_USE.search(self.log_tail(80).encode()))

    def _spawn_and_wait(self) -> None:
        command = self._command()
        with self.log_path.open("ab") as log:
            log.write(f"=== coordination: starting {' '.join(command)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                env=self._env(),
                start_new_session=True,
            )
        self._proc = proc
        self._last_pid = proc.pid
        self._paused = False
        _LIVE[proc.pid] = proc
        try:
            self.wait_ready(self.start_timeout)
        except BaseException:
            self.kill()
            raise

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the running server answers (e.g. after ``resume()``)."""
        proc = self._proc
        if proc is None:
            raise RuntimeError(f"{self.name} server is not started")
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        last_error: BaseException | None = None
        while True:
            code = proc.poll()
            if code is not None:
                raise ServerStartError(
                    f"{self.name} server exited with code {code} while starting; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            remaining = deadline - time.monotonic()
            try:
                if self._is_ready(max(0.1, min(2.0, remaining))):
                    return
            except (OSError, ValueError, http.client.HTTPException) as error:
                last_error = error
            if time.monotonic() >= deadline:
                detail = f" (last error: {last_error!r})" if last_error else ""
                raise ServerStartError(
                    f"{self.name} server on {self.address} not ready after {timeout or self.start_timeout}"
                    f" s{detail}; log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL)

    def _signal(self, signum: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError(f"{self.name} server is not running")
        self._proc.send_signal(signum)

    def stop(self) -> int | None:
        """SIGTERM, wait up to ``stop_timeout`` seconds, then SIGKILL. Returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
                if self._paused:
                    proc.send_signal(signal.SIGCONT)  # a stopped process can't act on SIGTERM
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        return self._reap()

    def kill(self) -> int | None:
        """SIGKILL the server (no clean shutdown) and reap it. Returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        return self._reap()

    def _reap(self) -> int | None:
        proc = self._proc
        self._proc = None
        self._paused = False
        if proc is None:
            return None
        _LIVE.pop(proc.pid, None)
        return proc.returncode

    def pause(self) -> None:
        """SIGSTOP: the server freezes; its sockets stay open but nothing is answered.

        Returns once every thread of the server has stopped (a signal is delivered
        asynchronously: a thread on the other core could still answer a request)."""
        self._signal(signal.SIGSTOP)
        self._paused = True
        assert self._proc is not None
        wait_stopped(self._proc.pid)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self._signal(signal.SIGCONT)
        self._paused = False

    def restart(self, *, graceful: bool = True) -> Self:
        """Stop (or, with ``graceful=False``, kill) and start again on the same ports and data."""
        if graceful:
            self.stop()
        else:
            self.kill()
        return self.start()

    def close(self) -> None:
        """Stop the server and remove its temporary folder."""
        self.stop()
        if self._base_dir is not None:
            shutil.rmtree(self._base_dir, ignore_errors=True)
            self._base_dir = None

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.url} {state}>"


# --------------------------------------------------------------------------- ZooKeeper


class ZooKeeperProcess(ServerProcess):
    """A standalone ZooKeeper 3.8 server started straight from the jars (no systemd, no /etc).

    ``tick_time_ms`` is short so that short sessions are allowed: ZooKeeper grants session
    timeouts between ``min_session_timeout_ms`` (default ``2 * tick_time_ms``) and
    ``max_session_timeout_ms``. All four-letter words are whitelisted and the admin server is
    off. Fsync is off (data still survives a killed process, not a machine crash).
    """

    name = "zookeeper"
    scheme = "zookeeper"

    def __init__(
        self,
        tick_time_ms: int = 200,
        *,
        min_session_timeout_ms: int | None = None,
        max_session_timeout_ms: int = 60_000,
        heap: str = "256m",
        start_timeout: float = 60.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.tick_time_ms = tick_time_ms
        self.min_session_timeout_ms = min_session_timeout_ms or 2 * tick_time_ms
        self.max_session_timeout_ms = max(max_session_timeout_ms, self.min_session_timeout_ms)
        self.heap = heap
        self._client_port = 0
        super().__init__(start_timeout=start_timeout, stop_timeout=stop_timeout)

    def _allocate_ports(self) -> None:
        self._client_port = free_port()

    @property
    def port(self) -> int:
        return self._client_port

    #: The Java class that runs the server (an ensemble member runs ``QuorumPeerMain``).
    _main_class: ClassVar[str] = "org.apache.zookeeper.server.ZooKeeperServerMain"

    def _config_lines(self) -> list[str]:
        """The lines of ``zoo.cfg``."""
        return [
            f"tickTime={self.tick_time_ms}",
            f"minSessionTimeout={self.min_session_timeout_ms}",
            f"maxSessionTimeout={self.max_session_timeout_ms}",
            f"dataDir={self.data_dir}",
            f"clientPort={self._client_port}",
            f"clientPortAddress={self._host}",
            "maxClientCnxns=0",
            "4lw.commands.whitelist=*",
            "admin.enableServer=false",
            "forceSync=no",
            "preAllocSize=1024",
        ]

    def _jvm_options(self) -> list[str]:
        """Extra ``-D`` options for the server's JVM."""
        return []

    def _command(self) -> list[str]:
        java = find_java()
        classpath = find_zookeeper_classpath()
        config = self.base_dir / "zoo.cfg"
        config.write_text("\n".join([*self._config_lines(), ""]))
        # Logging: slf4j-simple (Debian) is set with system properties; an upstream
        # distribution's logback reads the file below.
        logback = self.base_dir / "logback.xml"
        logback.write_text(
            '<configuration>\n  <appender name="OUT" class="ch.qos.logback.core.ConsoleAppender">\n'
            "    <encoder><pattern>%d{ISO8601} %-5level [%thread] %logger{0} - %msg%n</pattern></encoder>\n"
            '  </appender>\n  <root level="INFO"><appender-ref ref="OUT"/></root>\n</configuration>\n'
        )
        return [
            str(java),
            f"-Xmx{self.heap}",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.net.preferIPv4Stack=true",
            f"-Dzookeeper.log.dir={self.base_dir}",
            "-Dzookeeper.4lw.commands.whitelist=*",
            "-Dzookeeper.admin.enableServer=false",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSS",
            f"-Dlogback.configurationFile={logback}",
            *self._jvm_options(),
            "-cp",
            os.pathsep.join(classpath),
            self._main_class,
            str(config),
        ]

    def four_letter_word(self, word: str, timeout: float = 5.0) -> str:
        """Send a four-letter word (``ruok``, ``srvr``, ``mntr``, ``cons``...) and return the answer."""
        if len(word) != 4:
            raise ValueError(f"not a four-letter word: {word!r}")
        with socket.create_connection((self._host, self._client_port), timeout=timeout) as sock:
            sock.sendall(word.encode("ascii"))
            chunks: list[bytes] = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")

    def zkcli(
        self, *args: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run one ZooKeeper CLI command (``create /a x``, ``get /a``, ``ls /``...) against this server.

        This is ``org.apache.zookeeper.ZooKeeperMain`` from the same jars (about 0.5 s of JVM
        start per call); the command's own output is the last line(s) of ``stdout``.
        """
        command = [
            str(find_java()),
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.net.preferIPv4Stack=true",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            "-cp",
            os.pathsep.join(find_zookeeper_classpath()),
            "org.apache.zookeeper.ZooKeeperMain",
            "-server",
            self.address,
            *args,
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=check)

    def _is_ready(self, timeout: float) -> bool:
        if self.four_letter_word("ruok", timeout) != "imok":
            return False
        return "Mode: standalone" in self.four_letter_word("srvr", timeout)


# --------------------------------------------------------------------------- etcd


class EtcdProcess(ServerProcess):
    """A single-member etcd cluster: 3.4 from Debian or 3.5 built by the install script.

    Heartbeat and election timeout are short (50 ms / 500 ms by default), which makes a
    restarted member elect itself fast and lets etcd grant leases as short as 1 s (its
    minimum lease TTL is 1.5 election timeouts, rounded up to whole seconds).
    """

    name = "etcd"
    scheme = "etcd"

    def __init__(
        self,
        version: Literal["3.4", "3.5"] = "3.5",
        *,
        heartbeat_interval_ms: int = 50,
        election_timeout_ms: int = 500,
        start_timeout: float = 60.0,
        stop_timeout: float = 10.0,
    ) -> None:
        if version not in ("3.4", "3.5"):
            raise ValueError(f"unsupported etcd version {version!r}: use '3.4' or '3.5'")
        self.version: Literal["3.4", "3.5"] = version
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.election_timeout_ms = election_timeout_ms
        self._client_port = 0
        self._peer_port = 0
        super().__init__(start_timeout=start_timeout, stop_timeout=stop_timeout)

    def _allocate_ports(self) -> None:
        self._client_port, self._peer_port = _free_ports(2)

    @property
    def port(self) -> int:
        return self._client_port

    @property
    def peer_port(self) -> int:
        return self._peer_port

    @property
    def client_url(self) -> str:
        """``http://127.0.0.1:PORT``, as etcd's own clients want it."""
        return f"http://{self._host}:{self._client_port}"

    @property
    def peer_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the peer (Raft) listener."""
        return f"http://{self._host}:{self._peer_port}"

    @property
    def member_name(self) -> str:
        """The etcd member name (``--name``)."""
        return "coordination-test"

    def _initial_cluster(self) -> str:
        return f"{self.member_name}={self.peer_url}"

    def _cluster_token(self) -> str:
        return f"coordination-{self._peer_port}"

    def _command(self) -> list[str]:
        binary = find_etcd(self.version)
        command = [
            str(binary),
            "--name",
            self.member_name,
            "--data-dir",
            str(self.data_dir / "etcd"),
            "--listen-client-urls",
            self.client_url,
            "--advertise-client-urls",
            self.client_url,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            self._initial_cluster(),
            # "new" is also right on a restart: etcd ignores the --initial-* flags once its data
            # folder holds a member.
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            self._cluster_token(),
            "--heartbeat-interval",
            str(self.heartbeat_interval_ms),
            "--election-timeout",
            str(self.election_timeout_ms),
            # etcd 3.4 defaults to the deprecated capnslog logger and warns about it.
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]
        if self.version == "3.5":
            command.append("--unsafe-no-fsync")  # a test server: speed over crash safety
        return command

    def _env(self) -> dict[str, str]:
        # etcd reads every ETCD_<FLAG> variable as a flag: keep a developer's shell out of it.
        return _environ_without("ETCD_", "ETCDCTL_")

    def _is_ready(self, timeout: float) -> bool:
        status, body = _http_get(f"{self.client_url}/health", timeout)
        if status != 200:
            return False
        health: Any = json.loads(body)
        # 3.4 and 3.5 both answer {"health":"true"} (3.5 adds "reason").
        return isinstance(health, dict) and health.get("health") == "true"

    def etcdctl_env(self) -> dict[str, str]:
        """Environment variables that point ``etcdctl`` (API v3) at this server."""
        return {"ETCDCTL_API": "3", "ETCDCTL_ENDPOINTS": self.client_url}

    def etcdctl(
        self, *args: str, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run Debian's ``etcdctl`` (API v3) against this server and return the finished process."""
        env = _environ_without("ETCD_", "ETCDCTL_")
        env.update(self.etcdctl_env())
        return subprocess.run(
            [str(find_etcdctl()), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )


# --------------------------------------------------------------------------- Consul


class ConsulProcess(ServerProcess):
    """``consul agent -dev`` on 127.0.0.1: a one-node server cluster, kept in memory.

    HTTP, serf LAN, serf WAN and server RPC listen on free ports; DNS, gRPC and gRPC-TLS are
    off. ``session_ttl_min`` is lowered (default ``"1s"``) so that session expiry tests are
    fast. Connect (service mesh) is off, which makes startup quicker.

    Because ``-dev`` keeps everything in memory, **restart() brings back an empty server**
    (same ports, no keys, no sessions). With ``persistent=True`` the agent is instead a
    one-node server (``-server -bootstrap-expect=1``) that keeps its Raft log and snapshots
    in its data folder, so that a kill and restart keeps every key, session and index, as a
    real cluster does (it starts in about two seconds instead of one).
    """

    name = "consul"
    scheme = "consul"

    def __init__(
        self,
        session_ttl_min: str = "1s",
        *,
        node_name: str = "coordination-test",
        persistent: bool = False,
        start_timeout: float = 60.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.session_ttl_min = session_ttl_min
        self.node_name = node_name
        self.persistent = persistent
        self._http_port = self._serf_lan_port = self._serf_wan_port = self._server_port = 0
        super().__init__(start_timeout=start_timeout, stop_timeout=stop_timeout)

    def _allocate_ports(self) -> None:
        self._http_port, self._serf_lan_port, self._serf_wan_port, self._server_port = _free_ports(4)

    @property
    def port(self) -> int:
        return self._http_port

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the HTTP API."""
        return f"http://{self._host}:{self._http_port}"

    def _config(self) -> dict[str, Any]:
        """The agent's configuration (written as JSON); subclasses may add to it (ACLs, TLS)."""
        return {
            "node_name": self.node_name,
            "bind_addr": self._host,
            "client_addr": self._host,
            "advertise_addr": self._host,
            "ports": {
                "http": self._http_port,
                "https": -1,
                "dns": -1,
                "grpc": -1,
                "grpc_tls": -1,
                "serf_lan": self._serf_lan_port,
                "serf_wan": self._serf_wan_port,
                "server": self._server_port,
            },
            "session_ttl_min": self.session_ttl_min,
            "disable_update_check": True,
            "connect": {"enabled": False},
            "ui_config": {"enabled": False},
            "log_level": "INFO",
            **self._persistence(),
        }

    def _command(self) -> list[str]:
        binary = find_consul()
        config = self.base_dir / "consul.json"
        config.write_text(json.dumps(self._config(), indent=2))
        mode = [] if self.persistent else ["-dev"]
        return [str(binary), "agent", *mode, "-config-file", str(config)]

    def _persistence(self) -> dict[str, Any]:
        if not self.persistent:
            return {}
        return {
            "server": True,
            "bootstrap_expect": 1,
            "data_dir": str(self.data_dir / "consul"),
            # Raft timing as -dev has it (the production default is 5 times slower).
            "performance": {"raft_multiplier": 1},
        }

    def _env(self) -> dict[str, str]:
        return _environ_without("CONSUL_")  # e.g. CONSUL_HTTP_TOKEN from a developer's shell

    def _is_ready(self, timeout: float) -> bool:
        status, body = _http_get(f"{self.http_url}/v1/status/leader", timeout)
        if status != 200 or not json.loads(body):
            return False
        # Sessions need the node registered with a passing serfHealth check.
        node = urllib.parse.quote(self.node_name)
        status, body = _http_get(f"{self.http_url}/v1/health/node/{node}", timeout)
        if status != 200:
            return False
        checks: Any = json.loads(body)
        return isinstance(checks, list) and any(
            isinstance(check, dict)
            and check.get("CheckID") == "serfHealth"
            and check.get("Status") == "passing"
            for check in checks
        )

    def consul_env(self) -> dict[str, str]:
        """Environment variables that point the ``consul`` CLI at this agent."""
        return {"CONSUL_HTTP_ADDR": self.address}

    def consul(
        self, *args: str, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the ``consul`` CLI against this agent and return the finished process."""
        env = self._env()
        env.update(self.consul_env())
        return subprocess.run(
            [str(find_consul()), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )


# --------------------------------------------------------------------------- clusters

_Node = TypeVar("_Node", bound="ServerProcess")


def _log_says_port_in_use(server: ServerProcess) -> bool:
    return bool(_ADDRESS_IN_USE.search(server.log_tail(80).encode()))


class _ClusterMember(ServerProcess):
    """A server process that is one member of a :class:`ServerCluster`.

    Its ports are chosen by the cluster for all members at once (every member's configuration
    names the others' ports), so a member never picks new ports on its own: when a first start
    loses a port race the cluster starts all over on new ports.
    """

    #: How many ports the member listens on.
    _port_count: ClassVar[int]

    def _allocate_ports(self) -> None:
        self._use_ports(_free_ports(self._port_count))

    @abc.abstractmethod
    def _use_ports(self, ports: Sequence[int]) -> None:
        """Take ``_port_count`` ports for the member's listeners."""

    def _lost_port_race(self) -> bool:
        return False  # the cluster decides, see ServerCluster.start()


class ServerCluster(abc.ABC, Generic[_Node]):
    """N server processes forming one cluster on loopback (3 by default).

    ``nodes`` are the servers (the index is the node number); each supports the controls of
    :class:`ServerProcess` (``kill()``, ``pause()``, ``resume()``, ``stop()``, ``start()``,
    ``restart(graceful=...)``) and keeps its ports and data across them. ``clients`` are
    client-only agents (a Consul client agent), ``[]`` for the other backends. ``url`` lists
    every endpoint, for the coordination SDK::

        with EtcdCluster() as cluster:
            old = cluster.leader()
            cluster.nodes[old].kill()
            new = cluster.leader()              # another node, once the others elected it
            cluster.restart_node(old)           # same data and ports; waits until it rejoined
    """

    #: Short name used in messages.
    name: ClassVar[str]
    #: URL scheme of the coordination SDK for this backend.
    scheme: ClassVar[str]

    def __init__(self, *, start_timeout: float = 90.0, stop_timeout: float = 10.0) -> None:
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.nodes: list[_Node] = []
        self.clients: list[_Node] = []
        #: Seconds the last :meth:`start` took, until the cluster served.
        self.startup_seconds: float | None = None

    # ----------------------------------------------------------------- what subclasses provide

    @abc.abstractmethod
    def _find_leader(self, timeout: float) -> int | None:
        """One look (no waiting): the index of the node that leads with a quorum behind it."""

    # ----------------------------------------------------------------- properties

    @property
    def members(self) -> list[_Node]:
        """Every process of the cluster: the nodes, then the client agents."""
        return [*self.nodes, *self.clients]

    @property
    def endpoints(self) -> list[_Node]:
        """The processes the SDK may talk to, in URL order: client agents first, then the nodes."""
        return [*self.clients, *self.nodes]

    @property
    def url(self) -> str:
        """URL of the whole cluster for the SDK, e.g. ``etcd://127.0.0.1:P1,127.0.0.1:P2,...``."""
        return f"{self.scheme}://" + ",".join(endpoint.address for endpoint in self.endpoints)

    @property
    def quorum(self) -> int:
        """How many nodes make a majority."""
        return len(self.nodes) // 2 + 1

    @property
    def running(self) -> bool:
        """Whether any process of the cluster runs."""
        return any(member.running for member in self.members)

    def node_index(self, port: int) -> int:
        """Index in ``nodes`` of the node whose client-facing port is ``port`` (ValueError if none)."""
        for index, node in enumerate(self.nodes):
            if node.port == port:
                return index
        raise ValueError(f"no {self.name} node listens for clients on port {port}")

    def endpoint(self, port: int) -> _Node:
        """The node or client agent whose client-facing port is ``port`` (ValueError if none)."""
        for member in self.endpoints:
            if member.port == port:
                return member
        raise ValueError(f"no {self.name} endpoint listens on port {port}")

    def _answering(self) -> list[tuple[int, _Node]]:
        return [(index, node) for index, node in enumerate(self.nodes) if node.running and not node.paused]

    def _agreed_leader(self, views: dict[int, int | None]) -> int | None:
        """The node that names itself leader and that a quorum of the answering nodes name too."""
        for candidate in {view for view in views.values() if view is not None}:
            if views.get(candidate) != candidate:
                continue
            if sum(1 for view in views.values() if view == candidate) >= self.quorum:
                return candidate
        return None

    def describe(self) -> str:
        """One line per process: its state (for failure messages)."""
        return "; ".join(repr(member) for member in self.members)

    # ----------------------------------------------------------------- life cycle

    def start(self) -> Self:
        """Start every process (in threads, together) and wait until the cluster serves.

        The cluster serves when a leader is elected and every endpoint answers. Raises
        :class:`ServerNotInstalled` if a binary is missing and :class:`ServerStartError` (with
        the log of the process that failed) otherwise.
        """
        if self.running:
            raise RuntimeError(f"{self.name} cluster is already running: {self.describe()}")
        began = time.monotonic()
        attempts = 3
        for attempt in range(attempts):
            try:
                self._start_members(self.members)
                break
            except ServerStartError:
                lost_race = any(_log_says_port_in_use(member) for member in self.members)
                self._halt(graceful=False)
                if attempt + 1 < attempts and lost_race:
                    # A port was taken between choosing and binding: start over on new ports,
                    # with empty data folders (they would name the old ports).
                    for member in self.members:
                        member.close()
                    self._allocate_ports()
                    continue
                raise
            except BaseException:
                self._halt(graceful=False)
                raise
        remaining = self.start_timeout - (time.monotonic() - began)
        try:
            self.wait_healthy(max(1.0, remaining))
        except BaseException:
            self._halt(graceful=False)
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _allocate_ports(self) -> None:
        """Choose the ports of all members in one go, so that no two members get the same one."""
        members: list[Any] = self.members  # all are _ClusterMember
        ports = _free_ports(sum(member._port_count for member in members))
        for member in members:
            count = member._port_count
            member._use_ports(ports[:count])
            ports = ports[count:]

    def _start_members(self, members: Sequence[_Node]) -> None:
        pending = [member for member in members if not member.running]
        if not pending:
            return
        with concurrent.futures.ThreadPoolExecutor(len(pending), thread_name_prefix=self.name) as pool:
            futures = [pool.submit(member.start) for member in pending]
            done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
            failed = [future for future in done if future.exception() is not None]
            if failed:
                # The others may be waiting for a quorum that will never form: end their wait.
                for member in pending:
                    member.kill()
                concurrent.futures.wait(futures)
                error = failed[0].exception()
                assert error is not None
                raise error

    def _halt(self, *, graceful: bool) -> None:
        running = [member for member in self.members if member.running]
        if not running:
            return
        with concurrent.futures.ThreadPoolExecutor(len(running)) as pool:
            for future in [pool.submit(member.stop if graceful else member.kill) for member in running]:
                future.result()

    def stop(self) -> None:
        """Stop every process (SIGTERM, all together), keeping data; ``start()`` brings them back."""
        self._halt(graceful=True)

    def close(self) -> None:
        """Kill every process (their data is thrown away: no need for a clean shutdown, which
        takes seconds when all members go together) and remove the temporary folders."""
        self._halt(graceful=False)
        for member in self.members:
            member.close()

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    # ----------------------------------------------------------------- leader and health

    def leader(self, timeout: float = 30.0) -> int:
        """Index in ``nodes`` of the current leader.

        Polls until one running (not paused) node leads and a quorum of nodes agree; raises
        :class:`TimeoutError` after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            found = self._find_leader(max(0.2, min(1.0, remaining)))
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no {self.name} leader after {timeout} s: {self.describe()}")
            time.sleep(_POLL_INTERVAL)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Wait until a leader exists and every running, not paused process answers as a member."""
        deadline = time.monotonic() + timeout
        self.leader(timeout)
        for member in self.endpoints:
            if member.running and not member.paused:
                member.wait_ready(max(0.5, deadline - time.monotonic()))

    def restart_node(self, index: int, *, graceful: bool = True) -> None:
        """Restart node ``index`` (kill first with ``graceful=False``) with its data and ports.

        Returns once the node has rejoined (it answers as a follower or the leader) and the
        cluster has a leader.
        """
        node = self.nodes[index]
        began = time.monotonic()
        node.restart(graceful=graceful)
        self.leader(max(1.0, self.start_timeout - (time.monotonic() - began)))


# ----------------------------------------------------------------- ZooKeeper ensemble


class ZooKeeperEnsembleMember(_ClusterMember, ZooKeeperProcess):
    """One server of a :class:`ZooKeeperEnsemble` (``QuorumPeerMain``, ``myid`` = index + 1).

    It is ready when it serves as ``leader`` or ``follower`` (a node still electing answers
    ``srvr`` with "not currently serving requests").
    """

    _main_class = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
    _port_count = 3

    def __init__(self, ensemble: ZooKeeperEnsemble, index: int, **options: Any) -> None:
        self.ensemble = ensemble
        self.index = index
        self.peer_port = self.election_port = 0
        super().__init__(**options)

    @property
    def myid(self) -> int:
        return self.index + 1

    def _use_ports(self, ports: Sequence[int]) -> None:
        self._client_port, self.peer_port, self.election_port = ports

    def _config_lines(self) -> list[str]:
        return [
            *super()._config_lines(),
            f"initLimit={self.ensemble.init_limit}",
            f"syncLimit={self.ensemble.sync_limit}",
            "reconfigEnabled=false",
            *(
                f"server.{node.myid}={self._host}:{node.peer_port}:{node.election_port}"
                for node in self.ensemble.nodes
            ),
        ]

    def _jvm_options(self) -> list[str]:
        return [
            # Give up on a peer's election port after 1 s (default 5 s: a paused peer's kernel
            # still accepts the connection) and never back off more than 1 s between rounds.
            "-Dzookeeper.cnxTimeout=1000",
            "-Dzookeeper.fastleader.maxNotificationInterval=1000",
        ]

    def _command(self) -> list[str]:
        (self.data_dir / "myid").write_text(f"{self.myid}\n")
        return super()._command()

    def mode(self, timeout: float = 5.0) -> str:
        """``leader`` or ``follower`` (from ``srvr``), or ``""`` while the node is not serving."""
        match = re.search(r"^Mode: (\w+)", self.four_letter_word("srvr", timeout), re.MULTILINE)
        return match.group(1) if match else ""

    def _is_ready(self, timeout: float) -> bool:
        if self.four_letter_word("ruok", timeout) != "imok":
            return False
        return self.mode(timeout) in ("leader", "follower")


class ZooKeeperEnsemble(ServerCluster[ZooKeeperEnsembleMember]):
    """A replicated ZooKeeper 3.8 ensemble of ``size`` servers (3 by default) on loopback.

    ``tick_time_ms`` is short (100 ms) so that sessions as short as ``2 * tick_time_ms`` are
    allowed and elections are quick; ``init_limit`` and ``sync_limit`` are in ticks. Each
    member is a :class:`ZooKeeperEnsembleMember` (with ``zkcli()`` and ``four_letter_word()``).
    The leader is the node whose ``srvr`` says ``Mode: leader`` and whose ``mntr`` counts
    enough synced followers for a quorum.
    """

    name = "zookeeper"
    scheme = "zookeeper"

    def __init__(
        self,
        size: int = 3,
        tick_time_ms: int = 100,
        *,
        init_limit: int = 30,
        sync_limit: int = 10,
        min_session_timeout_ms: int | None = None,
        max_session_timeout_ms: int = 60_000,
        heap: str = "128m",
        start_timeout: float = 90.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.init_limit = init_limit
        self.sync_limit = sync_limit
        self.nodes = [
            ZooKeeperEnsembleMember(
                self,
                index,
                tick_time_ms=tick_time_ms,
                min_session_timeout_ms=min_session_timeout_ms,
                max_session_timeout_ms=max_session_timeout_ms,
                heap=heap,
                start_timeout=start_timeout,
                stop_timeout=stop_timeout,
            )
            for index in range(size)
        ]
        self._allocate_ports()

    def _find_leader(self, timeout: float) -> int | None:
        for index, node in self._answering():
            try:
                if node.mode(timeout) != "leader":
                    continue
                mntr = node.four_letter_word("mntr", timeout)
            except OSError:
                continue
            match = re.search(r"^zk_synced_followers\s+(\d+)", mntr, re.MULTILINE)
            if match and int(match.group(1)) + 1 >= self.quorum:
                return index
        return None


# ----------------------------------------------------------------- etcd cluster


class EtcdClusterMember(_ClusterMember, EtcdProcess):
    """One member (``node<index>``) of an :class:`EtcdCluster`; ready once it sees a leader."""

    _port_count = 2

    def __init__(self, cluster: EtcdCluster, index: int, **options: Any) -> None:
        self.cluster = cluster
        self.index = index
        super().__init__(**options)

    def _use_ports(self, ports: Sequence[int]) -> None:
        self._client_port, self._peer_port = ports

    @property
    def member_name(self) -> str:
        return f"node{self.index}"

    def _initial_cluster(self) -> str:
        return ",".join(f"{node.member_name}={node.peer_url}" for node in self.cluster.nodes)

    def _cluster_token(self) -> str:
        return f"coordination-{self.cluster.nodes[0].peer_port}"

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        """The member's maintenance status (gRPC gateway ``POST /v3/maintenance/status``).

        Keys include ``header.member_id``, ``leader`` (member ids as decimal strings),
        ``raftTerm`` and ``version``.
        """
        code, body = _http_request("POST", f"{self.client_url}/v3/maintenance/status", b"{}", timeout)
        if code != 200:
            raise OSError(f"etcd {self.member_name} status: HTTP {code}: {body[:200]!r}")
        status: Any = json.loads(body)
        if not isinstance(status, dict):
            raise ValueError(f"etcd {self.member_name} status: not an object: {body[:200]!r}")
        return status


class EtcdCluster(ServerCluster[EtcdClusterMember]):
    """An etcd cluster of ``size`` members (3 by default), etcd 3.5 or 3.4, on loopback.

    All members are listed in ``--initial-cluster``; a restarted member finds its membership
    in its data folder. Heartbeat and election timeout are short (50 ms / 500 ms). The leader
    is read from each member's maintenance status.
    """

    name = "etcd"
    scheme = "etcd"

    def __init__(
        self,
        size: int = 3,
        version: Literal["3.4", "3.5"] = "3.5",
        *,
        heartbeat_interval_ms: int = 50,
        election_timeout_ms: int = 500,
        start_timeout: float = 90.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.version: Literal["3.4", "3.5"] = version
        self.nodes = [
            EtcdClusterMember(
                self,
                index,
                version=version,
                heartbeat_interval_ms=heartbeat_interval_ms,
                election_timeout_ms=election_timeout_ms,
                start_timeout=start_timeout,
                stop_timeout=stop_timeout,
            )
            for index in range(size)
        ]
        self._allocate_ports()

    @property
    def client_urls(self) -> str:
        """``http://127.0.0.1:P1,http://...`` of every member, as ``etcdctl --endpoints`` wants it."""
        return ",".join(node.client_url for node in self.nodes)

    def _find_leader(self, timeout: float) -> int | None:
        leaders: dict[int, str] = {}
        index_of: dict[str, int] = {}
        for index, node in self._answering():
            try:
                status = node.status(timeout)
                index_of[str(status["header"]["member_id"])] = index
                leaders[index] = str(status.get("leader", "0"))
            except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException):
                continue
        return self._agreed_leader({index: index_of.get(leader) for index, leader in leaders.items()})


# ----------------------------------------------------------------- Consul cluster


class ConsulClusterMember(_ClusterMember, ConsulProcess):
    """A Consul agent of a :class:`ConsulCluster`: a server (``server<index>``) or a client agent
    (``client<index>``), always with a data folder kept across restarts."""

    _port_count = 4

    def __init__(
        self,
        cluster: ConsulCluster,
        index: int,
        *,
        server: bool,
        leave_on_terminate: bool = False,
        **options: Any,
    ) -> None:
        self.cluster = cluster
        self.index = index
        self.server = server
        self.leave_on_terminate = leave_on_terminate
        kind = "server" if server else "client"
        super().__init__(node_name=f"{kind}{index}", persistent=True, **options)

    def _use_ports(self, ports: Sequence[int]) -> None:
        self._http_port, self._serf_lan_port, self._serf_wan_port, self._server_port = ports

    @property
    def serf_lan_address(self) -> str:
        """``host:port`` of the gossip (serf LAN) listener."""
        return f"{self._host}:{self._serf_lan_port}"

    @property
    def server_address(self) -> str:
        """``host:port`` of the server RPC listener, as ``/v1/status/leader`` names a server."""
        return f"{self._host}:{self._server_port}"

    def _persistence(self) -> dict[str, Any]:
        joins = [node.serf_lan_address for node in self.cluster.nodes if node is not self]
        common: dict[str, Any] = {
            "retry_join": joins,
            "retry_interval": "1s",  # the default (30 s) is long when peers start together
            "leave_on_terminate": self.leave_on_terminate,
            "skip_leave_on_interrupt": not self.leave_on_terminate,
        }
        if not self.server:
            return {"server": False, "data_dir": str(self.data_dir / "consul"), **common}
        return {
            **super()._persistence(),
            "bootstrap_expect": len(self.cluster.nodes),
            # Autopilot would remove a killed server from the Raft configuration; keep it a voter
            # so that it rejoins as one when restarted.
            "autopilot": {"cleanup_dead_servers": False},
            **common,
        }

    def leader_address(self, timeout: float = 5.0) -> str:
        """``/v1/status/leader`` as this agent sees it (``""`` while there is none)."""
        code, body = _http_get(f"{self.http_url}/v1/status/leader", timeout)
        if code != 200:
            raise OSError(f"consul {self.node_name} status/leader: HTTP {code}: {body[:200]!r}")
        leader: Any = json.loads(body)
        return leader if isinstance(leader, str) else ""


class ConsulCluster(ServerCluster[ConsulClusterMember]):
    """``servers`` persistent Consul servers (3 by default) and one client agent, on loopback.

    The servers bootstrap together (``bootstrap_expect``), join each other with
    ``retry_join`` and keep their Raft data across restarts; Raft timing is the fast one of
    ``-dev`` (``raft_multiplier: 1``). The client agent (``clients[0]``) is the first
    endpoint, as an application's local agent would be. No agent leaves the cluster on
    SIGTERM unless ``client_leave_on_terminate=True``: a client agent that leaves is removed
    from the catalog, which destroys its sessions. The leader is the server whose RPC address
    ``/v1/status/leader`` names.
    """

    name = "consul"
    scheme = "consul"

    def __init__(
        self,
        servers: int = 3,
        session_ttl_min: str = "1s",
        *,
        client_leave_on_terminate: bool = False,
        start_timeout: float = 90.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(start_timeout=start_timeout, stop_timeout=stop_timeout)
        options: dict[str, Any] = {
            "session_ttl_min": session_ttl_min,
            "start_timeout": start_timeout,
            "stop_timeout": stop_timeout,
        }
        self.nodes = [ConsulClusterMember(self, index, server=True, **options) for index in range(servers)]
        self.clients = [
            ConsulClusterMember(
                self, 0, server=False, leave_on_terminate=client_leave_on_terminate, **options
            )
        ]
        self._allocate_ports()

    @property
    def client(self) -> ConsulClusterMember:
        """The client agent."""
        return self.clients[0]

    def _find_leader(self, timeout: float) -> int | None:
        index_of = {node.server_address: index for index, node in enumerate(self.nodes)}
        views: dict[int, int | None] = {}
        for index, node in self._answering():
            try:
                views[index] = index_of.get(node.leader_address(timeout))
            except (OSError, ValueError, http.client.HTTPException):
                continue
        return self._agreed_leader(views)
