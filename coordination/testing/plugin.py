"""pytest plugin (loaded through the ``pytest11`` entry point): conformance-suite options."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("coordination", "coordination conformance suite")
    group.addoption(
        "--coordination-url",
        default=None,
        help="run the conformance suite against this URL (e.g. etcd://127.0.0.1:2379/ci)",
    )
    group.addoption(
        "--coordination-timeout-multiplier",
        type=float,
        default=None,
        help="scale every timeout of the conformance suite (or $COORDINATION_TIMEOUT_MULTIPLIER)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires(*capabilities): the test needs these coordination.Capability values"
    )
