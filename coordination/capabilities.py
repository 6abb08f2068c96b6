"""Capabilities a backend declares (never discovered at run time)."""

from __future__ import annotations

import enum

__all__ = ["Capability"]


class Capability(enum.Enum):
    """A feature that not every backend has.

    ``coord.capabilities`` is the frozenset a backend declares. The conformance suite runs
    a test that needs a capability only where it is declared, and reports the others by
    the capability's name.
    """

    CROSS_PROCESS = "cross_process"
    """Sessions in different processes and hosts share locks, elections and config."""

    EVERY_VERSION = "every_version"
    """``config.watch()`` yields every intermediate version, not only the latest."""

    FAIR = "fair"
    """Waiters acquire in the order they started waiting (FIFO)."""

    SINGLE_WAKEUP = "single_wakeup"
    """A release wakes only the next waiter, not every waiter (no thundering herd)."""

    EXPIRE_SESSION = "expire_session"
    """``Backend.expire_session()`` can end any session from another client."""

    SHARED_QUEUE = "shared_queue"
    """A lock and an election of the same name are one contender queue: while one is held,
    the other waits (etcd's and ZooKeeper's recipes lay both out under the name, so their
    own tools see them so). Without it, the two are independent."""

    GUARDED_WRITES = "guarded_writes"
    """``config.set/compare_and_set/delete(..., guard=held)``: the server itself checks, in
    the same atomic operation as the write, that the holding still owns its lock or leads its
    election, and refuses the write (writing nothing) once it does not."""
