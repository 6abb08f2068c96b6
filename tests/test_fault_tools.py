"""The fault proxy and the fenced-resource checker that fault tests rely on."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

from coordination.testing.checker import FencedResource, Window
from coordination.testing.fixtures import _with_hosts
from coordination.testing.holder import HolderEvent, HolderProcess, parse_event
from coordination.testing.proxy import FaultProxy


@asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    """A real TCP echo server on a free loopback port."""

    async def echo(stream: SocketStream) -> None:
        async with stream:
            try:
                async for chunk in stream:
                    await stream.send(chunk)
            except (anyio.BrokenResourceError, OSError):
                pass

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, echo)
        yield listener.extra(SocketAttribute.local_port)
        tg.cancel_scope.cancel()


@asynccontextmanager
async def proxied() -> AsyncIterator[tuple[FaultProxy, SocketStream]]:
    async with echo_server() as port, FaultProxy("127.0.0.1", port) as proxy:
        client = await anyio.connect_tcp("127.0.0.1", proxy.port)
        async with client:
            yield proxy, client


async def roundtrip(client: SocketStream, data: bytes) -> bytes:
    await client.send(data)
    got = b""
    while len(got) < len(data):
        got += await client.receive()
    return got


@pytest.mark.asyncio
async def test_passes_bytes_both_ways() -> None:
    async with proxied() as (proxy, client):
        assert await roundtrip(client, b"hello") == b"hello"
        assert proxy.connections == 1


@pytest.mark.asyncio
async def test_delay(scaled: Callable[[float], float]) -> None:
    async with proxied() as (proxy, client):
        proxy.delay(0.2)
        start = time.monotonic()
        assert await roundtrip(client, b"x") == b"x"
        assert time.monotonic() - start >= 0.4  # both directions held
        proxy.heal()
        start = time.monotonic()
        await roundtrip(client, b"y")
        assert time.monotonic() - start < scaled(0.2)


@pytest.mark.asyncio
@pytest.mark.parametrize("direction", ["both", "upstream", "downstream"])
async def test_blackhole_holds_bytes_until_healed(direction: str, scaled: Callable[[float], float]) -> None:
    async with proxied() as (proxy, client):
        proxy.blackhole(direction)  # type: ignore[arg-type]
        await client.send(b"held")
        with anyio.move_on_after(scaled(0.3)) as waited:
            await client.receive()
        assert waited.cancelled_caught, "nothing may pass a blackhole"
        proxy.heal()
        with anyio.fail_after(scaled(2)):
            assert await client.receive() == b"held"


@pytest.mark.asyncio
async def test_drop_next_reply_resets_the_connection(scaled: Callable[[float], float]) -> None:
    async with proxied() as (proxy, client):
        assert await roundtrip(client, b"up") == b"up"
        proxy.drop_next_reply()
        await client.send(b"lost reply")
        with (
            anyio.fail_after(scaled(2)),
            pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)),
        ):
            await client.receive()
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as again:
            assert await roundtrip(again, b"next") == b"next"


@pytest.mark.asyncio
async def test_reset_and_refuse(scaled: Callable[[float], float]) -> None:
    async with proxied() as (proxy, client):
        assert await roundtrip(client, b"up") == b"up"  # the link exists before it is reset
        proxy.reset()
        with (
            anyio.fail_after(scaled(2)),
            pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)),
        ):
            await client.receive()
        proxy.refuse()
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as refused:
            with (
                anyio.fail_after(scaled(2)),
                pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)),
            ):
                await refused.receive()
        proxy.heal()
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as healed:
            assert await roundtrip(healed, b"ok") == b"ok"


def test_fenced_resource_refuses_stale_tokens_and_finds_overlaps() -> None:
    resource = FencedResource()
    assert resource.write(5, "a")
    assert resource.write(5, "a")
    assert resource.write(7, "b")
    assert not resource.write(5, "a"), "a lower token after a higher one is stale"
    assert [a.token for a in resource.stale_writes] == [5]
    assert resource.overlaps() == []
    with resource.action(8, "c"), resource.action(9, "d"):
        pass
    (pair,) = resource.overlaps()
    assert {pair[0].holder, pair[1].holder} == {"c", "d"}


def test_fenced_resource_finds_stale_writes_it_accepted() -> None:
    resource = FencedResource()
    assert resource.acquired(7, "a", at=1.0)
    assert resource.write(7, "a", at=1.5)
    # b acquired later with a token that is not higher (broken fencing): a's next write passes.
    assert resource.acquired(7, "b", at=2.0)
    assert resource.write(7, "a", at=2.5)
    assert [(w.holder, w.start) for w in resource.stale_accepted] == [("a", 2.5)]
    # With a higher token the late write is refused, so it is not a stale write accepted.
    fenced = FencedResource()
    fenced.acquired(7, "a", at=1.0)
    fenced.acquired(8, "b", at=2.0)
    assert not fenced.write(7, "a", at=2.5)
    assert fenced.stale_accepted == []
    assert [a.token for a in fenced.stale_writes] == [7]


def test_overlaps_inside_a_fault_window_are_excused() -> None:
    resource = FencedResource()
    resource.record(1, "a", 0.0, 3.0, check=False)  # a paused holder that still believes it holds
    resource.record(2, "b", 2.0, 4.0, check=False)
    resource.record(3, "c", 5.0, 6.0, check=False)
    assert len(resource.overlaps()) == 1
    assert resource.overlaps([Window(1.0, 3.5, frozenset({"a"}), "pause")]) == []
    assert len(resource.overlaps([Window(1.0, 3.5, frozenset({"c"}), "pause")])) == 1, "not a's window"
    assert len(resource.overlaps([Window(2.5, 3.5)])) == 1, "the overlap starts before the window"


def test_holder_event_lines() -> None:
    assert parse_event("held 42 123.5") == HolderEvent("held", 42, 123.5)
    assert parse_event("state - 1.0 SUSPENDED") == HolderEvent("state", None, 1.0, "SUSPENDED")


@pytest.mark.asyncio
async def test_holder_process_reports_writes_blocks_and_release(scaled: Callable[[float], float]) -> None:
    """The holder protocol, on the in-process memory backend of the holder's own process."""
    url = f"memory://holder-{uuid.uuid4().hex[:8]}?ttl=5"
    async with HolderProcess.start(url, "x", "--write-every", "0.02", "--commands") as holder:
        held = await holder.next("held", scaled(20))
        assert held.token is not None
        first = await holder.next("write", scaled(5))
        assert first.token == held.token
        await holder.send(f"block {scaled(30):g}")
        blocked = await holder.next("blocked", scaled(5))
        await holder.send("go")
        unblocked = await holder.next("unblocked", scaled(5))
        assert unblocked.at > blocked.at
        # The write right after the block comes before the loop runs anything else.
        while (write := await holder.next("write", scaled(5))).at < unblocked.at:
            pass  # writes from before the block, reported before it
        after = [e for e in holder.events if e.at >= unblocked.at and e.kind != "state"]
        assert after[0] == unblocked
        assert after[1] == write
        await holder.send("release")
        await holder.next("releasing", scaled(5))
        await holder.next("released", scaled(5))
        assert await holder.wait(scaled(10)) == 0
    assert holder.seen("lost") == []
    assert all(e.at <= time.monotonic() for e in holder.events), "one clock for both processes"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("etcd://h1:1,h2:2/ns/sub?ttl=1", "etcd://127.0.0.1:9/ns/sub?ttl=1"),
        ("etcd://user:pw@h1:1/ns", "etcd://user:pw@127.0.0.1:9/ns"),
        ("consul://h:1?ttl=2", "consul://127.0.0.1:9?ttl=2"),
        ("zk://h:1", "zk://127.0.0.1:9"),
    ],
)
def test_a_proxied_url_names_the_proxy_only(url: str, expected: str) -> None:
    assert _with_hosts(url, "127.0.0.1:9") == expected
