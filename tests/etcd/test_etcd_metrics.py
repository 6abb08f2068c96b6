"""The metrics scenario (tests/_metrics_scenario.py) on a real etcd: the same counts as on
the memory backend (tests/test_metrics.py), attributes ``backend="etcd"``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from _metrics_scenario import check, run_scenario

asyncio = pytest.mark.asyncio


@asyncio
async def test_the_scenario_records_what_it_did(etcd_url: str, scaled: Callable[[float], float]) -> None:
    seen, prefix = await run_scenario(etcd_url, scaled, ttl=3)
    check(seen, "etcd", prefix)
