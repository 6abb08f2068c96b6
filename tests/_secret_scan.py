"""The secret scan: do everything a user does, with recognisable secrets in the URL and the
options, and find the secrets nowhere.

:func:`scan` runs, with every logger at DEBUG:

* ``connect`` (the secrets in the URL, and given again as keyword options), a lock (acquire,
  a guarded write, release), an election (campaign, leader, candidates), a config value (set,
  get, compare-and-set, the first item of a watch, delete) and a group (join, members);
* forced failures: the coordinator's own session expired from outside while a lock is held
  (the lock's loss error), a connect to a port where nothing listens (Unavailable), a URL with
  an ill-typed option (InvalidURL), and the backend's own refusal (``refused_url``: wrong
  credentials, PermissionDenied);
* the CLI, at ``--log-level debug``: ``config set``, ``config get``, ``lock -- CMD``,
  ``leader``, and a refused ``config set``.

It collects every log record (message, arguments, traceback), the ``repr()`` and ``str()`` of
every object the API returned, every exception with its whole ``__cause__``/``__context__``
chain and traceback, and the CLI's stdout and stderr; then asserts that no secret is in any.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import anyio

import coordination
from coordination import CoordinationError, PermissionDenied

__all__ = ["SecretScan", "scan"]


class SecretScan(logging.Handler):
    """Every text the library showed, by where it came from; :meth:`assert_clean` checks them."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__(logging.DEBUG)
        assert all(len(secret) >= 8 for secret in secrets), "secrets must be recognisable"
        self.secrets = list(secrets)
        self.texts: list[tuple[str, str]] = []
        self.exercised: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        parts = [record.getMessage(), repr(record.args)]
        if record.exc_info and record.exc_info[1] is not None:
            parts.append("".join(traceback.format_exception(record.exc_info[1])))
        self.texts.append((f"log record {record.name}", "\n".join(parts)))

    def shown(self, where: str, *objects: object) -> None:
        """Record the ``repr()`` and ``str()`` of ``objects``."""
        self.exercised.append(where)
        for obj in objects:
            self.texts.append((f"{where}: repr", repr(obj)))
            self.texts.append((f"{where}: str", str(obj)))

    def raised(self, where: str, exc: BaseException) -> None:
        """Record ``exc``: its message, ``repr()``, traceback and whole cause/context chain."""
        self.exercised.append(where)
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            self.texts.append((f"{where}: {type(current).__name__}", f"{current}\n{current!r}"))
            current = current.__cause__ or current.__context__
        self.texts.append((f"{where}: traceback", "".join(traceback.format_exception(exc))))

    def assert_clean(self) -> None:
        leaks = [
            f"{where}: {text[max(text.find(secret) - 80, 0) : text.find(secret) + 80]!r}"
            for where, text in self.texts
            for secret in self.secrets
            if secret in text
        ]
        assert not leaks, "a secret was shown:\n" + "\n".join(leaks)

    @contextmanager
    def capturing(self) -> Iterator[None]:
        root = logging.getLogger()
        level = root.level
        root.addHandler(self)
        root.setLevel(logging.DEBUG)
        try:
            yield
        finally:
            root.removeHandler(self)
            root.setLevel(level)


async def _expect(scan: SecretScan, where: str, error: type[BaseException], run: Any) -> None:
    try:
        await run()
    except error as exc:
        scan.raised(where, exc)
        return
    raise AssertionError(f"{where}: {error.__name__} was not raised")


async def _exercise(scan: SecretScan, url: str, options: Mapping[str, Any], timeout: float) -> None:
    async with coordination.connect(url, **options, ttl=4, timeout=timeout) as coord:
        scan.shown("the coordinator", coord, coord.driver)
        lock = coord.lock("scan/lock")
        async with lock as held:
            config = coord.config("scan/config")
            version = await config.set(b"one", guard=held)
            scan.shown("a lock and its holding", lock, held)
        election = coord.election("scan/election")
        async with election.campaign(b"leader-value") as leadership:
            scan.shown(
                "an election", election, leadership, await election.leader(), await election.candidates()
            )
        scan.shown("config get", config, await config.get())
        assert await config.compare_and_set(b"two", version)
        async for item in config.watch():
            scan.shown("a config watch", item)
            break
        await config.delete()
        async with coord.group("scan/group").join(b"member") as member:
            scan.shown("a group", member, await coord.group("scan/group").members())
        # The session expired from outside while a lock is held: the loss error, its logs.
        async with coordination.connect(url, **options, ttl=4, timeout=timeout) as other:
            with anyio.fail_after(timeout * 4):

                async def lose() -> None:
                    async with other.lock("scan/lost"):
                        assert other.session_id is not None
                        await other.expire_session(other.session_id)
                        await anyio.sleep_forever()

                try:
                    await lose()
                except CoordinationError as exc:  # LockLost, or Unsupported where it cannot
                    scan.raised("a lock lost to an expired session", exc)


def _cli(scan: SecretScan, *args: str, check: bool = True) -> None:
    """Run ``coordination --log-level debug ARGS``; record its output."""
    done = subprocess.run(
        [sys.executable, "-m", "coordination.cli", "--log-level", "debug", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    where = f"the CLI: coordination {' '.join(a for a in args if '://' not in a)}"
    scan.exercised.append(where)
    scan.texts.append((f"{where}: stdout", done.stdout))
    scan.texts.append((f"{where}: stderr", done.stderr))
    assert (done.returncode == 0) == check, f"{where} exited {done.returncode}: {done.stderr[-2000:]}"


async def scan(
    url: str,
    *,
    secrets: Sequence[str],
    options: Mapping[str, Any] | None = None,
    refused_url: str,
    dead_url: str,
    timeout: float = 5.0,
) -> SecretScan:
    """Run the whole scan (see the module docstring) and assert it found no secret.

    ``url`` and ``options`` carry the secrets and work; ``refused_url`` carries wrong ones
    (or ones without the right) and is refused with PermissionDenied at connect or at a
    config write; ``dead_url`` carries the secrets to a port where nothing listens.
    """
    options = dict(options or {})
    found = SecretScan(secrets)
    with found.capturing():
        await _exercise(found, url, options, timeout)

        async def refused() -> None:
            async with coordination.connect(refused_url, ttl=4, timeout=timeout) as coord:
                await coord.config("scan/config").set(b"refused")

        await _expect(found, "refused credentials", PermissionDenied, refused)

        async def dead() -> None:
            async with coordination.connect(dead_url, ttl=4, timeout=1):
                pass

        await _expect(found, "a server out of reach", CoordinationError, dead)

        async def ill_typed() -> None:
            separator = "&" if "?" in url else "?"
            coordination.connect(f"{url}{separator}ttl=not-a-number")

        await _expect(found, "an ill-typed option", coordination.InvalidURL, ill_typed)
    with anyio.fail_after(120):
        await anyio.to_thread.run_sync(lambda: _run_cli(found, url, refused_url))
    found.assert_clean()
    return found


def _run_cli(found: SecretScan, url: str, refused_url: str) -> None:
    _cli(found, "config", "set", url, "scan/cli", "value")
    _cli(found, "config", "get", url, "scan/cli")
    _cli(found, "lock", url, "scan/cli-lock", "--", sys.executable, "-c", "pass")
    _cli(found, "leader", url, "scan/election", check=False)  # no leader: status 1
    _cli(found, "config", "set", refused_url, "scan/cli", "refused", check=False)
