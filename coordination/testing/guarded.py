"""``GuardedWriteTests``: config writes guarded by a lock or a leadership.

``config.set(value, guard=held)`` (and ``compare_and_set``, ``delete``) is applied only while
``held`` still owns its lock or leads its election, as the server sees it in the same atomic
operation as the write. These tests check that the server is the one that refuses:

* an operator deletes the owner's key or node with the backend's own tool while its session
  lives, another owner takes over, and the old owner's next guarded write is refused and
  writes nothing (a client that only checks ``held.held`` passes everything else here, but
  not this);
* holder processes in pairs, one paused (SIGSTOP) around its TTL while the other takes over;
  in every other round the paused one's guarded write is held in transit by a fault proxy
  and delivered after the takeover. No write of a lower token may be applied after one of a
  higher token, as the server's own versions order them.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pytest

from coordination import (
    Capability,
    Coordinator,
    HeldLock,
    Leadership,
    LeadershipLost,
    LockLost,
    NotHeld,
    Versioned,
)
from coordination.abc import Kind

from .fixtures import Harness
from .holder import HolderEvent, HolderProcess
from .proxy import FaultProxy

__all__ = ["GuardedWriteTests"]

asyncio = pytest.mark.asyncio

KINDS = pytest.mark.parametrize("kind", ["lock", "election"])


async def _take(coord: Coordinator, kind: Kind, name: str, value: bytes = b"a") -> HeldLock | Leadership:
    if kind == "lock":
        return await coord.lock(name).acquire()
    return await coord.election(name).campaign(value)


async def _end(held: HeldLock | Leadership) -> None:
    await (held.release() if isinstance(held, HeldLock) else held.resign())


def _loss(kind: Kind) -> type[LockLost | LeadershipLost]:
    return LockLost if kind == "lock" else LeadershipLost


def _token_of(value: bytes) -> int:
    """The token in a holder's guarded value ``<label> <token> <n>``."""
    return int(value.split()[1])


def _accepted(event: HolderEvent) -> bool:
    return event.kind == "write" and event.detail.startswith("accepted")


@asynccontextmanager
async def _other_owner(harness: Harness, kind: Kind, name: str, config: str) -> AsyncIterator[int]:
    """Another owner of ``name`` that writes ``config`` guarded: a holder process where the
    backend is CROSS_PROCESS, else another session; yields its token once it wrote, and it
    writes once only, so the value stays what it wrote unless someone else writes."""
    if Capability.CROSS_PROCESS in harness.capabilities:
        arguments = ["--guarded", config, "--write-every", "0.05", "--writes", "1", "--label", "b"]
        if kind == "election":
            arguments += ["--election", "b"]
        async with harness.holder(name, *arguments, label="the new owner") as holder:
            written = await holder.first(
                _accepted,
                harness.t(20),
                "a guarded write accepted",
            )
            assert written.token is not None
            yield written.token
        return
    async with harness.session() as b:
        held = await harness.within(10, _take(b, kind, name, b"b"), "the new owner taking over")
        await b.config(config).set(f"b {held.token} 1".encode(), guard=held)
        yield held.token


@dataclass
class _Pair:
    """Two holder processes on one name, each through its own fault proxy."""

    name: str
    config: str
    holders: list[HolderProcess]
    proxies: list[FaultProxy]
    takeovers: int = 0
    in_flight: int = 0
    """Rounds whose paused owner had a guarded write held in transit, delivered after the pause."""
    late: int = 0
    """Of those, the rounds where the other one took over: a stale write reached the server
    after the takeover (its sender's body was cancelled before the answer came)."""
    seen: list[Versioned | None] = field(default_factory=list)
    """What a watch of the config value saw (every version where EVERY_VERSION is declared)."""
    stale_reads: list[str] = field(default_factory=list)


@dataclass
class _Tally:
    attempted: int = 0
    applied: list[str] = field(default_factory=list)
    refused_server: int = 0
    refused_local: int = 0
    unknown: int = 0


async def _first_of(
    holders: Sequence[HolderProcess], matches: Callable[[HolderEvent], bool], what: str
) -> tuple[int, HolderEvent]:
    """The first event of any of ``holders`` that ``matches`` (their index and it)."""
    found: list[tuple[int, HolderEvent]] = []
    async with anyio.create_task_group() as tg:

        async def look(index: int) -> None:
            event = await holders[index].first(matches, math.inf, what)
            found.append((index, event))
            tg.cancel_scope.cancel()

        for index in range(len(holders)):
            tg.start_soon(look, index)
    return found[0]


class GuardedWriteTests:
    """Config writes guarded by a holding: the server refuses them once it is not the owner."""

    pause_rounds = 50
    """Rounds of the pause test per kind (lock, election), over :attr:`pause_pairs` pairs
    (``--coordination-pause-rounds`` overrides it)."""
    pause_pairs = 10
    """Pairs of holder processes of the pause test, each on a name of its own, run at once."""

    @asyncio
    @KINDS
    @pytest.mark.requires(Capability.GUARDED_WRITES)
    async def test_guarded_set_compare_and_set_delete(self, harness: Harness, kind: Kind) -> None:
        """While the guard holds, guarded writes behave as plain ones; compare-and-set needs
        the version too."""
        async with harness.session() as a:
            held = await _take(a, kind, "guard")
            cfg = a.config("guarded")
            v1 = await cfg.set(b"one", guard=held)
            assert await cfg.get() == Versioned(b"one", v1)
            assert await cfg.compare_and_set(b"stale", v1 - 1, guard=held) is False
            assert await cfg.compare_and_set(b"only if absent", None, guard=held) is False
            assert await cfg.get() == Versioned(b"one", v1)
            assert await cfg.compare_and_set(b"two", v1, guard=held) is True
            current = await cfg.get()
            assert current is not None
            assert current.value == b"two"
            assert current.version > v1
            assert await cfg.delete(guard=held) is True
            assert await cfg.get() is None
            assert await cfg.delete(guard=held) is False
            assert await cfg.compare_and_set(b"three", current.version, guard=held) is False
            assert await cfg.compare_and_set(b"three", None, guard=held) is True
            assert (await cfg.get() or Versioned(b"", 0)).value == b"three"
            assert held.held, "guarded writes that were applied must not lose the guard"
            await _end(held)

    @asyncio
    @KINDS
    @pytest.mark.requires(Capability.GUARDED_WRITES)
    async def test_a_released_guard_is_not_held(self, harness: Harness, kind: Kind) -> None:
        """A released (resigned) guard raises NotHeld and writes nothing, also once the same
        session owns the name again; a guard of another coordinator, or not a holding, is
        refused before any I/O."""
        async with harness.sessions(2) as (a, b):
            cfg = a.config("after-release")
            held = await _take(a, kind, "released")
            v1 = await cfg.set(b"before", guard=held)
            await _end(held)
            for write in (
                cfg.set(b"x", guard=held),
                cfg.compare_and_set(b"x", v1, guard=held),
                cfg.delete(guard=held),
            ):
                with pytest.raises(NotHeld):
                    await write
            again = await _take(a, kind, "released")
            for write in (cfg.set(b"x", guard=held), cfg.delete(guard=held)):
                with pytest.raises(NotHeld):
                    await write
            assert await cfg.get() == Versioned(b"before", v1), (
                "a write guarded by a released holding was applied"
            )
            version = await cfg.set(b"y", guard=again)
            assert await cfg.get() == Versioned(b"y", version)
            with pytest.raises(ValueError, match="another coordinator"):
                await b.config("after-release").set(b"z", guard=again)
            with pytest.raises(TypeError, match="guard must be"):
                await cfg.set(b"z", guard=object())  # type: ignore[arg-type]
            assert await cfg.get() == Versioned(b"y", version)
            await _end(again)

    @asyncio
    @KINDS
    @pytest.mark.parametrize("write", ["set", "compare_and_set", "delete"])
    @pytest.mark.requires(Capability.GUARDED_WRITES)
    async def test_the_server_refuses_once_the_owner_was_deleted(
        self, harness: Harness, kind: Kind, write: str
    ) -> None:
        """An operator deletes the owner's key or node (the backend's own tool) while its
        session lives; another owner takes over and writes. The old owner still thinks it
        holds, and its guarded write is refused by the server: its loss error, raised from
        the server's answer, nothing written, the holding lost and its body cancelled."""
        name = f"deleted-{kind}"
        async with harness.session() as a:
            cfg = a.config("cursor")
            held = await _take(a, kind, name)
            await cfg.set(b"a 0 0", guard=held)
            await harness.remove_owner(kind, name)
            async with _other_owner(harness, kind, name, "cursor") as token:
                assert token > held.token
                assert held.held, "nothing told the old owner's client (the test relies on that)"
                before = await cfg.get()
                assert before is not None
                assert _token_of(before.value) == token
                entered, ended = anyio.Event(), []

                async def body() -> None:
                    try:
                        async with held:
                            entered.set()
                            await anyio.sleep_forever()
                    except (LockLost, LeadershipLost) as exc:
                        ended.append(exc)

                with harness.deadline(10, "the refused write cancelling the guarded body"):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(body)
                        await entered.wait()
                        if write == "set":
                            attempt = cfg.set(b"a stale", guard=held)
                        elif write == "compare_and_set":
                            attempt = cfg.compare_and_set(b"a stale", before.version, guard=held)
                        else:
                            attempt = cfg.delete(guard=held)
                        with pytest.raises(_loss(kind)) as refused:
                            await attempt
                after = await cfg.get()
        assert refused.value.__cause__ is not None, "refused without asking the server"
        assert after == before, f"the refused {write} changed the value: {before} -> {after}"
        assert held.lost
        assert not held.held
        assert ended, "the guarded body did not end with the loss error"
        assert isinstance(ended[0], _loss(kind))

    @asyncio
    @KINDS
    @pytest.mark.requires(Capability.GUARDED_WRITES, Capability.CROSS_PROCESS)
    async def test_a_paused_owners_guarded_writes_are_refused(
        self, harness: Harness, request: pytest.FixtureRequest, kind: Kind
    ) -> None:
        """Pairs of holder processes write a config value guarded, every 50 ms. Each round
        SIGSTOPs the owner for a random time around the failover bound (so the other one
        takes over in most rounds); every other round first holds the owner's traffic in its
        fault proxy until its next guarded write is in transit, and delivers it after the
        pause. No write of a lower token is applied after one of a higher token (by the
        versions the server gave them), and the value after each round is the new owner's.
        Sessions have the fault suite's options (a short TTL)."""
        harness = harness.derive(options=harness.fixtures.fault_options(harness.options))
        rng = random.Random(request.node.nodeid)
        pairs: list[_Pair] = []
        total = request.config.getoption("coordination_pause_rounds", default=None) or self.pause_rounds
        rounds = max(1, math.ceil(total / self.pause_pairs))
        async with AsyncExitStack() as stack:
            coord = await stack.enter_async_context(harness.session())
            tg = await stack.enter_async_context(anyio.create_task_group())
            for p in range(self.pause_pairs):
                name, config = f"paused-{kind}-{p}", f"paused-{kind}-{p}-value"
                holders, proxies = [], []
                for i in range(2):
                    proxy, via = await stack.enter_async_context(harness.proxied())
                    arguments = [
                        "--loop",
                        "--guarded",
                        config,
                        "--write-every",
                        "0.05",
                        "--label",
                        f"p{p}h{i}",
                    ]
                    if kind == "election":
                        arguments += ["--election", f"p{p}h{i}"]
                    holder = await stack.enter_async_context(
                        via.holder(name, *arguments, label=f"pair {p} holder {i}")
                    )
                    holders.append(holder)
                    proxies.append(proxy)
                pair = _Pair(name, config, holders, proxies)
                pairs.append(pair)

                async def watch(pair: _Pair = pair) -> None:
                    async for item in coord.config(pair.config).watch():
                        pair.seen.append(item)

                tg.start_soon(watch)
            bound = harness.failover_bound
            with harness.deadline(rounds * (3 * bound + 20) + 30, f"{rounds} pause rounds per pair"):
                async with anyio.create_task_group() as rounds_tg:
                    for pair in pairs:
                        rounds_tg.start_soon(self._pause_rounds, harness, coord, pair, rounds, rng.random())
            tg.cancel_scope.cancel()
        tally = _Tally()
        for pair in pairs:
            self._count(pair, tally)
        takeovers = sum(pair.takeovers for pair in pairs)
        in_flight = sum(pair.in_flight for pair in pairs)
        stale_reads = [read for pair in pairs for read in pair.stale_reads]
        request.node.user_properties.extend(
            [
                ("rounds", rounds * len(pairs)),
                ("takeovers", takeovers),
                ("in_transit_rounds", in_flight),
                ("stale_writes_delivered_late", sum(pair.late for pair in pairs)),
                ("stale_writes_attempted", tally.attempted),
                ("stale_writes_refused_by_server", tally.refused_server),
                ("stale_writes_refused_locally", tally.refused_local),
                ("stale_writes_outcome_unknown", tally.unknown),
                ("stale_writes_applied", len(tally.applied)),
            ]
        )
        assert not tally.applied, (
            f"{len(tally.applied)} stale guarded writes applied, e.g. {tally.applied[:3]}"
        )
        assert not stale_reads, f"the value after a round was not the new owner's: {stale_reads[:3]}"
        assert takeovers >= len(pairs), f"only {takeovers} takeovers in {rounds * len(pairs)} rounds"
        assert tally.attempted, "no stale guarded write was attempted: the test proved nothing"

    async def _pause_rounds(
        self, harness: Harness, coord: Coordinator, pair: _Pair, rounds: int, seed: float
    ) -> None:
        rng = random.Random(seed)
        holders, since = pair.holders, -math.inf
        bound = harness.failover_bound
        for number in range(rounds):
            owner, _event = await harness.within(
                2 * bound + 20,
                _first_of(holders, lambda e: _accepted(e) and e.at > since, "a guarded write accepted"),  # noqa: B023
                f"{pair.name}: a guarded write of an owner, round {number}",
            )
            holder, proxy, other = holders[owner], pair.proxies[owner], holders[1 - owner]
            if number % 2:
                pair.in_flight += 1
                proxy.blackhole("upstream")
                mark = time.monotonic()
                await harness.within(
                    5,
                    holder.first(lambda e: e.kind == "writing" and e.at > mark, math.inf),  # noqa: B023
                    f"{pair.name}: a guarded write sent into the blackhole",
                )
            holder.pause()
            paused = time.monotonic()
            await anyio.sleep(rng.uniform(0.5, 1.5) * bound)  # the fault itself: a pause of this length
            proxy.heal()
            holder.resume()
            # Whatever the paused owner reports after ``paused`` it did after the pause.
            await harness.within(
                bound + 10,
                holder.first(
                    lambda e: e.at > paused and e.kind in ("write", "lost", "cancelled"),  # noqa: B023
                    math.inf,
                ),
                f"{pair.name}: the paused owner going on after the pause",
            )
            since = time.monotonic()
            if any(e.kind == "held" and e.at > paused for e in other.events):
                pair.takeovers += 1
                pair.late += number % 2
            highest = max(
                (e.token or 0 for h in holders for e in h.events if _accepted(e) and e.at < since), default=0
            )
            current = await coord.config(pair.config).get()
            if current is None or _token_of(current.value) < highest:
                pair.stale_reads.append(f"{pair.name} round {number}: {current} after token {highest} wrote")

    @staticmethod
    def _count(pair: _Pair, tally: _Tally) -> None:
        """Stale writes of ``pair``: applied (a lower token's version above a higher token's,
        by the server's versions as the writers were told them and as a watch saw them), and
        attempted (those, and the writes refused or of unknown outcome after a higher token
        held). A write accepted before the takeover whose answer came after is not stale."""
        held_at: dict[int, float] = {}
        for holder in pair.holders:
            for e in holder.events:
                if e.kind == "held" and e.token is not None:
                    held_at[e.token] = min(e.at, held_at.get(e.token, math.inf))
        writes: list[tuple[int, int, str]] = []  # (version, token, who)
        for holder in pair.holders:
            for e in holder.events:
                if e.kind != "write" or e.token is None:
                    continue
                if e.detail.startswith("accepted"):
                    writes.append((int(e.detail.split()[1]), e.token, holder.label))
                    continue  # stale only if applied after a higher token's (below)
                superseded = min((at for token, at in held_at.items() if token > e.token), default=math.inf)
                if e.at > superseded:
                    tally.attempted += 1
                    if e.detail == "refused server":
                        tally.refused_server += 1
                    elif e.detail == "refused local":
                        tally.refused_local += 1
                    else:
                        tally.unknown += 1
        for item in pair.seen:
            if item is not None:
                writes.append((item.version, _token_of(item.value), "the watch"))
        highest, by = 0, ""
        for version, token, who in sorted(writes):
            if token < highest:
                tally.attempted += 1
                tally.applied.append(
                    f"{pair.name}: token {token} ({who}) at version {version} after token {highest} ({by})"
                )
            elif token > highest:
                highest, by = token, who
