"""A small election service: every node joins the group ``nodes`` and campaigns to lead;
``GET /info`` shows this node, the leader and the active nodes.

    pip install coordination aiohttp
    python examples/info_service.py --node node-a --port 8081 --url memory://
    python examples/info_service.py --node node-a --port 8081 --url zookeeper://127.0.0.1:2181/svc
    curl localhost:8081/info
    {"node": "node-a", "leader": "node-a", "nodes": ["node-a", "node-b"]}

Start it several times with other ``--node`` and ``--port`` values (on ZooKeeper, etcd or
Consul): one leads; kill it and another takes over; ``nodes`` follows who is up.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import anyio
from aiohttp import web

import coordination

COORDINATOR = web.AppKey("coordinator", coordination.Coordinator)
NODE = web.AppKey("node", str)


async def info(request: web.Request) -> web.Response:
    coord, node = request.app[COORDINATOR], request.app[NODE]
    leader = await coord.election("leader").leader()
    members = await coord.group("nodes").members()
    return web.json_response(
        {
            "node": node,
            "leader": leader.value.decode() if leader else None,
            "nodes": sorted(member.value.decode() for member in members),
        }
    )


async def leader_work(leadership: coordination.Leadership) -> None:
    """The leader's work: runs while this node leads, cancelled if leadership is lost."""
    await anyio.sleep_forever()


async def lead_forever(coord: coordination.Coordinator, node: str) -> None:
    """Lead whenever possible: campaign, work while leader, campaign again after a loss."""
    await coord.election("leader").run(leader_work, node.encode(), min_interval=1.0)


def make_app(url: str, node: str) -> web.Application:
    app = web.Application()
    app[NODE] = node
    app.router.add_get("/info", info)

    async def coordination_context(app: web.Application) -> AsyncIterator[None]:
        # The coordinator runs in a task of its own, from the app's start to its cleanup:
        # its cancel scopes then never interleave with another app's in one process.
        started, stop = asyncio.Event(), asyncio.Event()

        async def run() -> None:
            async with (
                coordination.connect(url) as coord,
                anyio.create_task_group() as tg,
                coord.group("nodes").join(node.encode()),
            ):
                tg.start_soon(lead_forever, coord, node)
                app[COORDINATOR] = coord
                started.set()
                await stop.wait()
                tg.cancel_scope.cancel()

        task = asyncio.create_task(run())
        waiting = asyncio.ensure_future(started.wait())
        await asyncio.wait([task, waiting], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if task.done():
            task.result()  # it failed to start: raise its error
        yield
        stop.set()
        await task

    app.cleanup_ctx.append(coordination_context)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="memory://", help="the coordination backend (default memory://)")
    parser.add_argument("--node", required=True, help="this node's name")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    web.run_app(make_app(args.url, args.node), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
