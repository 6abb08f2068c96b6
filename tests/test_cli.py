"""The ``coordination`` command."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

import coordination
from coordination import cli


def test_lock_runs_the_command_with_the_token_and_returns_its_status(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = "import os, sys; print('token', os.environ['COORDINATION_TOKEN']); sys.exit(7)"
    assert cli.main(["lock", "memory://", "jobs/x", "--", sys.executable, "-c", code]) == 7
    assert "holding lock 'jobs/x' (token " in capsys.readouterr().err


def test_elect_runs_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["elect", "memory://", "e", "--value", "me", "--", sys.executable, "-c", "pass"]) == 0
    assert "leading 'e'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["lock", "nosuch://h", "x", "--", "true"], 1, "no coordination backend"),
        (["lock", "memory://", "../x", "--", "true"], 1, "'../x'"),
        (["lock", "memory://?ttl=x", "x", "--", "true"], 1, "'ttl'"),
        (["lock", "memory://", "x", "--", "/no/such/cmd"], 127, "command not found"),
        (["leader", "memory://", "e"], 1, "has no leader"),
        (["config", "get", "memory://", "k"], 1, "is not set"),
    ],
)
def test_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("coordination: ")
    assert message in last
    assert [line for line in err.splitlines() if "error" in line] in ([], [last])


def test_missing_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["lock", "memory://", "x"])
    assert info.value.code == 2
    assert "give the command" in capsys.readouterr().err


def test_json_outputs(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["leader", "memory://", "e", "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == {"leader": None, "candidates": []}
    assert cli.main(["config", "get", "memory://", "k", "--json"]) == 1
    assert json.loads(capsys.readouterr().out) is None
    assert cli.main(["config", "set", "memory://", "k", "v"]) == 0
    assert int(capsys.readouterr().out) > 0


@pytest.mark.asyncio
@pytest.mark.parametrize("ignores_sigterm", [False, True])
async def test_lost_lock_stops_the_command_and_exits_3(
    tmp_path: Path, ignores_sigterm: bool, scaled: Callable[[float], float]
) -> None:
    """The session is expired under the running command: it is stopped, exit status 3."""
    url = f"memory://cli-{uuid.uuid4().hex[:8]}"
    pidfile = tmp_path / "pid"
    child = (
        "import os, signal, time, pathlib\n"
        + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignores_sigterm else "")
        + f"pathlib.Path({str(pidfile)!r}).write_text(str(os.getpid()))\n"
        + "time.sleep(60)\n"
    )
    args = cli.parse_args(["lock", url, "job", "--grace", "0.5", "--", sys.executable, "-c", child])
    async with coordination.connect(url) as observer:
        result: list[int] = []

        async def run() -> None:
            try:
                result.append(await args.func(args))
            except cli._Exit as exc:
                result.append(exc.code)

        with anyio.fail_after(scaled(20)):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                while not pidfile.exists() or not pidfile.read_text():  # noqa: ASYNC110 - another process
                    await anyio.sleep(0.02)
                store = observer.driver.store  # type: ignore[attr-defined]
                (holder,) = [s for s in store.sessions if s != observer.session_id]
                store.expire(holder)
    assert result == [cli.EXIT_LOST]
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.asyncio
async def test_elect_requeue_runs_the_command_in_every_term(
    tmp_path: Path, scaled: Callable[[float], float]
) -> None:
    """``elect --requeue``: CMD runs again in each new term, with that term's token, at least
    ``--min-interval`` after the previous term began; a loss stops the running CMD and the
    next term runs it again; cancelled, it stops CMD and leaves no candidate behind."""
    url = f"memory://cli-{uuid.uuid4().hex[:8]}"
    runs = tmp_path / "runs"
    child = (
        "import os, sys, time\n"
        f"with open({str(runs)!r}, 'a') as f:\n"
        "    f.write(f\"{os.getpid()} {os.environ['COORDINATION_TOKEN']} {time.monotonic()}\\n\")\n"
        "if sys.argv[1:] == ['hang']: time.sleep(60)\n"
    )

    def lines() -> list[list[str]]:
        return [line.split() for line in runs.read_text().splitlines()] if runs.exists() else []

    async def until(count: int) -> None:
        while len(lines()) < count:  # noqa: ASYNC110 - written by another process
            await anyio.sleep(0.02)

    async with coordination.connect(url) as observer:
        for hang, min_interval in ((False, 0.6), (True, 0.0)):
            runs.unlink(missing_ok=True)
            argv = ["elect", url, "e", "--requeue", "--min-interval", str(min_interval), "--grace", "0.5"]
            args = cli.parse_args([*argv, "--", sys.executable, "-c", child, *(["hang"] if hang else [])])
            with anyio.fail_after(scaled(30)):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(args.func, args)
                    if not hang:
                        await until(4)
                    else:
                        await until(1)
                        store = observer.driver.store  # type: ignore[attr-defined]
                        (holder,) = [s for s in store.sessions if s != observer.session_id]
                        store.expire(holder)
                        await until(2)
                    tg.cancel_scope.cancel()
            seen = lines()
            tokens = [int(token) for _, token, _ in seen]
            assert tokens == sorted(set(tokens)), f"a token per term, increasing: {tokens}"
            if not hang:
                starts = [float(at) for _, _, at in seen]
                gaps = [b - a for a, b in itertools.pairwise(starts)]
                # Measured where each CMD starts, which may lag a term's start by some tenths of
                # a second on a busy machine; an ignored interval gives gaps of a CMD's run.
                assert min(gaps) >= min_interval / 2, gaps
            for pid, _, _ in seen:
                with pytest.raises(ProcessLookupError):  # the lost term's CMD was stopped too
                    os.kill(int(pid), 0)
            assert await observer.election("e").candidates() == []


def test_elect_requeue_exits_when_the_command_cannot_start(capsys: pytest.CaptureFixture[str]) -> None:
    """A CMD that is not there is not tried again in every term: status 127, one line."""
    argv = ["elect", "memory://", "e", "--requeue", "--min-interval", "0", "--", "/no/such/cmd"]
    assert cli.main(argv) == 127
    assert "command not found" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["elect", "memory://", "e", "--min-interval", "1", "--", "true"], "goes with --requeue"),
        (
            ["elect", "memory://", "e", "--requeue", "--timeout", "1", "--", "true"],
            "--timeout is for one term",
        ),
        (["elect", "memory://", "e", "--requeue", "--min-interval", "-1", "--", "true"], ">= 0"),
    ],
)
def test_elect_requeue_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_runs_and_tells_the_story(scaled: Callable[[float], float]) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "coordination.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        env=env,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "is LEADER with fencing token" in out
    assert "LeadershipLost" in out
    assert "REFUSED" in out
    assert "fencing tokens strictly increase: True" in out
    assert "stale writes refused: 1" in out
    assert done.stderr == ""


@pytest.mark.asyncio
async def test_leader_lists_the_candidates(capsys: pytest.CaptureFixture[str]) -> None:
    """``coordination leader`` prints the leader, then who waits behind it, in order."""
    async with (
        coordination.connect("memory://cli-candidates") as a,
        coordination.connect("memory://cli-candidates") as b,
        coordination.connect("memory://cli-candidates") as c,
        anyio.create_task_group() as tg,
    ):
        leadership = await a.election("e").campaign(b"node-a")

        async def campaign(coord: coordination.Coordinator, value: bytes) -> None:
            await coord.election("e").campaign(value)

        tg.start_soon(campaign, b, b"node-b")
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(campaign, c, b"node-c")
        while len(await a.election("e").candidates()) < 3:  # noqa: ASYNC110 - a list has no watch
            await anyio.sleep(0.01)
        args = ["leader", "memory://cli-candidates", "e"]
        assert await cli._leader(cli.parse_args([*args, "--json"])) == 0
        assert json.loads(capsys.readouterr().out) == {
            "leader": {"value": "node-a", "token": leadership.token},
            "candidates": ["node-a", "node-b", "node-c"],
        }
        assert await cli._leader(cli.parse_args(args)) == 0
        assert capsys.readouterr().out.splitlines() == [
            f"node-a\ttoken={leadership.token}",
            "waiting\tnode-b",
            "waiting\tnode-c",
        ]
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_members_lists_and_watches_a_group(capsys: pytest.CaptureFixture[str]) -> None:
    """``coordination members`` prints each member as ``id<TAB>value`` (sorted by id), as
    JSON, and with ``--watch`` the list again at every change."""
    url = "memory://cli-members"
    async with coordination.connect(url) as a, anyio.create_task_group() as tg:
        assert await cli._members(cli.parse_args(["members", url, "g"])) == 0
        captured = capsys.readouterr()
        assert (captured.out, captured.err.strip()) == ("", "coordination: group 'g' has no members")
        m1 = await a.group("g").join(b"10.0.0.1:80")
        m2 = await a.group("g").join(b"10.0.0.2:80")
        ordered = sorted([m1, m2], key=lambda m: m.id)
        assert await cli._members(cli.parse_args(["members", url, "g"])) == 0
        assert capsys.readouterr().out.splitlines() == [f"{m.id}\t{m.value.decode()}" for m in ordered]
        assert await cli._members(cli.parse_args(["members", url, "g", "--json"])) == 0
        assert json.loads(capsys.readouterr().out) == [
            {"id": m.id, "value": m.value.decode()} for m in ordered
        ]

        tg.start_soon(cli._members, cli.parse_args(["members", url, "g", "--watch", "--json"]))
        await anyio.wait_all_tasks_blocked()
        await m1.leave()
        await anyio.wait_all_tasks_blocked()
        lists = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [[m["id"] for m in members] for members in lists] == [[m.id for m in ordered], [m2.id]]
        tg.cancel_scope.cancel()
