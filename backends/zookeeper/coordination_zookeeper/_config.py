"""Config values as znodes ``/<namespace>/<name>`` (data: the value; version: its ``mzxid``),
written plainly or guarded: one ``multi`` of a check of the owner's node and the write.

A znode whose data is null is an absent value (a parent of other names' znodes). Written
once here for the backend's plain writes and the session's guarded ones (``guard``: the
path of the node that must still exist, else NotHeld and nothing written).
"""

from __future__ import annotations

from coordination import Versioned
from coordination.exceptions import NotHeld

from ._client import BadVersion, NodeExists, NoNode, NotEmpty, ZooKeeperClient, parent_of

__all__ = ["compare_and_set", "delete_value", "read_value", "write_value"]


async def read_value(client: ZooKeeperClient, key: str) -> Versioned | None:
    try:
        data, stat = await client.get("/" + key, sync=True)
    except NoNode:
        return None
    return None if data is None else Versioned(data, stat.mzxid)


async def write_value(client: ZooKeeperClient, key: str, value: bytes, guard: str | None = None) -> int:
    path = "/" + key
    while True:
        try:
            return (await client.set_data(path, value, guard=guard)).mzxid
        except NoNode:
            pass
        try:
            return (await client.create(path, value, guard=guard))[1].mzxid
        except NodeExists:
            continue
        except NoNode:
            await client.ensure_path(parent_of(path))


async def compare_and_set(
    client: ZooKeeperClient, key: str, value: bytes, expected: int | None, guard: str | None = None
) -> bool:
    path = "/" + key
    while True:
        try:
            data, stat = await client.get(path)
        except NoNode:
            if expected is not None:
                return await _unchanged(client, guard)
            try:
                await client.create(path, value, guard=guard)
                return True
            except NodeExists:
                continue
            except NoNode:
                await client.ensure_path(parent_of(path))
                continue
        current = None if data is None else stat.mzxid
        if current != expected:
            return await _unchanged(client, guard)
        try:
            await client.set_data(path, value, stat.version, guard=guard)
            return True
        except (BadVersion, NoNode):
            if expected is not None:
                return await _unchanged(client, guard)  # it changed after our read
            continue  # absent, and still maybe absent: look again


async def delete_value(client: ZooKeeperClient, key: str, guard: str | None = None) -> bool:
    path = "/" + key
    while True:
        try:
            data, stat = await client.get(path)
        except NoNode:
            return await _unchanged(client, guard)
        if data is None:
            return await _unchanged(client, guard)
        try:
            await client.delete(path, stat.version, guard=guard)
            return True
        except NoNode:
            return await _unchanged(client, guard)
        except BadVersion:
            continue
        except NotEmpty:
            pass
        try:  # it has children: keep the znode, clear its value
            await client.set_data(path, None, stat.version, guard=guard)
            return True
        except NoNode:
            return await _unchanged(client, guard)
        except BadVersion:
            continue


async def _unchanged(client: ZooKeeperClient, guard: str | None) -> bool:
    """``False``: nothing to write (not the expected version, nothing to delete), answered
    only if the guard still holds (NotHeld if not): its node exists after the read that
    decided, so it existed then (a node's unique name never comes back)."""
    if guard is not None and await client.exists(guard) is None:
        raise NotHeld(f"the node {guard!r} is gone")
    return False
