"""Name rules shared by every backend, checked before any I/O."""

from __future__ import annotations

import re

from .exceptions import InvalidName

MAX_NAME_LENGTH = 256
MAX_IDENTITY_LENGTH = 128

_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_PRINTABLE = re.compile(r"[\x20-\x7e]+")


def validate_name(name: object, *, what: str = "name") -> str:
    """Return ``name`` if it is a valid lock, election or config name, else raise.

    A name is one or more ``/``-separated segments of ASCII letters, digits, ``.``, ``_``
    and ``-``; no segment is empty, ``.`` or ``..``; at most 256 characters.
    """
    if not isinstance(name, str):
        raise InvalidName(f"{what} must be a str, not {type(name).__name__}")
    if not name:
        raise InvalidName(f"{what} is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"{what} is {len(name)} characters long; at most {MAX_NAME_LENGTH} allowed")
    for segment in name.split("/"):
        if not segment:
            raise InvalidName(f"{what} {name!r} has an empty segment (leading, trailing or double '/')")
        if segment in (".", ".."):
            raise InvalidName(f"{what} {name!r} has a {segment!r} segment")
        if not _SEGMENT.fullmatch(segment):
            bad = next(c for c in segment if not _SEGMENT.fullmatch(c))
            raise InvalidName(
                f"{what} {name!r} contains {bad!r}; allowed: letters, digits, '.', '_', '-' "
                "in '/'-separated segments"
            )
    return name


def validate_identity(identity: object) -> str:
    """Return ``identity`` if it is printable ASCII of 1 to 128 characters, else raise."""
    if not isinstance(identity, str):
        raise InvalidName(f"identity must be a str, not {type(identity).__name__}")
    if not identity or len(identity) > MAX_IDENTITY_LENGTH or not _PRINTABLE.fullmatch(identity):
        raise InvalidName(
            f"identity {identity!r} must be 1 to {MAX_IDENTITY_LENGTH} printable ASCII characters"
        )
    return identity


def validate_value(value: object, *, what: str = "value") -> bytes:
    """Return ``value`` if it is bytes (values are bytes on every backend), else raise."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
