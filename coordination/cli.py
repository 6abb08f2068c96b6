"""The ``coordination`` command: run a command under a lock or as leader, read and watch.

::

    coordination demo [--url URL]
    coordination lock URL NAME [--timeout S] [--grace S] -- CMD [ARG...]
    coordination elect URL NAME [--value V] [--timeout S] [--grace S] -- CMD [ARG...]
    coordination elect URL NAME --requeue [--min-interval S] [--value V] [--grace S] -- CMD [ARG...]
    coordination leader URL NAME [--watch] [--json]
    coordination members URL GROUP [--watch] [--json]
    coordination config get URL KEY [--json]
    coordination config set URL KEY VALUE
    coordination config watch URL KEY [--json]

``leader`` prints the leader and the candidates waiting behind it (``--json``:
``{"leader": ..., "candidates": [...]}``); ``members`` prints the members of a group, one
``id<TAB>value`` line each (``--json``: ``[{"id": ..., "value": ...}]``; with ``--watch``, the
list again at every change, after an empty line, or one JSON list per line). ``lock`` and
``elect`` run CMD only while holding the lock or leading, with the fencing token in
``$COORDINATION_TOKEN``. If the lock or leadership is lost, CMD gets SIGTERM, then SIGKILL
after ``--grace`` seconds, and the command exits with status 3. Otherwise it exits with
CMD's status. ``elect --requeue`` instead leads again and again (``election.run``): CMD runs
in each term; when it exits (whatever its status) or leadership is lost (CMD stopped as
above), it resigns and campaigns again, at least ``--min-interval`` seconds (default 5)
after the term began; it ends only when interrupted (SIGINT or SIGTERM: CMD is stopped, the
leadership resigned, status 128 + the signal). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing

import anyio

from . import connect
from ._coordinator import Coordinator
from ._types import Leader, Member, Versioned
from .exceptions import AcquireTimeout, CoordinationError, LeadershipLost, LockLost
from .primitives import HeldLock, Leadership

__all__ = ["main"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_LOST = 3
EXIT_TIMEOUT = 4


class _Exit(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _show(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")


def _print_json(obj: object) -> None:
    print(json.dumps(obj), flush=True)


def _leader_json(leader: Leader | None) -> object:
    return None if leader is None else {"value": _show(leader.value), "token": leader.token}


def _versioned_json(item: Versioned | None) -> object:
    return None if item is None else {"value": _show(item.value), "version": item.version}


# -- lock / elect ----------------------------------------------------------------------------


async def _run_command(argv: list[str], token: int, grace: float) -> int:
    """Run ``argv`` to completion; if cancelled, SIGTERM it, then SIGKILL after ``grace``."""
    env = {**os.environ, "COORDINATION_TOKEN": str(token)}
    try:
        process = await anyio.open_process(argv, stdin=None, stdout=None, stderr=None, env=env)
    except FileNotFoundError:
        raise _Exit(127, f"command not found: {argv[0]}") from None
    except PermissionError:
        raise _Exit(126, f"command not executable: {argv[0]}") from None
    try:
        return await process.wait()
    finally:
        if process.returncode is None:
            with anyio.CancelScope(shield=True):
                process.terminate()
                with anyio.move_on_after(grace):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()


async def _guarded(
    url: str,
    what: str,
    acquire: Callable[[Coordinator], Awaitable[HeldLock | Leadership]],
    argv: list[str],
    grace: float,
) -> int:
    async with connect(url) as coord:
        try:
            async with await acquire(coord) as held:
                _note(f"{what} (token {held.token}): running {' '.join(argv)}")
                return await _run_command(argv, held.token, grace)
            raise _Exit(EXIT_LOST, f"{what} ended before the command did")  # body cancelled, not lost
        except (LockLost, LeadershipLost) as exc:
            raise _Exit(EXIT_LOST, f"{exc}; the command was stopped") from None
        except AcquireTimeout as exc:
            raise _Exit(EXIT_TIMEOUT, str(exc)) from None


def _note(message: str) -> None:
    print(f"coordination: {message}", file=sys.stderr, flush=True)


async def _lock(args: argparse.Namespace) -> int:
    return await _guarded(
        args.url,
        f"holding lock {args.name!r}",
        lambda coord: coord.lock(args.name).acquire(timeout=args.timeout),
        args.command,
        args.grace,
    )


async def _elect(args: argparse.Namespace) -> int:
    value = (args.value if args.value is not None else f"{os.uname().nodename}:{os.getpid()}").encode()
    if args.requeue:
        return await _elect_requeue(args, value)
    return await _guarded(
        args.url,
        f"leading {args.name!r}",
        lambda coord: coord.election(args.name).campaign(value, timeout=args.timeout),
        args.command,
        args.grace,
    )


async def _elect_requeue(args: argparse.Namespace, value: bytes) -> int:
    """``elect --requeue``: election.run(), CMD the job of each term; ends only by a signal."""
    argv: list[str] = args.command

    async def job(leadership: Leadership) -> None:
        _note(f"leading {args.name!r} (token {leadership.token}): running {' '.join(argv)}")
        status = await _run_command(argv, leadership.token, args.grace)
        _note(f"the command exited with status {status}; resigning, then campaigning again")

    async with connect(args.url) as coord:
        # propagate: a CMD that cannot be started (not found, not executable) ends the command
        # with its status rather than being tried again in every term; CMD's exit is no error.
        await coord.election(args.name).run(job, value, min_interval=args.min_interval, propagate=True)
    raise AssertionError("unreachable: election.run() returns only by raising")


# -- reads -------------------------------------------------------------------------------------


def _print_election(leader: Leader | None, candidates: list[bytes], as_json: bool) -> None:
    """The leader and the candidates: JSON ``{"leader": {value, token} | null, "candidates":
    [values, leader first]}``, or the leader's line (``value<TAB>token=N``, or ``(no
    leader)``) and a ``waiting<TAB>value`` line for each candidate behind it."""
    if as_json:
        _print_json({"leader": _leader_json(leader), "candidates": [_show(value) for value in candidates]})
        return
    lines = ["(no leader)" if leader is None else f"{_show(leader.value)}\ttoken={leader.token}"]
    waiting = candidates[1:] if leader is not None and candidates[:1] == [leader.value] else candidates
    lines += [f"waiting\t{_show(value)}" for value in waiting]
    print("\n".join(lines), flush=True)


async def _leader(args: argparse.Namespace) -> int:
    async with connect(args.url) as coord:
        election = coord.election(args.name)
        if not args.watch:
            leader = await election.leader()
            candidates = await election.candidates()
            if leader is None and not args.json:
                _note(f"election {args.name!r} has no leader")
                if candidates:
                    _print_election(leader, candidates, False)
            else:
                _print_election(leader, candidates, args.json)
            return 0 if leader is not None else EXIT_ERROR
        # At every change of leader (candidates joining behind it change no leader: the
        # list is read again only then).
        async with aclosing(election.observe()) as leaders:
            async for item in leaders:
                _print_election(item, await election.candidates(), args.json)
    return 0


def _print_members(members: list[Member], as_json: bool, watching: bool) -> None:
    if as_json:
        _print_json([{"id": m.id, "value": _show(m.value)} for m in members])
        return
    if watching:
        print(flush=True)  # an empty line before each list of the watch
    for member in members:
        print(f"{member.id}\t{_show(member.value)}", flush=True)


async def _members(args: argparse.Namespace) -> int:
    async with connect(args.url) as coord:
        group = coord.group(args.name)
        if not args.watch:
            members = await group.members()
            if not members and not args.json:
                _note(f"group {args.name!r} has no members")
            _print_members(members, args.json, False)
            return 0
        async with aclosing(group.watch()) as lists:
            async for members in lists:
                _print_members(members, args.json, True)
    return 0


async def _config(args: argparse.Namespace) -> int:
    async with connect(args.url) as coord:
        config = coord.config(args.key)
        if args.action == "get":
            item = await config.get()
            if args.json:
                _print_json(_versioned_json(item))
            elif item is not None:
                sys.stdout.buffer.write(item.value)
                sys.stdout.flush()
            else:
                _note(f"config {args.key!r} is not set")
            return 0 if item is not None else EXIT_ERROR
        if args.action == "set":
            print(await config.set(args.value.encode()), flush=True)
            return 0
        async with aclosing(config.watch()) as items:
            async for item in items:
                if args.json:
                    _print_json(_versioned_json(item))
                elif item is None:
                    print("(absent)", flush=True)
                else:
                    print(f"{item.version}\t{_show(item.value)}", flush=True)
    return 0


async def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return await run_demo(args.url, services=args.services)


# -- plumbing ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coordination",
        description="Leader election, locks and config watch on ZooKeeper, etcd, Consul or in memory.",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        type=str.lower,
        choices=["debug", "info", "warning", "error"],
        help="what the library logs to stderr (default warning); secrets are never logged",
    )
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="watch services elect a leader, lose it, and fail over")
    demo.add_argument("--url", default="memory://", help="backend URL (default: memory://, in-process)")
    demo.add_argument("--services", type=int, default=3, help="number of services (2-9, default 3)")
    demo.set_defaults(func=_demo)

    for name, helptext, func in (
        ("lock", "run CMD while holding the lock NAME", _lock),
        ("elect", "run CMD while leading the election NAME", _elect),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("url", metavar="URL")
        p.add_argument("name", metavar="NAME")
        if name == "elect":
            p.add_argument("--value", help="leader value to publish (default hostname:pid)")
            p.add_argument(
                "--requeue",
                action="store_true",
                help="lead again and again: run CMD in each term, until interrupted (election.run)",
            )
            p.add_argument(
                "--min-interval",
                type=float,
                default=None,
                metavar="S",
                help="with --requeue: at least S seconds between the starts of two terms (default 5)",
            )
        p.add_argument("--timeout", type=float, default=None, help="give up waiting after S seconds (exit 4)")
        p.add_argument(
            "--grace",
            type=float,
            default=10.0,
            help="seconds between SIGTERM and SIGKILL on loss (default 10)",
        )
        p.set_defaults(func=func)
        p.usage = f"coordination {name} URL NAME [options] -- CMD [ARG...]"

    leader = sub.add_parser("leader", help="print the leader and the candidates of election NAME")
    leader.add_argument("url", metavar="URL")
    leader.add_argument("name", metavar="NAME")
    leader.add_argument("--watch", action="store_true", help="print every change until interrupted")
    leader.add_argument(
        "--json",
        action="store_true",
        help='JSON output: {"leader": {value, token} or null, "candidates": [...]}',
    )
    leader.set_defaults(func=_leader)

    members = sub.add_parser("members", help="print the members of group GROUP")
    members.add_argument("url", metavar="URL")
    members.add_argument("name", metavar="GROUP")
    members.add_argument(
        "--watch", action="store_true", help="print the list at every change until interrupted"
    )
    members.add_argument("--json", action="store_true", help='JSON output: [{"id": ..., "value": ...}]')
    members.set_defaults(func=_members)

    config = sub.add_parser("config", help="get, set or watch a config value")
    actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, helptext in (
        ("get", "print the value"),
        ("set", "write VALUE"),
        ("watch", "print every change"),
    ):
        p = actions.add_parser(action, help=helptext)
        p.add_argument("url", metavar="URL")
        p.add_argument("key", metavar="KEY")
        if action == "set":
            p.add_argument("value", metavar="VALUE")
        else:
            p.add_argument("--json", action="store_true", help="JSON output: {value, version} or null")
        p.set_defaults(func=_config)
    return parser


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def _main(args: argparse.Namespace) -> int:
    func: Callable[[argparse.Namespace], Awaitable[int]] = args.func
    result = EXIT_ERROR
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                nonlocal result
                result = await func(args)
                tg.cancel_scope.cancel()

            async def on_signal() -> None:
                nonlocal result
                async for signum in signals:
                    result = 128 + signum
                    tg.cancel_scope.cancel()
                    return

            tg.start_soon(run)
            tg.start_soon(on_signal)
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; for ``lock`` and ``elect``, CMD is everything after ``--``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    parser = _parser()
    args = parser.parse_args(argv)
    if args.cmd in ("lock", "elect"):
        if not command:
            parser.error(f"{args.cmd}: give the command to run after '--'")
        args.command = command
    if args.cmd == "elect":
        if args.requeue and args.timeout is not None:
            parser.error("elect: --timeout is for one term; with --requeue it campaigns until interrupted")
        if args.min_interval is not None and not args.requeue:
            parser.error("elect: --min-interval goes with --requeue")
        if args.min_interval is None:
            args.min_interval = 5.0
        elif not (math.isfinite(args.min_interval) and args.min_interval >= 0):
            parser.error(f"elect: --min-interval must be a number of seconds >= 0, not {args.min_interval}")
    if command and args.cmd not in ("lock", "elect"):
        parser.error(f"{args.cmd} takes no command after '--'")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``coordination`` console script; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="coordination: %(message)s")
    try:
        return anyio.run(_main, args)
    except BaseException as raw:
        exc = _leaf(raw)
        if isinstance(exc, _Exit):
            _note(f"error: {exc}" if exc.code != EXIT_LOST else str(exc))
            return exc.code
        if isinstance(exc, KeyboardInterrupt):
            return 130
        if isinstance(exc, CoordinationError | OSError | subprocess.SubprocessError):
            _note(f"error: {exc}")
            return EXIT_ERROR
        raise


if __name__ == "__main__":
    sys.exit(main())
