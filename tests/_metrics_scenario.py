"""The metrics scenario: a known sequence of operations on one backend, and the OpenTelemetry
data points it must add, read back with the SDK's in-memory metric reader.

``reader()`` installs (once per process) an SDK MeterProvider with an InMemoryMetricReader as
the global provider, which the library records through. ``run_scenario(url)`` runs, on two
coordinators ``a`` and ``b``:

1. ``a`` takes and releases the lock ``<n>/job``; ``a`` takes it again, ``b`` asks for it,
   ``a`` releases, ``b`` gets it and releases: 3 waits, 3 holds;
2. ``a`` campaigns in ``<n>/leader`` and leads, and also holds the lock ``<n>/kept``;
3. ``a``'s session is expired from outside (``b.expire_session``): the lock and the
   leadership are lost (1 lost each, the kept lock's hold recorded), ``a``'s session goes
   LOST and a new one CONNECTED;
4. ``b`` campaigns, leads (a second campaign and change), and resigns;

and returns the increase of every data point over the run (the reader is cumulative and the
provider global, so other tests' points are subtracted), keyed by instrument name and
attributes.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import Callable

import anyio
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint

import coordination
from coordination import LeadershipLost, LockLost, SessionState

__all__ = ["Points", "check", "expected", "reader", "run_scenario"]

_READER: InMemoryMetricReader | None = None

Key = tuple[str, frozenset[tuple[str, object]]]
Points = Counter[Key]
"""Instrument name and attributes -> counter value, or a histogram's sample count."""


def reader() -> InMemoryMetricReader:
    """The in-memory reader of the SDK provider set as the global one (set once per process)."""
    global _READER
    if _READER is None:
        _READER = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[_READER]))
    return _READER


def points() -> Points:
    """Every data point of the ``coordination`` meter now."""
    seen: Points = Counter()
    data = reader().get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            if scope.scope.name != "coordination":
                continue
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    key = (metric.name, frozenset((point.attributes or {}).items()))
                    if isinstance(point, HistogramDataPoint):
                        seen[key] += point.count
                    elif isinstance(point, NumberDataPoint):
                        seen[key] += int(point.value)
    return seen


def added(before: Points, after: Points) -> Points:
    return Counter({key: after[key] - before[key] for key in after if after[key] != before[key]})


async def run_scenario(url: str, scaled: Callable[[float], float], **options: object) -> tuple[Points, str]:
    """Run the scenario (module docstring); the points it added, and its names' prefix."""
    reader()
    prefix = f"m{uuid.uuid4().hex[:8]}"
    before = points()
    with anyio.fail_after(scaled(60)):
        async with coordination.connect(url, **options) as a, coordination.connect(url, **options) as b:
            job = f"{prefix}/job"
            await (await a.lock(job).acquire()).release()
            held = await a.lock(job).acquire()
            async with anyio.create_task_group() as tg:
                got: list[coordination.HeldLock] = []

                async def wait() -> None:
                    got.append(await b.lock(job).acquire())

                tg.start_soon(wait)
                await held.release()  # to b, whether it is queued yet or not: 3 waits either way
            await got[0].release()

            leadership = await a.election(f"{prefix}/leader").campaign(b"a-secret-value")
            kept = await a.lock(f"{prefix}/kept").acquire()
            states = a.states()
            assert await anext(states) is SessionState.CONNECTED
            session = a.session_id
            assert session is not None
            await b.expire_session(session)
            async for state in states:
                if state is SessionState.CONNECTED:
                    break
            await states.aclose()
            assert kept.lost
            assert leadership.lost
            for lost in (kept.release(), leadership.resign()):
                with contextlib.suppress(LockLost, LeadershipLost):
                    await lost
            other = await b.election(f"{prefix}/leader").campaign(b"b-secret-value")
            await other.resign()
            await _keepalive_seen(a.backend, before, scaled)
    return added(before, points()), prefix


async def _keepalive_seen(backend: str, before: Points, scaled: Callable[[float], float]) -> None:
    """Wait until a keepalive of this run is recorded (the first comes a third of a TTL in):
    more round trips of ``backend`` than ``before`` (other tests' are in the reader too)."""
    key = ("coordination.keepalive.rtt", frozenset({("backend", backend)}))
    with anyio.fail_after(scaled(20)):
        while points()[key] <= before[key]:  # noqa: ASYNC110 - the reader has no event to wait on
            await anyio.sleep(0.05)


def expected(backend: str, prefix: str) -> Points:
    """What the scenario adds (a keepalive round trip at least once, counted apart)."""
    b = ("backend", backend)

    def key(instrument: str, **attributes: str) -> tuple[str, frozenset[tuple[str, object]]]:
        return instrument, frozenset({b, *attributes.items()})

    return Points(
        {
            key("coordination.lock.wait", name=f"{prefix}/job"): 3,
            key("coordination.lock.hold", name=f"{prefix}/job"): 3,
            key("coordination.lock.wait", name=f"{prefix}/kept"): 1,
            key("coordination.lock.hold", name=f"{prefix}/kept"): 1,
            key("coordination.election.campaign", name=f"{prefix}/leader"): 2,
            key("coordination.leadership.changes", name=f"{prefix}/leader"): 2,
            key("coordination.lost", name=f"{prefix}/kept", kind="lock"): 1,
            key("coordination.lost", name=f"{prefix}/leader", kind="election"): 1,
            key("coordination.session.transitions", state="CONNECTED"): 3,
            key("coordination.session.transitions", state="LOST"): 3,  # a's expiry; a, b closed
        }
    )


def check(seen: Points, backend: str, prefix: str) -> None:
    """The scenario's points, exactly, and attributes that are labels, never values."""
    rtt = [count for (name, _), count in seen.items() if name == "coordination.keepalive.rtt"]
    assert rtt, "no keepalive round trip recorded"
    assert {key for key in seen if key[0] == "coordination.keepalive.rtt"} == {
        ("coordination.keepalive.rtt", frozenset({("backend", backend)}))
    }
    others = Points({key: count for key, count in seen.items() if key[0] != "coordination.keepalive.rtt"})
    # A keepalive slow on a busy machine adds SUSPENDED and a CONNECTED again: counted apart.
    suspended = others.pop(
        ("coordination.session.transitions", frozenset({("backend", backend), ("state", "SUSPENDED")})), 0
    )
    wanted = expected(backend, prefix)
    wanted[
        ("coordination.session.transitions", frozenset({("backend", backend), ("state", "CONNECTED")}))
    ] += suspended
    assert others == wanted
    for _, attributes in seen:
        assert {name for name, _ in attributes} <= {"backend", "name", "state", "kind"}
        assert not any("secret" in str(value) for _, value in attributes)
