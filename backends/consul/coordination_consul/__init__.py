"""Consul backend of `coordination`: ``consul://host:8500/namespace``.

Installing the distribution ``coordination-consul`` registers the ``consul`` scheme::

    async with coordination.connect("consul://127.0.0.1:8500/myapp?ttl=15") as coord:
        async with coord.lock("jobs/nightly") as held:   # the key myapp/jobs/nightly/.lock
            ...

Locks are wire-compatible with ``consul lock``; see :class:`ConsulBackend` for the layout,
the options and the declared capabilities.
"""

from ._backend import ConsulBackend
from ._session import LOCK_FLAG_VALUE, ConsulSession, lock_key, token_of

__all__ = ["LOCK_FLAG_VALUE", "ConsulBackend", "ConsulSession", "lock_key", "token_of"]
