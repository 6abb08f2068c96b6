"""The fault proxy and the fenced-resource checker that fault tests rely on."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

from coordination.testing.checker import FencedResource
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
async def test_delay() -> None:
    async with proxied() as (proxy, client):
        proxy.delay(0.2)
        start = time.monotonic()
        assert await roundtrip(client, b"x") == b"x"
        assert time.monotonic() - start >= 0.4  # both directions held
        proxy.heal()
        start = time.monotonic()
        await roundtrip(client, b"y")
        assert time.monotonic() - start < 0.2


@pytest.mark.asyncio
@pytest.mark.parametrize("direction", ["both", "upstream", "downstream"])
async def test_blackhole_holds_bytes_until_healed(direction: str) -> None:
    async with proxied() as (proxy, client):
        proxy.blackhole(direction)  # type: ignore[arg-type]
        await client.send(b"held")
        with anyio.move_on_after(0.3) as waited:
            await client.receive()
        assert waited.cancelled_caught, "nothing may pass a blackhole"
        proxy.heal()
        with anyio.fail_after(2):
            assert await client.receive() == b"held"


@pytest.mark.asyncio
async def test_drop_next_reply_resets_the_connection() -> None:
    async with proxied() as (proxy, client):
        assert await roundtrip(client, b"up") == b"up"
        proxy.drop_next_reply()
        await client.send(b"lost reply")
        with anyio.fail_after(2), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
            await client.receive()
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as again:
            assert await roundtrip(again, b"next") == b"next"


@pytest.mark.asyncio
async def test_reset_and_refuse() -> None:
    async with proxied() as (proxy, client):
        assert await roundtrip(client, b"up") == b"up"  # the link exists before it is reset
        proxy.reset()
        with anyio.fail_after(2), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
            await client.receive()
        proxy.refuse()
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as refused:
            with anyio.fail_after(2), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
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
