"""The README's ``/info`` service (``examples/info_service.py``), on memory:// and ZooKeeper:
two nodes, one leader, both active; the leader stops and the other takes over."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp.test_utils import TestClient, TestServer

from coordination.testing.servers import ZooKeeperProcess

EXAMPLE = Path(__file__).parent.parent / "examples" / "info_service.py"


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("info_service", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("info_service", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=["memory", "zookeeper"])
def url(request: pytest.FixtureRequest, session_scaled: Callable[[float], float]) -> Iterator[str]:
    if request.param == "memory":
        yield "memory://info-example"
        return
    with ZooKeeperProcess(tick_time_ms=100, start_timeout=session_scaled(60)) as server:
        yield f"{server.url}/info-example?ttl=2"


async def _info(client: TestClient[Any, Any]) -> dict[str, Any]:
    response = await client.get("/info")
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


@pytest.mark.asyncio
async def test_info_shows_this_node_the_leader_and_the_active_nodes(
    url: str, scaled: Callable[[float], float]
) -> None:
    example = _example()
    a = TestClient(TestServer(example.make_app(url, "node-a")))
    b = TestClient(TestServer(example.make_app(url, "node-b")))
    await a.start_server()
    await b.start_server()
    try:

        async def settled(client: TestClient[Any, Any], nodes: list[str]) -> dict[str, Any]:
            while True:
                info = await _info(client)
                if info["nodes"] == nodes and info["leader"] in nodes:
                    return info
                await anyio.sleep(0.02)

        with anyio.fail_after(scaled(10)):
            info_a = await settled(a, ["node-a", "node-b"])
            info_b = await settled(b, ["node-a", "node-b"])
        assert (info_a["node"], info_b["node"]) == ("node-a", "node-b")
        assert info_a["leader"] == info_b["leader"], "one leader, seen alike by both nodes"
        leader, other = (a, b) if info_a["leader"] == "node-a" else (b, a)
        survivor = "node-b" if leader is a else "node-a"
        await leader.close()
        with anyio.fail_after(scaled(10)):
            info = await settled(other, [survivor])
        assert info["leader"] == survivor, "the other node took over"
    finally:
        await a.close()
        await b.close()
