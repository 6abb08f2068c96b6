"""The one error tree of `coordination`.

Every error this library raises on purpose is a :class:`CoordinationError`. Where an
existing built-in category fits, the error is also that built-in, so ``except ValueError``
or ``except TimeoutError`` clauses keep working::

    CoordinationError
     +-- BackendNotFound        (also LookupError)  no backend for the URL scheme
     +-- InvalidURL             (also ValueError)   malformed URL, unknown or ill-typed option
     +-- InvalidName            (also ValueError)   bad lock / election / config name
     +-- Unavailable                                the backend cannot be reached
     +-- PermissionDenied       (also PermissionError) credentials refused, or an ACL forbids it
     +-- OperationTimeout       (also TimeoutError) one backend request took too long
     +-- AcquireTimeout         (also TimeoutError) acquire(timeout=...) ran out
     +-- SessionExpired                             the session ended on the server
     +-- LockLost                                   a held lock was lost
     +-- LeadershipLost                             a leadership was lost
     +-- NotHeld                                    release/proclaim/resign of what is not held
     +-- SemaphoreConflict      (also ValueError)   a semaphore's holders use another limit
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
    "PermissionDenied",
    "SemaphoreConflict",
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


class PermissionDenied(CoordinationError, PermissionError):
    """The server refused the credentials, or an ACL forbids the operation.

    Never retried as if it were transient: the same request with the same credentials is
    refused again. The message names the credential (a user name, a token's accessor, a
    certificate) or the key or path that was refused, never a secret.
    """


class OperationTimeout(CoordinationError, TimeoutError):
    """A single backend request did not complete within the operation timeout."""


class AcquireTimeout(CoordinationError, TimeoutError):
    """``acquire(timeout=...)`` or ``campaign(timeout=...)`` ran out of time.

    ``name`` is the lock or election, ``timeout`` the seconds it ran for (``None`` when
    raised by hand without them).
    """

    def __init__(self, message: str, *, name: str | None = None, timeout: float | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.timeout = timeout


class SessionExpired(CoordinationError):
    """The session ended: the server expired it, or its local deadline passed."""


class _HoldingError(CoordinationError):
    """An error about one holding: ``name``, ``token`` and ``reason`` say which and why."""

    def __init__(
        self, message: str, *, name: str | None = None, token: int | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.name = name
        """The lock or election name."""
        self.token = token
        """The fencing token of the holding."""
        self.reason = reason
        """Why it was lost (for NotHeld: why it is not held)."""


class LockLost(_HoldingError):
    """A held lock was lost (its session ended) before it was released."""


class LeadershipLost(_HoldingError):
    """A leadership was lost (its session ended) before it was resigned."""


class NotHeld(_HoldingError):
    """The lock or leadership is not held by this handle (already released or resigned)."""


class SemaphoreConflict(CoordinationError, ValueError):
    """A semaphore's holders or waiters use another ``limit`` than this acquire asked for.

    Nothing is left behind on the server; acquire with the limit the others use (the
    message gives it), or use another name. As Consul's own semaphore refuses.
    """


class Unsupported(CoordinationError):
    """The operation needs a capability this backend does not declare."""
