"""OpenTelemetry metrics, recorded through the global MeterProvider when the ``otel`` extra
(``opentelemetry-api``) is installed; without it every recording is a no-op.

The meter is ``coordination``; the instruments (see the README's "Metrics"):

=================================== ========= ====================================================
``coordination.lock.wait``          histogram seconds from ``acquire()`` to the lock held
``coordination.lock.hold``          histogram seconds a lock was held (to its release or loss)
``coordination.election.campaign``  histogram seconds from ``campaign()`` to leadership
``coordination.leadership.changes`` counter   terms this coordinator began (it became leader)
``coordination.session.transitions`` counter  session state changes, attribute ``state``
``coordination.keepalive.rtt``      histogram seconds a keepalive took to be acknowledged
``coordination.lost``               counter   locks and leaderships lost, attribute ``kind``
=================================== ========= ====================================================

Every data point carries ``backend`` (the URL scheme); locks and elections also ``name``
(the lock or election name, without the namespace). Semaphore slots and read/write locks
count as locks, with ``kind`` (``semaphore``, ``read``, ``write``) on their data points.
Never a value, an identity, a session id or a secret: attributes are labels of time series,
and those would make one per holder.
"""

from __future__ import annotations

from typing import Any

__all__ = ["METER", "SECONDS_BUCKETS", "Metrics"]

METER = "coordination"

SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""The histograms' bucket boundaries (advised; a view may override them): seconds from a
millisecond (a keepalive on loopback) to a minute (a lock waited for)."""

try:
    import opentelemetry.metrics as _otel
except ImportError:  # the otel extra is not installed
    _otel = None  # type: ignore[assignment]


class Metrics:
    """The instruments of one coordinator, bound to its backend's name."""

    def __init__(self, backend: str) -> None:
        self._backend = {"backend": backend}
        self.enabled = _otel is not None
        if _otel is None:
            return
        # get_meter() on the global provider: a proxy until the application sets one, so a
        # provider set after connect() still receives everything.
        meter = _otel.get_meter(METER)
        seconds: dict[str, Any] = {"unit": "s", "explicit_bucket_boundaries_advisory": SECONDS_BUCKETS}
        self._lock_wait = meter.create_histogram(
            "coordination.lock.wait", description="Time from acquire() to the lock held", **seconds
        )
        self._lock_hold = meter.create_histogram(
            "coordination.lock.hold", description="Time a lock was held, to its release or loss", **seconds
        )
        self._campaign = meter.create_histogram(
            "coordination.election.campaign", description="Time from campaign() to leadership", **seconds
        )
        self._changes = meter.create_counter(
            "coordination.leadership.changes", description="Terms this coordinator began as leader"
        )
        self._transitions = meter.create_counter(
            "coordination.session.transitions", description="Session state changes, by the state entered"
        )
        self._rtt = meter.create_histogram(
            "coordination.keepalive.rtt", description="Time a keepalive took to be acknowledged", **seconds
        )
        self._lost = meter.create_counter(
            "coordination.lost", description="Locks and leaderships lost, by kind (lock or election)"
        )

    def _named(self, name: str, **more: Any) -> dict[str, Any]:
        return {**self._backend, "name": name, **more}

    def _lock_named(self, kind: str, name: str) -> dict[str, Any]:
        """A plain lock's attributes, or a semaphore's and read/write lock's with their kind."""
        return self._named(name) if kind == "lock" else self._named(name, kind=kind)

    def acquired(self, kind: str, name: str, waited: float) -> None:
        """A lock was acquired, or leadership won, ``waited`` seconds after it was asked for."""
        if not self.enabled:
            return
        if kind != "election":  # a lock, a semaphore slot, a read/write lock's side
            self._lock_wait.record(waited, self._lock_named(kind, name))
        else:
            self._campaign.record(waited, self._named(name))
            self._changes.add(1, self._named(name))

    def ended(self, kind: str, name: str, held: float, *, lost: bool) -> None:
        """A lock or leadership ended after ``held`` seconds: released (resigned) or lost."""
        if not self.enabled:
            return
        if kind != "election":
            self._lock_hold.record(held, self._lock_named(kind, name))
        if lost:
            self._lost.add(1, self._named(name, kind=kind))

    def transition(self, state: str) -> None:
        if self.enabled:
            self._transitions.add(1, {**self._backend, "state": state})

    def keepalive(self, rtt: float) -> None:
        if self.enabled:
            self._rtt.record(rtt, self._backend)
