"""A lock holder process for the crash-failover measurement; it is SIGKILLed while holding.

    python -m benchmarks.holder IMPL URL NAME TTL [LOCK_DELAY]

``URL`` is the SDK's URL with the namespace (``etcd://127.0.0.1:2379/bench-1234``); each
implementation takes the same lock its waiter in the benchmark process contends for. It
prints ``held`` once it holds the lock, then keeps its session alive until killed.
"""

from __future__ import annotations

import sys
import threading
import uuid
from urllib.parse import urlsplit

import anyio


async def hold(impl: str, url: str, name: str, ttl: float, lock_delay: float) -> None:
    parts = urlsplit(url)
    host, port, namespace = parts.hostname or "127.0.0.1", parts.port or 0, parts.path.strip("/")
    if impl == "sdk":
        import coordination

        options = {"lock_delay": lock_delay} if url.startswith("consul:") else {}
        async with coordination.connect(url, ttl=ttl, **options) as coord, coord.lock(name):
            print("held", flush=True)
            await anyio.sleep_forever()
    elif impl == "raw-zookeeper":
        from ._zookeeper import AiozkRawLock, ZKClient

        client = ZKClient(f"{host}:{port}", session_timeout=ttl)
        await client.start()
        await AiozkRawLock(client, f"/{namespace}/{name}").acquire()
        print("held", flush=True)
        await anyio.sleep_forever()
    elif impl == "raw-etcd":
        import aetcd  # type: ignore[import-untyped]

        from ._etcd import AetcdRawLock

        async with aetcd.Client(host=host, port=port) as client:
            lease = await client.lease(int(ttl))
            await AetcdRawLock(client, lease.id, f"{namespace}/{name}-raw/".encode()).acquire()
            print("held", flush=True)
            while True:
                await anyio.sleep(ttl / 3)
                await lease.refresh()
    elif impl == "raw-consul":
        from ._consul import PyConsulRawLock, client, create_session

        c = client(host, port)
        session = await create_session(c, ttl, lock_delay)
        await PyConsulRawLock(c, session, f"{namespace}/{name}-raw/.lock").acquire()
        print("held", flush=True)
        while True:
            await anyio.sleep(ttl / 2)
            await c.session.renew(session)
    elif impl == "kazoo":
        from kazoo.client import KazooClient

        zk = KazooClient(hosts=f"{host}:{port}", timeout=ttl)
        zk.start(timeout=15)
        zk.Lock(f"/{namespace}/{name}-kazoo", "bench").acquire()
        print("held", flush=True)
        threading.Event().wait()
    elif impl == "tooz-etcd":
        from tooz import coordination as tooz

        coordinator = tooz.get_coordinator(
            f"etcd3+http://{host}:{port}?lock_timeout={max(1, int(ttl))}&timeout=10",
            uuid.uuid4().hex.encode(),
        )
        coordinator.start(start_heart=True)  # the heart refreshes the lock's lease
        assert coordinator.get_lock(f"{namespace}-{name}".encode()).acquire(blocking=True)
        print("held", flush=True)
        threading.Event().wait()
    else:
        sys.exit(f"unknown holder {impl!r}")


def main() -> None:
    if len(sys.argv) not in (5, 6):
        sys.exit(__doc__)
    impl, url, name, ttl = sys.argv[1:5]
    lock_delay = float(sys.argv[5]) if len(sys.argv) == 6 else 0.0
    anyio.run(hold, impl, url, name, float(ttl), lock_delay)


if __name__ == "__main__":
    main()
