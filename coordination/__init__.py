"""Leader election, distributed locks and config watch for asyncio, on any backend.

::

    import coordination

    async with coordination.connect("etcd://127.0.0.1:2379/myapp") as coord:
        async with coord.lock("jobs/nightly") as held:
            await run_job(fencing_token=held.token)

``connect()`` picks the backend from the URL scheme (``memory``, ``zookeeper``/``zk``,
``etcd``, ``consul``) through the entry-point group ``coordination.backends``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import Any

from ._coordinator import Coordinator
from ._types import Leader, Member, SessionState, Versioned
from ._url import default_identity, parse_url, resolve_options
from .abc import Backend
from .capabilities import Capability
from .exceptions import (
    AcquireTimeout,
    BackendNotFound,
    CoordinationError,
    InvalidName,
    InvalidURL,
    LeadershipLost,
    LockLost,
    NotHeld,
    OperationTimeout,
    PermissionDenied,
    SemaphoreConflict,
    SessionExpired,
    Unavailable,
    Unsupported,
)
from .primitives import (
    Campaign,
    Config,
    Counter,
    Election,
    Group,
    HeldLock,
    HeldRead,
    HeldWrite,
    Joining,
    Leadership,
    Lock,
    Membership,
    ReadLock,
    RWLock,
    Semaphore,
    Slot,
    WriteLock,
)

__all__ = [
    "AcquireTimeout",
    "BackendNotFound",
    "Campaign",
    "Capability",
    "Config",
    "CoordinationError",
    "Coordinator",
    "Counter",
    "Election",
    "Group",
    "HeldLock",
    "HeldRead",
    "HeldWrite",
    "InvalidName",
    "InvalidURL",
    "Joining",
    "Leader",
    "Leadership",
    "LeadershipLost",
    "Lock",
    "LockLost",
    "Member",
    "Membership",
    "NotHeld",
    "OperationTimeout",
    "PermissionDenied",
    "RWLock",
    "ReadLock",
    "Semaphore",
    "SemaphoreConflict",
    "SessionExpired",
    "SessionState",
    "Slot",
    "Unavailable",
    "Unsupported",
    "Versioned",
    "WriteLock",
    "connect",
    "find_backend",
    "register",
    "unregister",
]

__version__ = "0.1.0"

ENTRY_POINT_GROUP = "coordination.backends"
DEFAULT_URL = "memory://"

_PACKAGES = {
    "zookeeper": "coordination-zookeeper",
    "zk": "coordination-zookeeper",
    "etcd": "coordination-etcd",
    "consul": "coordination-consul",
}

_registered: dict[str, type[Backend]] = {}


def register(scheme: str, backend: type[Backend]) -> None:
    """Make ``backend`` serve ``scheme://`` URLs in this process (before entry points).

    Meant for tests and for backends not installed as a distribution; undo it with
    :func:`unregister`.
    """
    if not (isinstance(backend, type) and issubclass(backend, Backend)):
        raise TypeError(f"backend must be a coordination.abc.Backend subclass, not {backend!r}")
    _registered[scheme.lower()] = backend


def unregister(scheme: str) -> None:
    """Undo :func:`register` for ``scheme`` (no error if it was not registered)."""
    _registered.pop(scheme.lower(), None)


def find_backend(scheme: str) -> type[Backend]:
    """The :class:`~coordination.abc.Backend` class that serves ``scheme://`` URLs.

    A class :func:`register`-ed for the scheme first, else the entry point of that name in
    the ``coordination.backends`` group. Raises :class:`BackendNotFound` naming the package
    to install. Lets tools read a backend's ``capabilities`` and ``options`` without
    connecting; the conformance suite uses it.
    """
    scheme = scheme.lower()
    if scheme in _registered:
        return _registered[scheme]
    found = entry_points(group=ENTRY_POINT_GROUP, name=scheme)
    for entry_point in found:
        try:
            backend = entry_point.load()
        except ImportError as exc:
            raise BackendNotFound(
                f"the backend for {scheme}:// ({entry_point.value}) failed to import: {exc}; "
                f"reinstall {_PACKAGES.get(scheme, 'its package')}"
            ) from exc
        if not (isinstance(backend, type) and issubclass(backend, Backend)):
            raise BackendNotFound(
                f"entry point {entry_point.value!r} for {scheme}:// is not a Backend subclass"
            )
        return backend
    package = _PACKAGES.get(scheme)
    hint = (
        f"install it with 'pip install {package}'"
        if package
        else f"install a package that provides the {scheme!r} entry point in the {ENTRY_POINT_GROUP!r} group"
    )
    raise BackendNotFound(f"no coordination backend for {scheme}://; {hint}")


def connect(url: str | None = None, *, require: Iterable[Capability] = (), **options: Any) -> Coordinator:
    """Make a :class:`Coordinator` for ``url``; open it with ``async with``.

    ``url`` defaults to ``$COORDINATION_URL``, else ``memory://`` (logged once per process, at
    WARNING: an in-process backend shares nothing with other processes). Its form is
    ``scheme://[user:password@]host[:port][,host[:port]...][/namespace][?option=value&...]``;
    keyword ``options`` override the query. Every backend takes ``ttl`` (session time to
    live, seconds), ``timeout`` (one request, seconds) and ``identity`` (holder identity);
    see each backend's documentation for the rest. ``require`` names capabilities the caller
    relies on (``require={Capability.CROSS_PROCESS}``): a backend that lacks one raises
    :class:`Unsupported`.

    Raises :class:`BackendNotFound` for an unknown scheme, :class:`InvalidURL` for a
    malformed URL or an unknown or ill-typed option, and :class:`Unsupported` for a missing
    required capability; this call itself does no I/O.
    """
    if url is None:
        url = os.environ.get("COORDINATION_URL") or _default_url()
    parsed = parse_url(url)
    backend_class = find_backend(parsed.scheme)
    required = frozenset(require)
    for capability in required:
        if not isinstance(capability, Capability):
            raise TypeError(f"require takes Capability members, not {capability!r}")
    missing = required - backend_class.capabilities
    if missing:
        names = ", ".join(sorted(c.name for c in missing))
        raise Unsupported(f"the {backend_class.scheme} backend ({parsed.scheme}://) lacks {names}")
    values = resolve_options(backend_class.options, parsed.query, options)
    values["identity"] = values["identity"] or default_identity()
    backend = backend_class(parsed, values)
    return Coordinator(backend, ttl=values["ttl"], timeout=values["timeout"], identity=values["identity"])


@functools.cache
def _default_url() -> str:
    """``memory://``, saying so once per process (cached: the warning is logged once)."""
    logging.getLogger("coordination").warning(
        "no URL given and $COORDINATION_URL is not set: using %s, an in-process backend"
        " that no other process shares",
        DEFAULT_URL,
    )
    return DEFAULT_URL
