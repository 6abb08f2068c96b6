"""A lock holder in its own process, for crash, pause and soak tests, and its parent side.

``python -m coordination.testing.holder URL NAME [options]`` connects, acquires the lock
``NAME`` (or, with ``--election VALUE``, campaigns in the election ``NAME`` with ``VALUE``)
and reports on stdout, one line per event, ``<event> <token or -> <time> [detail]``:

=============== ==================================================================
``acquiring``   about to acquire the lock (or campaign): from here on it waits
``held``        acquired the lock (a fenced resource takes it as the first write)
``write``       a fenced write attempt with the token (every ``--write-every`` s, from
                a worker thread, as blocking I/O would be); with ``--resource`` the
                detail is the resource's verdict, ``accepted`` or ``refused``
``releasing``   about to release (the guarded action ends here)
``released``    released
``cancelled``   the body was cancelled (the lock was lost)
``lost``        ``LockLost`` (``LeadershipLost``) was raised at the exit of the body (the
                detail: its message)
``writing``     with ``--guarded``: a guarded config write is about to be sent
``state``       the session state changed (the detail is its name)
``blocked``     about to block the event loop (command ``block``)
``unblocked``   the loop runs again
=============== ==================================================================

(The parent side reports a line it cannot parse as an event ``garbled``.)

The time is ``time.monotonic()``. On Linux that is ``CLOCK_MONOTONIC``, which is one clock
for the whole machine (not per process), so the parent compares these times with its own
``time.monotonic()`` and with other holders' (see :mod:`coordination.testing.checker`).

The holder is careless on purpose: it writes with its token without checking that it still
holds the lock, so that what a test sees refused is refused by the fenced resource, not by
the holder's good manners.

Options: ``--write-every S`` writes every S seconds while holding (to the fenced resource
process at ``--resource HOST:PORT``, :mod:`coordination.testing.fenced`, as resource
``NAME`` and writer ``--label``, else only reported); ``--hold S`` releases
after S seconds, ``--hold MIN:MAX`` after a random time between the two (default: hold
until killed, or until the lock is lost); ``--loop`` acquires
again after each release or loss, resting ``--rest S`` in between, and with ``--count N``
exits (status 0) after N holdings. ``--commands`` reads
commands on stdin, one per line:

* ``block S`` blocks the event loop with a synchronous sleep of at most S seconds that ends
  early at the next line on stdin, then writes once with the token it held (as a body that
  blocked and goes on with its work before it checks anything);
* ``release`` ends the current hold (the lock is released);
* ``exit`` leaves at once.

Without ``--loop`` the process exits after the hold: status 0 after a release, 3 after a
loss.

With an election (``--election VALUE``) the events are the same, with the leadership's
token; releasing is resigning. ``--run`` (with ``--election``) leads with ``election.run()``
instead, ``--min-interval S`` apart, each term's job being one holding as above (it ends
after ``--hold``, at ``release``, or cancelled by a loss: ``cancelled`` then ``lost``); it
runs until killed.

With ``--guarded CONFIG`` the writes are config writes instead, guarded by the holding
(``config.set(value, guard=held)``, value ``<label> <token> <n>``), made from the event
loop; each is reported as ``writing`` before it is sent and ``write`` after, with the
detail ``accepted <version>``, ``refused server`` (the server refused it on its ownership
check: the loss error came from its answer), ``refused local`` (the holding was known to be
lost before any I/O) or ``error <exception name>`` (its outcome unknown, as after a timeout).
``--writes N`` stops writing after N writes (counted over the process's holdings) and holds on.

With ``--member VALUE`` it joins the group ``NAME`` with ``VALUE`` instead, reports
``joined - <time> <member id>`` once the member is on the server, and stays a member (re-
joined by the coordinator after a session loss) until it is killed or told ``exit``.

``--spans PATH`` appends the holder's spans to a log file that several holders share, one
line each, written with a single ``os.write`` on an ``O_APPEND`` descriptor (so lines of
different processes never interleave)::

    <label> <token> <start> - acquired            when it acquired
    <label> <token> <start> <end> released        at the ``releasing`` point
    <label> <token> <start> <end> lost            when the body was cancelled (it knew then)

``<label>`` is ``--label`` (default: the process id), times are ``time.monotonic()``.
:func:`read_spans` reads such a log back.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio
from anyio.abc import Process, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

import coordination
from coordination import HeldLock, Leadership, LeadershipLost, LockLost

from .fenced import FencedClient
from .servers import wait_stopped

__all__ = ["HolderEvent", "HolderProcess", "Span", "main", "overlapping", "parse_event", "read_spans"]

LOST_STATUS = 3


# --------------------------------------------------------------------------- the holder process


_output = threading.Lock()


def _emit(event: str, token: int | None = None, detail: str = "") -> float:
    """Report one event; its time."""
    # time.monotonic() is CLOCK_MONOTONIC on Linux: comparable across processes of one machine.
    at = time.monotonic()
    line = f"{event} {'-' if token is None else token} {at:.6f}"
    # One write per line, under a lock: the worker thread reports too, and print() writes the
    # text and its newline separately, so two threads could interleave them.
    with _output:
        sys.stdout.write(f"{line} {detail}\n" if detail else f"{line}\n")
        sys.stdout.flush()
    return at


class _Writer:
    """Fenced writes: to the resource process (``--resource``), else only reported."""

    def __init__(self, address: str | None, resource: str, writer: str) -> None:
        self._client = None if address is None else FencedClient(address)
        self._resource = resource
        self._writer = writer
        self._lock = threading.Lock()

    def write(self, token: int) -> None:
        """One write with ``token``, reported as a ``write`` event (with the resource's verdict)."""
        if self._client is None:
            _emit("write", token)
            return
        with self._lock:  # the worker thread and a blocked loop's write share one connection
            accepted = self._client.write(self._resource, token, self._writer)
        _emit("write", token, "accepted" if accepted else "refused")

    def work(self, seconds: float, token: int) -> None:
        """A piece of blocking work that ends with a fenced write (careless: no check it still holds)."""
        time.sleep(seconds)
        self.write(token)


class _Stdin:
    """Lines from file descriptor 0, read without Python's buffering (select sees all of it)."""

    def __init__(self) -> None:
        self._buffer = b""

    def readline(self, timeout: float | None = None) -> str | None:
        """The next line, or ``None`` after ``timeout`` seconds or at end of input."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([0], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(0, 4096)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode().strip()


class _SpanLog:
    """The shared span log: one ``os.write`` per line on an ``O_APPEND`` descriptor."""

    def __init__(self, path: str, label: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._label = label

    def _write(self, line: str) -> None:
        os.write(self._fd, f"{self._label} {line}\n".encode())

    def acquired(self, token: int, start: float) -> None:
        self._write(f"{token} {start:.6f} - acquired")

    def ended(self, token: int, start: float, end: float, how: str) -> None:
        self._write(f"{token} {start:.6f} {end:.6f} {how}")


class _Holder:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.current: HeldLock | Leadership | None = None
        self.release_now = anyio.Event()
        self.stdin = _Stdin()
        self.status = 0
        label = self.label = args.label if args.label is not None else str(os.getpid())
        self.config: coordination.Config | None = None
        self.writes = 0
        self.spans = None if args.spans is None else _SpanLog(args.spans, label)
        self.writer = _Writer(args.resource, args.name, label)

    async def run(self) -> None:
        args = self.args
        async with coordination.connect(args.url) as coord, anyio.create_task_group() as tg:
            self.config = None if args.guarded is None else coord.config(args.guarded)
            tg.start_soon(self._report_states, coord)
            if args.commands:
                tg.start_soon(self._commands, tg)
            if args.member is not None:
                member = await coord.group(args.name).join(args.member.encode())
                _emit("joined", None, member.id)
                await anyio.sleep_forever()
            if args.election is None:
                acquire: Callable[[], Awaitable[HeldLock | Leadership]] = coord.lock(args.name).acquire
            else:
                election, value = coord.election(args.name), args.election.encode()

                async def acquire() -> HeldLock | Leadership:
                    return await election.campaign(value)

            if args.run:
                await self._run_election(coord.election(args.name), args.election.encode())
            held = 0
            while True:
                lost = await self._hold_once(acquire)
                held += 1
                if not args.loop or held == args.count:
                    self.status = LOST_STATUS if lost and not args.loop else 0
                    break
                await anyio.sleep(args.rest)
            tg.cancel_scope.cancel()

    async def _hold_once(self, acquire: Callable[[], Awaitable[HeldLock | Leadership]]) -> bool:
        """Acquire (or lead), hold (writing), release; True if the holding was lost instead."""
        self.release_now = anyio.Event()
        _emit("acquiring")
        held = await acquire()
        token = held.token
        try:
            async with held:
                await self._guarded(held)
        except (LockLost, LeadershipLost) as exc:
            self.current = None
            _emit("lost", token, str(exc))
            return True
        _emit("released", token)
        return False

    async def _guarded(self, held: HeldLock | Leadership, since: float | None = None) -> None:
        """The guarded body: ``held``, the work (:meth:`_body`), then ``releasing`` or
        ``cancelled``, with its span (from ``since`` if given, else from ``held``)."""
        self.current, token = held, held.token
        emitted = _emit("held", token)
        start = emitted if since is None else since
        if self.spans is not None:
            self.spans.acquired(token, start)
        try:
            await self._body(held)
        except anyio.get_cancelled_exc_class():
            end = _emit("cancelled", token)
            if self.spans is not None:
                self.spans.ended(token, start, end, "lost")
            raise
        end = _emit("releasing", token)
        if self.spans is not None:
            self.spans.ended(token, start, end, "released")
        self.current = None

    async def _run_election(self, election: coordination.Election, value: bytes) -> None:
        """``--run``: election.run() with the guarded body as its job, each term reported as
        a holding is; a term that ended in a loss is reported ``lost``."""

        async def job(leadership: Leadership) -> None:
            self.release_now = anyio.Event()
            try:
                # Spans from the grant (when election.run's term began): its min_interval is
                # measured from there; the span only starts earlier than the body does.
                await self._guarded(leadership, since=leadership._since)
            except anyio.get_cancelled_exc_class():
                if leadership.lost:
                    _emit("lost", leadership.token, "the term was lost")
                raise
            _emit("released", leadership.token)

        await election.run(job, value, min_interval=self.args.min_interval)

    async def _body(self, held: HeldLock | Leadership) -> None:
        args = self.args
        every = args.write_every
        hold = math.inf if args.hold is None else random.uniform(*args.hold)
        with anyio.move_on_after(hold):
            if not every:
                await self.release_now.wait()
                return
            while self.config is not None and not self.release_now.is_set():
                if args.writes and self.writes >= args.writes:
                    await self.release_now.wait()
                    return
                await anyio.sleep(every)
                await self._guarded_write(self.config, held)
            while not self.release_now.is_set():
                # The work runs in a worker thread (blocking I/O), which a cancellation does not
                # interrupt: a write that was under way when the process stopped still happens.
                await anyio.to_thread.run_sync(self.writer.work, every, held.token)

    async def _guarded_write(self, config: coordination.Config, held: HeldLock | Leadership) -> None:
        """One config write guarded by ``held``, reported (see the module docstring)."""
        self.writes += 1
        _emit("writing", held.token)
        try:
            version = await config.set(f"{self.label} {held.token} {self.writes}".encode(), guard=held)
        except (LockLost, LeadershipLost) as exc:
            # Refused by the server: the loss error is raised from its answer (NotHeld, an
            # expired session); known lost before any I/O: raised without a cause.
            _emit("write", held.token, "refused server" if exc.__cause__ is not None else "refused local")
            raise
        except coordination.CoordinationError as exc:
            _emit("write", held.token, f"error {type(exc).__name__}")
            return
        _emit("write", held.token, f"accepted {version}")

    async def _report_states(self, coord: coordination.Coordinator) -> None:
        async for state in coord.states():
            _emit("state", None, state.name)

    async def _commands(self, tg: TaskGroup) -> None:
        while True:
            line = await anyio.to_thread.run_sync(self.stdin.readline, abandon_on_cancel=True)
            if line is None or line == "exit":
                os._exit(self.status)
            word, _, rest = line.partition(" ")
            if word == "block":
                held = self.current
                _emit("blocked")
                self.stdin.readline(float(rest or "60"))  # the whole event loop stops here
                _emit("unblocked")
                if held is not None:
                    self.writer.write(held.token)  # the body goes on before it checks anything
            elif word == "release":
                self.release_now.set()


def _seconds_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition(":")
    return float(low), float(high or low)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m coordination.testing.holder", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("name")
    parser.add_argument("--write-every", type=float, default=0.0, metavar="S")
    parser.add_argument("--hold", type=_seconds_range, default=None, metavar="S[:MAX]")
    parser.add_argument("--loop", action="store_true")
    parser.add_argument("--rest", type=float, default=0.0, metavar="S")
    parser.add_argument(
        "--count", type=int, default=0, metavar="N", help="with --loop: exit after N holdings"
    )
    parser.add_argument("--commands", action="store_true")
    parser.add_argument(
        "--run",
        action="store_true",
        help="with --election: lead in a loop with election.run(), each term a holding (--hold)",
    )
    parser.add_argument(
        "--min-interval", type=float, default=0.0, metavar="S", help="with --run: election.run's min_interval"
    )
    parser.add_argument(
        "--election", default=None, metavar="VALUE", help="campaign with VALUE instead of locking"
    )
    parser.add_argument(
        "--member", default=None, metavar="VALUE", help="join the group NAME with VALUE instead of locking"
    )
    parser.add_argument(
        "--guarded",
        default=None,
        metavar="CONFIG",
        help="write the config value CONFIG, guarded by the holding, every --write-every seconds",
    )
    parser.add_argument(
        "--writes",
        type=int,
        default=0,
        metavar="N",
        help="with --guarded: after N writes, hold without writing",
    )
    parser.add_argument("--spans", default=None, metavar="PATH", help="append each held span to this log")
    parser.add_argument("--label", default=None, help="this holder's name in the span log (default: its pid)")
    parser.add_argument(
        "--resource",
        default=None,
        metavar="HOST:PORT",
        help="send each write to this fenced resource process (coordination.testing.fenced)",
    )
    args = parser.parse_args(argv)
    if args.run and args.election is None:
        parser.error("--run needs --election VALUE")
    holder = _Holder(args)
    try:
        anyio.run(holder.run)
    except KeyboardInterrupt:
        pass
    except BaseException:
        traceback.print_exc()
        holder.status = 1
    sys.stdout.flush()
    # Not sys.exit(): a worker thread may still wait on stdin, and nothing else needs closing.
    os._exit(holder.status)


# --------------------------------------------------------------------------- the parent side


@dataclass(frozen=True)
class HolderEvent:
    """One line of a holder: ``kind``, the token (or ``None``), the time and the detail."""

    kind: str
    token: int | None
    at: float
    detail: str = ""


def parse_event(line: str) -> HolderEvent:
    """Parse one line a holder printed."""
    kind, token, at, *detail = line.split(maxsplit=3)
    return HolderEvent(kind, None if token == "-" else int(token), float(at), detail[0] if detail else "")


@dataclass(frozen=True)
class Span:
    """One holding of one holder, from a span log (``--spans``): ``end`` is ``None`` while
    it was still held (or the holder died holding it); ``how`` is ``released``, ``lost`` or
    ``held``."""

    label: str
    token: int
    start: float
    end: float | None
    how: str


def read_spans(path: str | os.PathLike[str]) -> list[Span]:
    """The spans of a shared span log, in start order (an acquired line without its end
    line is a span still ``held``)."""
    spans: dict[tuple[str, int, str], Span] = {}
    try:
        with open(path) as log:
            lines = log.read().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        label, token, start, end, how = line.split()
        key = (label, int(token), start)
        if how == "acquired":
            spans.setdefault(key, Span(label, int(token), float(start), None, "held"))
        else:
            spans[key] = Span(label, int(token), float(start), float(end), how)
    return sorted(spans.values(), key=lambda span: span.start)


def overlapping(spans: Sequence[Span], until: float) -> list[tuple[str, int, str, int]]:
    """The pairs of spans of different holders that overlap in time, as (label, token,
    label, token); a span still ``held`` counts as held ``until`` then."""
    ordered = sorted(spans, key=lambda span: span.start)
    ends = [until if span.end is None else span.end for span in ordered]
    return [
        (a.label, a.token, b.label, b.token)
        for i, (a, a_end) in enumerate(zip(ordered, ends, strict=True))
        for b in ordered[i + 1 :]
        if b.start < a_end and a.label != b.label
    ]


class HolderProcess:
    """A running holder process, its events as they arrive, and the faults it can suffer.

    ::

        async with HolderProcess.start(url, "name", "--write-every", "0.05") as holder:
            held = await holder.next("held", timeout=20)
            holder.pause()     # SIGSTOP
            holder.resume()    # SIGCONT
            holder.send("block 10")

    ``on_event`` sees each event as it arrives (e.g. to apply writes to a fenced resource).
    Leaving the block kills the process if it still runs.
    """

    def __init__(self, process: Process, label: str, on_event: Callable[[HolderEvent], None] | None) -> None:
        self.process = process
        self.label = label
        self.events: list[HolderEvent] = []
        self._on_event = on_event
        self._changed = anyio.Event()
        self._cursors: dict[str, int] = {}
        self.exited = anyio.Event()
        self.returncode: int | None = None
        self.paused = False
        # Signals go through a pidfd where there is one: it names this very process, while its
        # pid may already belong to another once the child watcher has reaped it.
        self._pidfd: int | None = None
        with contextlib.suppress(OSError, AttributeError):
            self._pidfd = os.pidfd_open(process.pid)

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls,
        url: str,
        name: str,
        *options: str,
        label: str = "holder",
        on_event: Callable[[HolderEvent], None] | None = None,
    ) -> AsyncIterator[HolderProcess]:
        command = [sys.executable, "-m", "coordination.testing.holder", url, name, *options]
        async with cls.run(
            command, label=label, on_event=on_event, commands="--commands" in options
        ) as holder:
            yield holder

    @classmethod
    @contextlib.asynccontextmanager
    async def run(
        cls,
        command: Sequence[str],
        *,
        label: str = "holder",
        on_event: Callable[[HolderEvent], None] | None = None,
        commands: bool = False,
    ) -> AsyncIterator[HolderProcess]:
        """Any program that speaks this module's protocol on stdout (a peer in another
        language: the ZooKeeper tests run a Curator one), with stdin open for :meth:`send`
        if ``commands``."""
        stdin = subprocess.PIPE if commands else subprocess.DEVNULL
        process = await anyio.open_process(list(command), stdin=stdin, stderr=None)
        holder = cls(process, label, on_event)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder._read)
                try:
                    yield holder
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await holder.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    async def _read(self) -> None:
        assert self.process.stdout is not None
        lines = BufferedByteReceiveStream(self.process.stdout)
        try:
            while True:
                line = (await lines.receive_until(b"\n", 65536)).decode()
                try:
                    event = parse_event(line)
                except ValueError:
                    event = HolderEvent("garbled", None, time.monotonic(), line)
                self.events.append(event)
                if self._on_event is not None:
                    self._on_event(event)
                changed, self._changed = self._changed, anyio.Event()
                changed.set()
        except (
            anyio.EndOfStream,
            anyio.IncompleteRead,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
        ):
            pass
        self.returncode = await self.process.wait()
        self.exited.set()
        self._changed.set()

    def seen(self, kind: str) -> list[HolderEvent]:
        """Every event of ``kind`` so far."""
        return [event for event in self.events if event.kind == kind]

    async def next(self, kind: str, timeout: float) -> HolderEvent:
        """The next event of ``kind`` not returned yet by ``next``; TimeoutError after ``timeout`` s."""
        start = self._cursors.get(kind, 0)
        with anyio.move_on_after(timeout):
            while True:
                for i in range(start, len(self.events)):
                    if self.events[i].kind == kind:
                        self._cursors[kind] = i + 1
                        return self.events[i]
                start = len(self.events)
                if self.exited.is_set():
                    raise AssertionError(
                        f"{self.label} exited (status {self.returncode}) before reporting {kind!r}"
                    )
                await self._changed.wait()
        raise TimeoutError(f"{self.label} did not report {kind!r} within {timeout:g}s")

    async def first(
        self, matches: Callable[[HolderEvent], bool], timeout: float, what: str = ""
    ) -> HolderEvent:
        """The first event so far or to come that ``matches``; TimeoutError after ``timeout`` s."""
        start = 0
        with anyio.move_on_after(timeout):
            while True:
                for event in self.events[start:]:
                    if matches(event):
                        return event
                start = len(self.events)
                if self.exited.is_set():
                    raise AssertionError(
                        f"{self.label} exited (status {self.returncode}) before reporting {what}"
                    )
                await self._changed.wait()
        raise TimeoutError(f"{self.label} did not report {what} within {timeout:g}s")

    def states(self, after: float = -math.inf) -> list[HolderEvent]:
        """The session states the holder reported (at or after ``after``)."""
        return [event for event in self.events if event.kind == "state" and event.at >= after]

    async def wait(self, timeout: float) -> int:
        """Wait for the process to exit; its status."""
        with anyio.move_on_after(timeout):
            await self.exited.wait()
            assert self.returncode is not None
            return self.returncode
        raise TimeoutError(f"{self.label} did not exit within {timeout:g}s")

    async def send(self, command: str) -> None:
        """Send one command line (the holder must run with ``--commands``)."""
        assert self.process.stdin is not None, "start the holder with --commands"
        await self.process.stdin.send(command.encode() + b"\n")

    def _signal(self, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signum)
            elif self.process.returncode is None:
                self.process.send_signal(signum)

    def pause(self) -> None:
        """SIGSTOP the holder; returns once all its threads have stopped."""
        self._signal(signal.SIGSTOP)
        self.paused = True
        if self.process.returncode is None:
            wait_stopped(self.process.pid)

    def resume(self) -> None:
        """SIGCONT the holder."""
        self._signal(signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        """SIGKILL the holder."""
        self._signal(signal.SIGKILL)

    async def close(self) -> None:
        """Kill the process if it still runs, and reap it."""
        if self.process.returncode is None:
            self.kill()
            if self.paused:
                self._signal(signal.SIGCONT)
        with anyio.move_on_after(10):
            await self.process.wait()
        await self.process.aclose()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


if __name__ == "__main__":
    main()
