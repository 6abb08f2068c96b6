"""``coordination demo``: services elect a leader that runs a job; the leader dies; failover.

Every service is a real client with its own connection and session. The job writes to a
*fenced* resource that refuses a write carrying a token lower than one it has seen, so
the transcript shows why fencing tokens matter.
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
import uuid
from contextlib import AsyncExitStack

import anyio

from . import Coordinator, LeadershipLost, connect
from .testing.checker import FencedResource

NAMES = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]
STEP = 0.4  # seconds between job steps


class Transcript:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def say(self, who: str, message: str) -> None:
        print(f"[{time.monotonic() - self.start:5.2f}s] {who:<8} {message}", flush=True)


async def run_demo(url: str, *, services: int = 3) -> int:
    if not 2 <= services <= len(NAMES):
        print(f"coordination: error: --services must be 2 to {len(NAMES)}", file=sys.stderr)
        return 2
    if url.startswith("memory://") and url.rstrip("/") == "memory:":
        url = f"memory://demo-{uuid.uuid4().hex[:8]}"
    ttl = 3.0
    logging.getLogger("coordination").setLevel(logging.ERROR)  # the transcript tells the story
    out = Transcript()
    resource = FencedResource()
    terms: list[tuple[str, int]] = []  # (service, token), in order of leadership
    names = NAMES[:services]
    steps: dict[str, int] = {}

    print(f"coordination demo: {services} services elect a leader on {url} (session ttl {ttl:g}s)\n")
    async with AsyncExitStack() as stack:
        coords: dict[str, Coordinator] = {}
        for name in names:
            coords[name] = await stack.enter_async_context(connect(url, identity=name, ttl=ttl))
        observer = await stack.enter_async_context(connect(url, identity="observer", ttl=ttl))
        election_name = "demo/scheduler"
        first_term, newer_write, done = anyio.Event(), anyio.Event(), anyio.Event()

        async def service(name: str) -> None:
            coord = coords[name]
            out.say(name, f"campaigns in election {election_name!r} (session {coord.session_id})")
            while not done.is_set():
                token = 0
                try:
                    async with coord.election(election_name).campaign(name.encode()) as leadership:
                        token = leadership.token
                        terms.append((name, token))
                        out.say(name, f"is LEADER with fencing token {token}; starts the nightly job")
                        first_term.set()
                        while True:
                            await anyio.sleep(STEP)
                            steps[name] = steps.get(name, 0) + 1
                            resource.write(token, name)
                            if len(terms) > 1:
                                newer_write.set()
                            out.say(name, f"job step {steps[name]} written with token {token}: accepted")
                            if len(terms) == 2 and steps[name] >= 4:
                                out.say(name, "finished its job and resigns")
                                break
                            if len(terms) == 3:
                                done.set()
                                break
                except LeadershipLost as exc:
                    out.say(name, f"job cancelled, {type(exc).__name__}: {exc}")
                    await newer_write.wait()
                    refused = not resource.write(token, name)
                    out.say(
                        name,
                        f"wakes from its pause and writes with its old token {token}: "
                        + (
                            f"REFUSED (the resource has seen token {resource.highest})"
                            if refused
                            else "ACCEPTED?!"
                        ),
                    )
                    out.say(name, f"rejoins the election on a new session ({coord.session_id})")

        async def watch_leader() -> None:
            async for leader in observer.election(election_name).observe():
                shown = "none" if leader is None else f"{leader.value.decode()} (token {leader.token})"
                out.say("observer", f"sees leader: {shown}")

        with anyio.fail_after(25):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch_leader)
                for name in names:
                    tg.start_soon(service, name)
                await first_term.wait()
                await anyio.sleep(STEP * 3.5)
                leader, _ = terms[-1]
                victim = coords[leader]
                out.say("demo", f"FREEZES {leader} (think: a long GC pause): its session {victim.session_id}")
                out.say(
                    "demo",
                    f"stops being renewed; the demo expires it now rather than wait out the {ttl:g}s ttl",
                )
                # From the victim's own coordinator: ZooKeeper can end only a session it opened.
                await victim.expire_session(victim.session_id or "")
                await done.wait()
                tg.cancel_scope.cancel()

    tokens = [token for _, token in terms]
    print()
    print(f"leaders in order: {', '.join(f'{n} (token {t})' for n, t in terms)}")
    print(f"fencing tokens strictly increase: {all(a < b for a, b in itertools.pairwise(tokens))}")
    print(f"fenced writes accepted: {resource.accepted}, stale writes refused: {len(resource.stale_writes)}")
    print(f"demo finished in {time.monotonic() - out.start:.1f}s")
    return 0
