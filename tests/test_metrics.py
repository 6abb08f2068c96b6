"""OpenTelemetry metrics on the memory backend (the scenario of tests/_metrics_scenario.py),
and that nothing is recorded, and nothing fails, without the ``otel`` extra."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
from _metrics_scenario import check, run_scenario

import coordination

asyncio = pytest.mark.asyncio


@asyncio
async def test_the_scenario_records_what_it_did(scaled: Callable[[float], float]) -> None:
    seen, prefix = await run_scenario("memory://metrics", scaled, ttl=1.5)
    check(seen, "memory", prefix)


def test_without_opentelemetry_nothing_is_recorded_and_nothing_fails() -> None:
    """``opentelemetry`` made unimportable (as without the extra): a lock and an election
    work, and the instruments are off."""
    program = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None  # import opentelemetry... raises ImportError
        import anyio, coordination

        async def main():
            async with coordination.connect("memory://no-otel") as coord:
                assert not coord._engine.metrics.enabled
                async with coord.lock("x") as held:
                    assert held.held
                async with coord.election("e").campaign(b"v"):
                    pass
            print("ok")

        anyio.run(main)
        """
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@asyncio
async def test_closing_with_a_lock_held_is_not_a_loss() -> None:
    """A holding ended by closing its coordinator records its hold, but no ``coordination.lost``."""
    from _metrics_scenario import added, points, reader

    reader()
    before = points()
    async with coordination.connect("memory://metrics-close") as coord:
        await coord.lock("closing/held").acquire()
    seen = added(before, points())
    held = frozenset({("backend", "memory"), ("name", "closing/held")})
    assert seen[("coordination.lock.hold", held)] == 1
    assert not [key for key in seen if key[0] == "coordination.lost"]
