"""Small result types shared by the API and the backend interface."""

from __future__ import annotations

import enum
from typing import NamedTuple

__all__ = ["Leader", "Member", "SessionState", "Versioned"]


class SessionState(enum.Enum):
    """State of a coordinator's session, as seen locally."""

    CONNECTED = "connected"
    """The last keepalive was acknowledged; held locks are safe until the local deadline."""

    SUSPENDED = "suspended"
    """The connection is down or keepalives fail; held locks are kept until the deadline."""

    LOST = "lost"
    """The session ended; every lock and leadership on it was lost. A new one is opening."""


class Leader(NamedTuple):
    """The current leader of an election: its value and its fencing token."""

    value: bytes
    token: int


class Versioned(NamedTuple):
    """A config value and its version (strictly increasing per key)."""

    value: bytes
    version: int


class Member(NamedTuple):
    """A member of a group: its id (unique in the group, kept across re-joins) and value."""

    id: str
    value: bytes
