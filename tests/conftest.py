from collections.abc import Callable

import pytest

from coordination.testing.plugin import timeout_multiplier

pytest_plugins = ["pytester"]


@pytest.fixture(scope="session")
def session_scaled(pytestconfig: pytest.Config) -> Callable[[float], float]:
    """The plugin's ``scaled`` for fixtures that outlive a test (servers, clusters): every
    timeout they are given is ``seconds`` times the suite's timeout multiplier."""
    multiplier = timeout_multiplier(pytestconfig)
    return lambda seconds: seconds * multiplier
