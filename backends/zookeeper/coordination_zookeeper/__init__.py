"""ZooKeeper backend for coordination: ``zookeeper://`` and ``zk://`` URLs.

Installed as the distribution ``coordination-zookeeper``, it registers
:class:`ZooKeeperBackend` in the entry-point group ``coordination.backends``; use it
through :func:`coordination.connect`::

    async with coordination.connect("zookeeper://zk1:2181,zk2:2181/myapp") as coord:
        async with coord.lock("jobs/nightly") as held:
            ...

Locks and elections use kazoo's node layout, so kazoo clients and this SDK share them.
"""

from ._backend import ZooKeeperBackend

__all__ = ["ZooKeeperBackend"]

__version__ = "0.1.0"
