"""On a Consul cluster, the agent a holder's session was made through leaves the cluster.

Consul then deregisters that agent's node and destroys every session made through it at
once, whatever their TTL; their locks are free to others after the lock-delay. The holder
must learn it lost before that: its local deadline counts the shorter of the TTL and the
lock-delay. The holder is a process of its own, the contender this test's process; their
times are the machine's one monotonic clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import anyio
import pytest

import coordination
from coordination.testing.holder import LOST_STATUS, HolderProcess
from coordination.testing.servers import ConsulCluster

TTL = 10.0
LOCK_DELAY = 2.0


@pytest.fixture(scope="module")
def cluster(session_scaled: Callable[[float], float]) -> Iterator[ConsulCluster]:
    with ConsulCluster(client_leave_on_terminate=True, start_timeout=session_scaled(90)) as started:
        yield started


@pytest.mark.asyncio
async def test_holder_learns_of_its_agent_leaving_before_anyone_can_acquire(
    cluster: ConsulCluster, scaled: Callable[[float], float]
) -> None:
    client = cluster.client
    servers = ",".join(node.address for node in cluster.nodes)
    options = f"ttl={TTL:g}&lock_delay={LOCK_DELAY:g}&timeout=3"
    # The holder talks to the client agent first (its session is made there), then the servers.
    holder_url = f"consul://{client.address},{servers}/leaves?{options}"
    async with (
        HolderProcess.start(holder_url, "job", label="the holder process") as holder,
        coordination.connect(f"consul://{servers}/leaves", ttl=TTL, lock_delay=LOCK_DELAY) as contender,
    ):
        held = await holder.next("held", scaled(30))
        assert await contender.lock("job").try_acquire() is None, "the lock is not exclusive"
        left = time.monotonic()
        await anyio.to_thread.run_sync(client.stop)  # SIGTERM: the agent leaves the cluster
        with anyio.fail_after(scaled(LOCK_DELAY + TTL)):
            taken = await contender.lock("job").acquire()
        taken_at = time.monotonic()
        lost = await holder.next("lost", scaled(5))
        assert await holder.wait(scaled(10)) == LOST_STATUS
        assert holder.seen("cancelled"), "the holder's body was not cancelled"
        assert held.token is not None
        assert taken.token > held.token
        await taken.release()
    await anyio.to_thread.run_sync(client.start)
    # Consul freed the lock when the agent left (well before the TTL), after the lock-delay...
    assert taken_at - left < TTL, f"the lock passed on {taken_at - left:.2f}s after the agent left"
    # ...and the holder knew before: its renewals run every third of the lock-delay.
    assert lost.at < taken_at, (
        f"the holder learned it lost {lost.at - taken_at:.3f}s after the contender took the lock"
    )
    assert lost.at - left < LOCK_DELAY, f"the holder learned {lost.at - left:.2f}s after its agent left"
