"""The conformance suite every backend passes, and what it needs to run.

* :mod:`coordination.testing.suite` — the test mixins (``LockTests``, ``ElectionTests``,
  ``ConfigTests``, ``SessionTests``, ``BadInputTests``);
* :class:`CoordinationFixtures` — the fixture base class a backend fills in;
* :mod:`coordination.testing.plugin` — the pytest plugin (``--coordination-url``,
  ``--coordination-timeout-multiplier``), loaded automatically;
* :mod:`coordination.testing.conformance` — the suite against ``--coordination-url``:
  ``pytest --pyargs coordination.testing.conformance --coordination-url etcd://host:2379``;
* :mod:`coordination.testing.servers` — real ZooKeeper, etcd and Consul test servers.

Needs the ``testing`` extra: ``pip install coordination[testing]``.
"""

from .fixtures import CoordinationFixtures, Harness
from .suite import BadInputTests, ConfigTests, ElectionTests, LockTests, SessionTests

__all__ = [
    "BadInputTests",
    "ConfigTests",
    "CoordinationFixtures",
    "ElectionTests",
    "Harness",
    "LockTests",
    "SessionTests",
]
