"""Wire compatibility with etcd's own recipe, proven with Debian's ``etcdctl lock`` and ``elect``.

``coord.lock("l")`` on ``etcd://.../NS`` and ``etcdctl lock NS/l`` are one lock;
``coord.election("e")`` and ``etcdctl elect NS/e`` are one election.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import Process

from coordination import AcquireTimeout, Leader
from coordination.testing.servers import EtcdProcess, find_etcdctl

from ._helpers import Lines, client_of, sessions, stop, wait_for_keys

asyncio = pytest.mark.asyncio


@asynccontextmanager
async def etcdctl(
    server: EtcdProcess, *args: str, scaled: Callable[[float], float]
) -> AsyncIterator[tuple[Process, Lines]]:
    """Run ``etcdctl ARGS`` against ``server`` in the background; SIGTERM it at the end (and wait
    a scaled 10 s for it to exit)."""
    process = await anyio.open_process(
        [str(find_etcdctl()), *args],
        env={**server.etcdctl_env(), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    async with process:
        try:
            yield process, Lines(process.stdout)
        finally:
            with anyio.CancelScope(shield=True), anyio.fail_after(scaled(10)):
                await stop(process)


def create_revision(server: EtcdProcess, key: str) -> int:
    reply = json.loads(server.etcdctl("get", key, "-w", "json").stdout)
    return int(reply["kvs"][0]["create_revision"])


@asyncio
async def test_etcdctl_lock_excludes_the_sdk(
    etcd_server: EtcdProcess, etcd_url: str, namespace: str, scaled: Callable[[float], float]
) -> None:
    async with etcdctl(etcd_server, "lock", f"{namespace}/l", scaled=scaled) as (process, out):
        with anyio.fail_after(scaled(10)):
            key = await out.next()  # printed once etcdctl holds the lock
        assert key.startswith(f"{namespace}/l/")
        async with sessions(etcd_url, 1) as (coord,):
            assert await coord.lock("l").try_acquire() is None
            with pytest.raises(AcquireTimeout):
                await coord.lock("l").acquire(timeout=scaled(0.5))
            theirs = create_revision(etcd_server, key)
            async with anyio.create_task_group() as tg:
                got = []

                async def wait() -> None:
                    got.append(await coord.lock("l").acquire(timeout=scaled(10)))

                tg.start_soon(wait)
                await wait_for_keys(client_of(coord), f"{namespace}/l/".encode(), 2)
                assert await stop(process) == 0  # etcdctl unlocks on SIGTERM
            (held,) = got
            assert held.token > theirs
            await held.release()


@asyncio
async def test_sdk_lock_excludes_etcdctl(
    etcd_server: EtcdProcess, etcd_url: str, namespace: str, scaled: Callable[[float], float]
) -> None:
    async with sessions(etcd_url, 1) as (coord,):
        held = await coord.lock("l").acquire()
        async with etcdctl(
            etcd_server, "lock", f"{namespace}/l", "echo", "etcdctl-has-it", scaled=scaled
        ) as (process, out):
            keys = await wait_for_keys(client_of(coord), f"{namespace}/l/".encode(), 2)
            ours = f"{namespace}/l/{coord.session_id}".encode()
            assert keys[0] == ours, "our key is first: etcdctl waits behind it"
            assert process.returncode is None
            await held.release()
            with anyio.fail_after(scaled(10)):
                assert await out.next() == "etcdctl-has-it"
                assert await process.wait() == 0
        again = await coord.lock("l").try_acquire()
        assert again is not None
        assert again.token > held.token
        await again.release()


@asyncio
async def test_etcdctl_elect_listen_shows_the_sdk_leader(
    etcd_server: EtcdProcess, etcd_url: str, namespace: str, scaled: Callable[[float], float]
) -> None:
    async with sessions(etcd_url, 1) as (coord,):
        leadership = await coord.election("e").campaign(b"sdk-1")
        ours = f"{namespace}/e/{coord.session_id}"
        async with etcdctl(etcd_server, "elect", "-l", f"{namespace}/e", scaled=scaled) as (_, out):
            with anyio.fail_after(scaled(10)):
                assert [await out.next(), await out.next()] == [ours, "sdk-1"]
                await leadership.proclaim(b"sdk-2")
                assert [await out.next(), await out.next()] == [ours, "sdk-2"]
        assert create_revision(etcd_server, ours) == leadership.token
        await leadership.resign()


@asyncio
async def test_sdk_sees_the_etcdctl_leader(
    etcd_server: EtcdProcess, etcd_url: str, namespace: str, scaled: Callable[[float], float]
) -> None:
    async with (
        sessions(etcd_url, 1) as (coord,),
        etcdctl(etcd_server, "elect", f"{namespace}/e", "etcdctl-leader", scaled=scaled) as (process, out),
    ):
        with anyio.fail_after(scaled(10)):
            key = await out.next()  # printed once elected
            assert await out.next() == "etcdctl-leader"
        theirs = Leader(b"etcdctl-leader", create_revision(etcd_server, key))
        assert await coord.election("e").leader() == theirs
        async for leader in coord.election("e").observe():
            assert leader == theirs
            break
        async with anyio.create_task_group() as tg:
            got = []

            async def campaign() -> None:
                got.append(await coord.election("e").campaign(b"sdk", timeout=scaled(10)))

            tg.start_soon(campaign)
            await wait_for_keys(client_of(coord), f"{namespace}/e/".encode(), 2)
            assert await stop(process) == 0  # etcdctl resigns on SIGTERM
        (leadership,) = got
        assert leadership.token > theirs.token
        assert await coord.election("e").leader() == Leader(b"sdk", leadership.token)
        await leadership.resign()
