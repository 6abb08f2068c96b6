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

import os
from importlib.metadata import entry_points
from typing import Any

from ._coordinator import Coordinator
from ._types import Leader, SessionState, Versioned
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
    SessionExpired,
    Unavailable,
    Unsupported,
)
from .primitives import Campaign, Config, Election, HeldLock, Leadership, Lock

__all__ = [
    "AcquireTimeout",
    "BackendNotFound",
    "Campaign",
    "Capability",
    "Config",
    "CoordinationError",
    "Coordinator",
    "Election",
    "HeldLock",
    "InvalidName",
    "InvalidURL",
    "Leader",
    "Leadership",
    "LeadershipLost",
    "Lock",
    "LockLost",
    "NotHeld",
    "OperationTimeout",
    "SessionExpired",
    "SessionState",
    "Unavailable",
    "Unsupported",
    "Versioned",
    "connect",
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


def _find_backend(scheme: str) -> type[Backend]:
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


def connect(url: str | None = None, **options: Any) -> Coordinator:
    """Make a :class:`Coordinator` for ``url``; open it with ``async with``.

    ``url`` defaults to ``$COORDINATION_URL``, else ``memory://``. Its form is
    ``scheme://[user:password@]host[:port][,host[:port]...][/namespace][?option=value&...]``;
    keyword ``options`` override the query. Every backend takes ``ttl`` (session time to
    live, seconds), ``timeout`` (one request, seconds) and ``identity`` (holder identity);
    see each backend's documentation for the rest.

    Raises :class:`BackendNotFound` for an unknown scheme and :class:`InvalidURL` for a
    malformed URL or an unknown or ill-typed option; this call itself does no I/O.
    """
    if url is None:
        url = os.environ.get("COORDINATION_URL") or DEFAULT_URL
    parsed = parse_url(url)
    backend_class = _find_backend(parsed.scheme)
    values = resolve_options(backend_class.options, parsed.query, options)
    values["identity"] = values["identity"] or default_identity()
    backend = backend_class(parsed, values)
    return Coordinator(backend, ttl=values["ttl"], timeout=values["timeout"], identity=values["identity"])
