"""The conformance suite every backend passes, and what it needs to run.

* :mod:`coordination.testing.suite` — the test mixins (``LockTests``, ``ElectionTests``,
  ``ConfigTests``, ``SessionTests``, ``BadInputTests``, ``GroupTests``);
* :mod:`coordination.testing.guarded` — ``GuardedWriteTests``: config writes guarded by a
  lock or leadership, refused by the server once it is not the owner;
* :mod:`coordination.testing.leader_loop` — ``LeaderLoopTests``: ``election.run()``, the
  leader loop that re-queues;
* :mod:`coordination.testing.faults` — ``FaultTests``, the fault suite (marked ``faults``);
* :mod:`coordination.testing.cluster` — ``ClusterFaultTests``, the cluster fault suite
  (marked ``faults`` and ``cluster``): nodes of a server cluster killed, cut off, restarted;
* :class:`CoordinationFixtures` — the fixture base class a backend fills in;
* :mod:`coordination.testing.plugin` — the pytest plugin (``--coordination-url``,
  ``--coordination-timeout-multiplier``), loaded automatically;
* :mod:`coordination.testing.conformance` — the suite against ``--coordination-url``:
  ``pytest --pyargs coordination.testing.conformance --coordination-url etcd://host:2379``;
* :mod:`coordination.testing.servers` — real ZooKeeper, etcd and Consul test servers;
* the fault tools: :mod:`~coordination.testing.proxy` (a TCP fault proxy),
  :mod:`~coordination.testing.checker` (a fenced resource), :mod:`~coordination.testing.holder`
  (a lock holder process and its parent side) and :mod:`~coordination.testing.soak`
  (``python -m coordination.testing.soak --backend etcd --processes 4 --minutes 10``).

Needs the ``testing`` extra: ``pip install coordination[testing]``. The names below are
imported on first use, so loading the pytest plugin stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cluster import ClusterFaultTests
    from .faults import FaultTests
    from .fixtures import ClusterHarness, CoordinationFixtures, Harness, Recorder, SharedCluster
    from .guarded import GuardedWriteTests
    from .leader_loop import LeaderLoopTests
    from .suite import BadInputTests, ConfigTests, ElectionTests, GroupTests, LockTests, SessionTests

__all__ = [
    "BadInputTests",
    "ClusterFaultTests",
    "ClusterHarness",
    "ConfigTests",
    "CoordinationFixtures",
    "ElectionTests",
    "FaultTests",
    "GroupTests",
    "GuardedWriteTests",
    "Harness",
    "LeaderLoopTests",
    "LockTests",
    "Recorder",
    "SessionTests",
    "SharedCluster",
]

_WHERE = {
    "ClusterFaultTests": ".cluster",
    "ClusterHarness": ".fixtures",
    "CoordinationFixtures": ".fixtures",
    "Harness": ".fixtures",
    "Recorder": ".fixtures",
    "SharedCluster": ".fixtures",
    "FaultTests": ".faults",
    "GuardedWriteTests": ".guarded",
    "LeaderLoopTests": ".leader_loop",
    "BadInputTests": ".suite",
    "ConfigTests": ".suite",
    "ElectionTests": ".suite",
    "GroupTests": ".suite",
    "LockTests": ".suite",
    "SessionTests": ".suite",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)
