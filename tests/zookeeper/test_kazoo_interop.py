"""Kazoo and this SDK share locks and elections on the same znodes, both ways.

kazoo is threaded: its blocking calls run in worker threads, each with its own timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import anyio
import pytest
from kazoo.client import KazooClient  # type: ignore[import-untyped]

import coordination
from coordination import Leader, Leadership, Member

from .conftest import acquire_once_released, in_thread, options, until_contenders, within, znode

pytestmark = pytest.mark.asyncio


async def test_lock_kazoo_then_sdk_then_kazoo(
    kazoo: KazooClient, zk_url: str, scaled: Callable[[float], float]
) -> None:
    path = znode(zk_url, "shared")
    first = kazoo.Lock(path, "kazoo-1")
    assert await in_thread(first.acquire, timeout=scaled(5))
    async with coordination.connect(zk_url, identity="sdk-holder", **options()) as coord:
        lock = coord.lock("shared")
        assert await lock.try_acquire() is None, "a lock kazoo holds is not free"
        held = await acquire_once_released(
            lock, kazoo, path, lambda: in_thread(first.release), scaled, "kazoo"
        )
        assert held.held

        # kazoo sees the SDK's holder and cannot take the lock...
        second = kazoo.Lock(path, "kazoo-2")
        assert await in_thread(second.contenders) == ["sdk-holder"]
        assert not await in_thread(second.acquire, blocking=False)
        (node,) = await in_thread(kazoo.get_children, path)
        _, stat = await in_thread(kazoo.get, f"{path}/{node}")
        assert held.token == stat.czxid

        # ...until the SDK releases it: the waiting kazoo client is woken.
        done = threading.Event()
        async with anyio.create_task_group() as tg:

            async def kazoo_waits() -> None:
                assert await in_thread(second.acquire, timeout=scaled(10))
                done.set()

            tg.start_soon(kazoo_waits)
            await until_contenders(kazoo, path, 2, scaled)
            assert not done.is_set()
            await held.release()
        assert done.is_set()
        assert await lock.try_acquire() is None
        await in_thread(second.release)
        again = await lock.try_acquire()
        assert again is not None
        assert again.token > held.token
        await again.release()


async def test_election_kazoo_then_sdk_then_kazoo(
    kazoo: KazooClient, zk_url: str, scaled: Callable[[float], float]
) -> None:
    path = znode(zk_url, "vote")
    kazoo_leading, kazoo_resign = threading.Event(), threading.Event()

    def lead(event: threading.Event, resign: threading.Event) -> None:
        event.set()
        resign.wait(scaled(15))

    first = kazoo.Election(path, "kazoo-leader")
    async with coordination.connect(zk_url, **options()) as coord, anyio.create_task_group() as tg:
        election = coord.election("vote")
        tg.start_soon(in_thread, first.run, lead, kazoo_leading, kazoo_resign)
        await within(scaled(5), in_thread(kazoo_leading.wait, scaled(5)), "kazoo leading")
        (node,) = await in_thread(kazoo.get_children, path)
        _, stat = await in_thread(kazoo.get, f"{path}/{node}")
        assert await election.leader() == Leader(b"kazoo-leader", stat.czxid), "the SDK sees kazoo's leader"

        got: list[Leadership] = []

        async def campaign() -> None:
            got.append(await election.campaign(b"sdk-leader"))

        async with anyio.create_task_group() as inner:
            inner.start_soon(campaign)
            await until_contenders(kazoo, path, 2, scaled)
            assert not got, "kazoo leads: the SDK must wait"
            kazoo_resign.set()
        (leadership,) = got
        assert leadership.token > stat.czxid
        contenders = await in_thread(kazoo.Election(path).contenders)
        assert contenders == ["sdk-leader"], "kazoo sees the SDK's leader"

        # A kazoo candidate waits behind the SDK's leader and takes over when it resigns.
        second_leading, second_resign = threading.Event(), threading.Event()
        second = kazoo.Election(path, "kazoo-second")
        tg.start_soon(in_thread, second.run, lead, second_leading, second_resign)
        await until_contenders(kazoo, path, 2, scaled)
        assert not second_leading.is_set()
        await leadership.proclaim(b"sdk-leader v2")
        assert (await in_thread(kazoo.Election(path).contenders))[0] == "sdk-leader v2"
        await leadership.resign()
        await within(scaled(5), in_thread(second_leading.wait, scaled(5)), "kazoo taking over")
        leader = await election.leader()
        assert leader is not None
        assert leader.value == b"kazoo-second"
        assert leader.token > leadership.token
        second_resign.set()


async def test_group_is_kazoos_party_both_ways(
    kazoo: KazooClient, zk_url: str, scaled: Callable[[float], float]
) -> None:
    """kazoo's Party lists the SDK's members, and the SDK lists (and watches) kazoo's, with
    kazoo's uuid as the member id; a lock on the same znode is not a member."""
    path = znode(zk_url, "party")
    party = kazoo.Party(path, "kazoo-member")
    await in_thread(party.join)
    kazoo_id = party.node.removesuffix("__party__")
    async with coordination.connect(zk_url, **options()) as coord, anyio.create_task_group() as tg:
        group = coord.group("party")
        assert await group.members() == [Member(kazoo_id, b"kazoo-member")]
        seen: list[list[Member]] = []
        changed = anyio.Event()

        async def watch() -> None:
            nonlocal changed
            async for members in group.watch():
                seen.append(members)
                changed.set()
                changed = anyio.Event()

        tg.start_soon(watch)
        async with group.join(b"sdk-member") as member, coord.lock("party"):
            assert sorted(await in_thread(list, party)) == ["kazoo-member", "sdk-member"]
            assert await in_thread(len, party) == 2, "the lock's node is not a party member"
            expected = sorted([Member(kazoo_id, b"kazoo-member"), Member(member.id, b"sdk-member")])
            assert await group.members() == expected

            async def until(members: list[Member]) -> None:
                while not seen or seen[-1] != members:
                    await changed.wait()

            await within(scaled(5), until(expected), "the watch seeing both")
            await in_thread(party.leave)
            await within(scaled(5), until([Member(member.id, b"sdk-member")]), "kazoo's member leaving")
        assert await in_thread(list, party) == []
        tg.cancel_scope.cancel()
