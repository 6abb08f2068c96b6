"""The one error tree of `coordination`.

Every error this library raises on purpose is a :class:`CoordinationError`. Where an
existing built-in category fits, the error is also that built-in, so ``except ValueError``
or ``except TimeoutError`` clauses keep working::

    CoordinationError
     +-- BackendNotFound        (also LookupError)  no backend for the URL scheme
     +-- InvalidURL             (also ValueError)   malformed URL, unknown or ill-typed option
     +-- InvalidName            (also ValueError)   bad lock / election / config name
     +-- Unavailable                                the backend cannot be reached
     +-- OperationTimeout       (also TimeoutError) one backend request took too long
     +-- AcquireTimeout         (also TimeoutError) acquire(timeout=...) ran out
     +-- SessionExpired                             the session ended on the server
     +-- LockLost                                   a held lock was lost
     +-- LeadershipLost                             a leadership was lost
     +-- NotHeld                                    release/proclaim/resign of what is not held
     +-- Unsupported                                the backend lacks a capability

Backend client errors are mapped to the most specific error here, never leaked raw; the
original exception is kept as ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "AcquireTimeout",
    "BackendNotFound",
    "CoordinationError",
    "InvalidName",
    "InvalidURL",
    "LeadershipLost",
    "LockLost",
    "NotHeld",
    "OperationTimeout",
    "SessionExpired",
    "Unavailable",
    "Unsupported",
]


class CoordinationError(Exception):
    """Root of every error raised by `coordination`."""


class BackendNotFound(CoordinationError, LookupError):
    """No backend is installed for the URL's scheme; the message names the package."""


class InvalidURL(CoordinationError, ValueError):
    """The URL is malformed, or an option is unknown or has the wrong type."""


class InvalidName(CoordinationError, ValueError):
    """A lock, election or config name breaks the naming rules (checked before any I/O)."""


class Unavailable(CoordinationError):
    """The backend could not be reached or refused the request."""


class OperationTimeout(CoordinationError, TimeoutError):
    """A single backend request did not complete within the operation timeout."""


class AcquireTimeout(CoordinationError, TimeoutError):
    """``acquire(timeout=...)`` or ``campaign(timeout=...)`` ran out of time."""


class SessionExpired(CoordinationError):
    """The session ended: the server expired it, or its local deadline passed."""


class LockLost(CoordinationError):
    """A held lock was lost (its session ended) before it was released."""


class LeadershipLost(CoordinationError):
    """A leadership was lost (its session ended) before it was resigned."""


class NotHeld(CoordinationError):
    """The lock or leadership is not held by this handle (already released or resigned)."""


class Unsupported(CoordinationError):
    """The operation needs a capability this backend does not declare."""
