"""A lock holder in its own process, for crash-failover tests.

``python -m coordination.testing.holder URL NAME`` connects, acquires the lock ``NAME``,
prints ``held <token>`` on stdout and then holds it until killed.
"""

from __future__ import annotations

import sys

import anyio

import coordination


async def _hold(url: str, name: str) -> None:
    async with coordination.connect(url) as coord, coord.lock(name) as held:
        print(f"held {held.token}", flush=True)
        await anyio.sleep_forever()


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: python -m coordination.testing.holder URL NAME")
    anyio.run(_hold, sys.argv[1], sys.argv[2])


if __name__ == "__main__":
    main()
