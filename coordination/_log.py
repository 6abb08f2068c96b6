"""The library's loggers, whose records carry the session and the holding they are about.

Every record of a logger made by :func:`get_logger` (the core's ``coordination`` and each
backend's ``coordination.<backend>``) has these attributes, for structured loggers to index
(``%(session_id)s`` in a format, or a JSON formatter's fields):

``session_id``      the coordinator's current session id (``None`` before the first one)
``primitive_name``  the lock or election name the record is about, if one is
``token``           the fencing token of the holding it is about, if one is

They come from the task the record is logged in: the coordinator's background tasks and
every operation of a coordinator set them (:func:`bind`); a field given in ``extra=`` wins.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

__all__ = ["FIELDS", "bind", "get_logger"]

FIELDS = ("session_id", "primitive_name", "token")


class _HasSession(Protocol):
    @property
    def session_id(self) -> str | None: ...


@dataclass(frozen=True)
class _Context:
    source: _HasSession
    name: str | None = None
    token: int | None = None


_CONTEXT: ContextVar[_Context | None] = ContextVar("coordination_log_context", default=None)


@contextlib.contextmanager
def bind(source: _HasSession, name: str | None = None, token: int | None = None) -> Iterator[None]:
    """Within the block, this task's records are about ``source``'s session (an engine) and,
    if given, the name and token (a pair: a new name drops the token bound outside); without
    a name, the name and token bound outside for the same source stay."""
    outer = _CONTEXT.get()
    if name is None and outer is not None and outer.source is source:
        name, token = outer.name, outer.token
    reset = _CONTEXT.set(_Context(source, name, token))
    try:
        yield
    finally:
        _CONTEXT.reset(reset)


class _Fields(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        context = _CONTEXT.get()
        values = {
            "session_id": context.source.session_id if context else None,
            "primitive_name": context.name if context else None,
            "token": context.token if context else None,
        }
        for field, value in values.items():
            if not hasattr(record, field):
                setattr(record, field, value)
        return True


_FIELDS = _Fields()


def get_logger(name: str) -> logging.Logger:
    """The logger ``name`` (``coordination`` or ``coordination.<backend>``), whose records
    carry :data:`FIELDS`."""
    logger = logging.getLogger(name)
    if _FIELDS not in logger.filters:
        logger.addFilter(_FIELDS)
    return logger
