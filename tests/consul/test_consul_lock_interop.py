"""``consul lock`` (the real binary) and this SDK exclude each other, both ways.

The lock ``NAME`` of a coordinator on namespace ``NS`` is the key ``NS/NAME/.lock``, which is
what ``consul lock NS/NAME`` locks. Each test starts ``consul lock`` with a child that prints
LOCKED and waits for a line on stdin, so the test decides when it lets go.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest
from _consul_helpers import ConsulLockCLI, pair_token, raw_kv

import coordination
from coordination import AcquireTimeout, HeldLock, InvalidName, Leader, Leadership
from coordination.testing.servers import ConsulProcess, find_consul
from coordination_consul import LOCK_FLAG_VALUE

pytestmark = pytest.mark.asyncio

OPTIONS = {"ttl": 3.0, "timeout": 5.0, "lock_delay": 1.0}


def namespace(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def test_consul_lock_holds_sdk_waits(
    consul_server: ConsulProcess,
    consul_url: str,
    consul_env: dict[str, str],
    scaled: Callable[[float], float],
) -> None:
    ns = namespace(consul_url)
    async with ConsulLockCLI(consul_env, f"{ns}/shared", scaled=scaled) as cli:
        with anyio.fail_after(scaled(15)):
            await cli.locked()
        pair = await raw_kv(consul_server, f"{ns}/shared/.lock", scaled=scaled)
        assert pair is not None
        assert pair["Session"]
        assert pair["Flags"] == LOCK_FLAG_VALUE
        cli_token = pair_token(pair)
        async with coordination.connect(consul_url, **OPTIONS) as coord:
            lock = coord.lock("shared")
            assert await lock.try_acquire() is None
            with pytest.raises(AcquireTimeout):
                await lock.acquire(timeout=scaled(0.5))
            let_go = False
            got: list[HeldLock] = []

            async def acquire() -> None:
                got.append(await lock.acquire())
                assert let_go, "the SDK got the lock while consul lock held it"

            with anyio.fail_after(scaled(15)):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(acquire)
                    let_go = True
                    assert await cli.finish() == 0
            (held,) = got
            assert held.token > cli_token
            mine = await raw_kv(consul_server, f"{ns}/shared/.lock", scaled=scaled)
            assert mine is not None
            assert mine["Session"] == coord.session_id
            await held.release()


async def test_sdk_holds_consul_lock_waits(
    consul_server: ConsulProcess,
    consul_url: str,
    consul_env: dict[str, str],
    scaled: Callable[[float], float],
) -> None:
    ns = namespace(consul_url)
    async with coordination.connect(consul_url, **OPTIONS) as coord:
        held = await coord.lock("shared").acquire()
        pair = await raw_kv(consul_server, f"{ns}/shared/.lock", scaled=scaled)
        assert pair is not None
        assert pair["Flags"] == LOCK_FLAG_VALUE
        assert pair["Session"] == coord.session_id
        assert pair["Value"] == coord.identity.encode()
        assert pair_token(pair) == held.token

        # A one-shot `consul lock` gives up: its child never runs.
        once = await anyio.run_process(
            [str(find_consul()), "lock", f"-timeout={scaled(1):g}s", f"{ns}/shared", "echo RAN"],
            env=consul_env,
            check=False,
        )
        assert once.returncode == 1, once
        assert b"RAN" not in once.stdout

        async with ConsulLockCLI(consul_env, f"{ns}/shared", scaled=scaled) as cli:
            with anyio.move_on_after(scaled(1.5)) as waited:
                await cli.locked()
            assert waited.cancelled_caught, "consul lock ran its child while the SDK held the lock"
            await held.release()
            with anyio.fail_after(scaled(10)):
                await cli.locked()
            pair = await raw_kv(consul_server, f"{ns}/shared/.lock", scaled=scaled)
            assert pair is not None
            assert pair["Session"]
            assert pair["Session"] != coord.session_id
            cli_token = pair_token(pair)
            assert cli_token > held.token
            assert await coord.lock("shared").try_acquire() is None
            assert await cli.finish() == 0
        # consul lock deleted the key when it let go; the SDK takes it again, token still higher.
        again = await coord.lock("shared").acquire(timeout=scaled(5))
        assert again.token > cli_token
        await again.release()
        assert await raw_kv(consul_server, f"{ns}/shared/.lock", scaled=scaled) is None


async def test_consul_lock_campaigns_in_an_election(
    consul_server: ConsulProcess,
    consul_url: str,
    consul_env: dict[str, str],
    scaled: Callable[[float], float],
) -> None:
    ns = namespace(consul_url)
    async with coordination.connect(consul_url, **OPTIONS) as coord:
        election = coord.election("vote")
        async with ConsulLockCLI(consul_env, f"{ns}/vote/.election", scaled=scaled) as cli:
            with anyio.fail_after(scaled(15)):
                await cli.locked()
            pair = await raw_kv(consul_server, f"{ns}/vote/.election/.lock", scaled=scaled)
            assert pair is not None
            assert await election.leader() == Leader(b"", pair_token(pair))
            with pytest.raises(AcquireTimeout):
                await election.campaign(b"sdk", timeout=scaled(0.5))
            got: list[Leadership] = []
            with anyio.fail_after(scaled(15)):
                async with anyio.create_task_group() as tg:

                    async def campaign() -> None:
                        got.append(await election.campaign(b"sdk"))

                    tg.start_soon(campaign)
                    assert await cli.finish() == 0
        (leadership,) = got
        assert leadership.token > pair_token(pair)
        assert await election.leader() == Leader(b"sdk", leadership.token)
        await leadership.resign()


async def test_semaphore_of_consul_lock_is_not_taken_for_a_lock(
    consul_server: ConsulProcess,
    consul_url: str,
    consul_env: dict[str, str],
    scaled: Callable[[float], float],
) -> None:
    """``consul lock -n 2`` keeps a semaphore at the same ``.lock`` key, with other flags."""
    ns = namespace(consul_url)
    async with ConsulLockCLI(consul_env, f"{ns}/sem", "-n=2", scaled=scaled) as cli:
        with anyio.fail_after(scaled(15)):
            await cli.locked()
        before = await raw_kv(consul_server, f"{ns}/sem/.lock", scaled=scaled)
        assert before is not None
        assert before["Flags"] != LOCK_FLAG_VALUE
        async with coordination.connect(consul_url, **OPTIONS) as coord:
            with pytest.raises(InvalidName, match="not a lock"):
                await coord.lock("sem").acquire(timeout=scaled(5))
        assert await raw_kv(consul_server, f"{ns}/sem/.lock", scaled=scaled) == before, (
            "the semaphore key was touched"
        )
        assert await cli.finish() == 0
