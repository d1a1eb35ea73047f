"""Shared pytest fixtures.

Sections: the private service stack (Mosquitto + InfluxDB). Add fixtures for other areas in their own section
below rather than mixing them in. Helper functions (no fixtures) live in ``tests/helpers.py``.
"""

from __future__ import annotations

import faulthandler
import sys
import uuid
from collections.abc import Iterator

import pytest

from citylab.stack import Stack, StackInfo

# ------------------------------------------------------------------------------------------------------------
# A run that hangs after its last test (a thread or worker pool that will not stop: a defect, which once kept CI
# waiting for 90 minutes) prints every thread's stack and exits with status 1 instead.
EXIT_GRACE_S = 120


def pytest_unconfigure(config: pytest.Config) -> None:
    faulthandler.dump_traceback_later(EXIT_GRACE_S, exit=True, file=sys.__stderr__)


# ------------------------------------------------------------------------------------------------------------
# Service stack: one private Mosquitto + InfluxDB per test session, on free loopback ports under a tmp dir.
# A missing binary makes these fixtures *error* with the StackError message (naming the Debian package):
# no silent skip, CI installs mosquitto and influxdb. Tests that stop or kill services must use their own
# Stack(tmp_path) instead, so they do not disturb the session stack.


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The session's running stack; call ``stack.info()`` for ports and credentials."""
    s = Stack(tmp_path_factory.mktemp("stack"))
    try:
        s.up()
        yield s
    finally:
        s.down()


@pytest.fixture(scope="session")
def stack_info(stack: Stack) -> StackInfo:
    """Shortcut for ``stack.info()``."""
    return stack.info()


@pytest.fixture
def influx_db(stack: Stack) -> Iterator[str]:
    """A fresh, uniquely named InfluxDB database on the session stack, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    stack.create_database(name)
    yield name
    stack.drop_database(name)


@pytest.fixture
def own_stack(tmp_path) -> Iterator[Stack]:
    """A Stack of this test's own (may be stopped, killed, restarted); always torn down."""
    s = Stack(tmp_path / "run")
    try:
        s.up()
        yield s
    finally:
        s.down()


# ------------------------------------------------------------------------------------------------------------
# The simulated afternoon (tests/city_afternoon.py): played once per session for every test that compares what the
# city's readers see (dashboards, the API) with the simulators' ground truth.


@pytest.fixture(scope="session")
def city_afternoon(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from city_afternoon import play

    yield from play(stack, tmp_path_factory.mktemp("city-afternoon"))
