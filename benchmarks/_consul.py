"""Consul: this SDK and the same recipe hand-written on py-consul (no peer library has one)."""

from __future__ import annotations

import base64
import contextlib
import json
import warnings
from collections.abc import AsyncIterator
from typing import Any

import anyio
import consul.aio  # type: ignore[import-untyped]

from coordination.testing.servers import ConsulProcess
from coordination_consul import LOCK_FLAG_VALUE

from ._harness import (
    WAKEUPS,
    AsyncLocker,
    BackendImpls,
    LockImpl,
    Signal,
    WatchImpl,
    shielded,
    timed_writes,
    writer_loop,
)
from ._sdk import sdk_impls, sdk_watch


class BenchConsulProcess(ConsulProcess):
    """``consul agent -dev`` that lets one client hold many connections: every blocking query
    (a waiter, a watch) holds one, and the agent's default cap is 200 per client address."""

    def _command(self) -> list[str]:
        command = super()._command()
        config = self.base_dir / "consul.json"
        settings = json.loads(config.read_text())
        settings["limits"] = {"http_max_conns_per_client": 15000}
        config.write_text(json.dumps(settings, indent=2))
        return command


def instrument() -> None:
    """Count blocking queries that returned to a waiting SDK contender."""
    from coordination_consul._client import ConsulClient

    kv_get = ConsulClient.kv_get

    async def counted(self: Any, key: str, *, index: int = 0, wait: float | None = None) -> Any:
        result = await kv_get(self, key, index=index, wait=wait)
        if index:
            WAKEUPS.hit()
        return result

    ConsulClient.kv_get = counted  # type: ignore[method-assign]


def client(host: str, port: int) -> Any:
    with warnings.catch_warnings():  # py-consul's aiohttp connector arguments are deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        return consul.aio.Consul(host=host, port=port)


async def put(c: Any, path: str, body: Any) -> tuple[int, Any]:
    """A PUT through py-consul's HTTP layer, keeping the status (a failed transaction is a 409)."""
    code, text = await c.http.put(lambda r: (r.code, r.body), path, data=json.dumps(body))
    return int(code), json.loads(text) if text else None


async def create_session(c: Any, ttl: float, lock_delay: float) -> str:
    code, body = await put(
        c,
        "/v1/session/create",
        {"TTL": f"{int(ttl * 1000)}ms", "LockDelay": f"{int(lock_delay * 1000)}ms", "Behavior": "release"},
    )
    assert code == 200, body
    return str(body["ID"])


class PyConsulRawLock:
    """The SDK's recipe with nothing else: a transaction locks ``<name>/.lock`` if it is as
    last seen (the token is CreateIndex + LockIndex - 1 of the result); a waiter blocks on a
    consistent query until the key has no session; release checks the session and deletes."""

    def __init__(self, c: Any, session: str, key: str) -> None:
        self._c = c
        self._session = session
        self._key = key
        self._lock = {
            "Verb": "lock",
            "Key": key,
            "Value": base64.b64encode(b"raw").decode(),
            "Flags": LOCK_FLAG_VALUE,
            "Session": session,
        }
        self.token = 0

    async def acquire(self) -> None:
        guard: dict[str, Any] = {"Verb": "check-not-exists", "Key": self._key}
        delay = 0.05
        while True:
            code, body = await put(self._c, "/v1/txn", [{"KV": guard}, {"KV": self._lock}])
            if code == 200:
                result = body["Results"][-1]["KV"]
                self.token = result["CreateIndex"] + result["LockIndex"] - 1
                return
            if "lock delay" in json.dumps(body):  # refused to all until the lock-delay passed
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            index = 0
            while True:  # until the key has no session
                blocking = index > 0
                returned, pair = await self._c.kv.get(
                    self._key, index=index or None, wait="15s", consistency="consistent"
                )
                index = int(returned)
                if blocking:
                    WAKEUPS.hit()
                if pair is None or not pair.get("Session"):
                    break
            guard = (
                {"Verb": "check-not-exists", "Key": self._key}
                if pair is None
                else {"Verb": "check-index", "Key": self._key, "Index": pair["ModifyIndex"]}
            )

    async def release(self) -> None:
        await put(
            self._c,
            "/v1/txn",
            [
                {"KV": {"Verb": "check-session", "Key": self._key, "Session": self._session}},
                {"KV": {"Verb": "delete", "Key": self._key}},
            ],
        )


def consul_impls(host: str, port: int, namespace: str, ttl: float, lock_delay: float) -> BackendImpls:
    url = f"consul://{host}:{port}/{namespace}"

    @contextlib.asynccontextmanager
    async def raw(name: str, ttl: float) -> AsyncIterator[AsyncLocker]:
        c = client(host, port)
        try:
            session = await create_session(c, ttl, lock_delay)

            async def renew() -> None:
                while True:
                    await anyio.sleep(ttl / 2)
                    await c.session.renew(session)

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(renew)
                    try:
                        yield PyConsulRawLock(c, session, f"{namespace}/{name}-raw/.lock")
                    finally:
                        tg.cancel_scope.cancel()
            finally:
                async with shielded():
                    await c.session.destroy(session)
        finally:
            async with shielded():
                await c.close()

    async def write(key: str, seconds: float) -> list[float]:
        c = client(host, port)
        try:
            k = f"{namespace}/{key}"
            return await timed_writes(lambda i: c.kv.put(k, b"%d" % i), seconds)
        finally:
            await c.close()

    async def raw_watch(key: str, samples: int) -> list[float]:
        k = f"{namespace}/{key}-raw"
        writer, watcher = client(host, port), client(host, port)
        try:
            await writer.kv.put(k, b"start")
            signal = Signal()
            ready = anyio.Event()

            async def watch() -> None:
                index = None
                while True:
                    index, pair = await watcher.kv.get(k, index=index, wait="15s", consistency="consistent")
                    ready.set()
                    signal.arrived(pair["Value"] if pair else None)

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await ready.wait()
                await anyio.sleep(0.05)
                latencies = await writer_loop(signal, lambda v: writer.kv.put(k, v), samples)
                tg.cancel_scope.cancel()
            return latencies
        finally:
            await writer.close()
            await watcher.close()

    sdk = sdk_impls(url, lock_delay=lock_delay)
    return BackendImpls(
        backend="consul",
        locks=[
            sdk[0],
            LockImpl("py-consul, same recipe by hand", "raw", open_async=raw, holder="raw-consul"),
            LockImpl("Tooz", "peer", unavailable="Tooz has no Consul driver"),
            LockImpl(
                "python-consul / py-consul lock recipe", "peer", unavailable="py-consul ships no lock recipe"
            ),
            sdk[1],
        ],
        watches=[
            sdk_watch(url, lock_delay=lock_delay),
            WatchImpl("py-consul blocking query by hand", "raw", run=raw_watch),
        ],
        write=write,
        write_name="py-consul kv.put",
        ttl=ttl,
        failover_bound=2 * ttl + lock_delay + 1,
        bound_text=f"2·TTL + lock-delay + 1 s = {2 * ttl + lock_delay + 1:g} s",
        failover_extra={"lock_delay": lock_delay},
    )
