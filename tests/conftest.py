"""Fixtures shared by every test: real databases on both backends, and a clock.

Backend-agnostic tests take ``backend`` (directly or through ``db_url`` /
``ledger``) and so run twice: on a SQLite file and on a real PostgreSQL 15 that
this session starts itself and stops at the end.  Set
``DOCSTOKG_TEST_BACKENDS=sqlite`` to run SQLite only on a machine without
PostgreSQL; CI runs both.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from docstokg import Ledger
from docstokg.testing.server import ArtifactServer
from tests.pgcluster import ThrowawayPostgres
from tests.redisserver import ThrowawayRedis

BACKENDS = tuple(
    name.strip()
    for name in os.environ.get("DOCSTOKG_TEST_BACKENDS", "sqlite,postgresql").split(",")
    if name.strip()
)
_database_numbers = itertools.count()


class ManualClock:
    """A clock that moves only when a test says so (epoch seconds)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def postgres() -> Iterator[ThrowawayPostgres]:
    if "postgresql" not in BACKENDS:
        pytest.fail("a PostgreSQL test ran although DOCSTOKG_TEST_BACKENDS excludes it")
    with ThrowawayPostgres() as server:
        yield server


@pytest.fixture(scope="session")
def redis_session() -> Iterator[ThrowawayRedis]:
    """One throwaway ``redis-server`` per test process (started on first use)."""
    with ThrowawayRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_session: ThrowawayRedis) -> str:
    """The URL of a real, empty Redis (no persistence), flushed for each test."""
    redis_session.flush()
    return redis_session.url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def empty_db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a new, empty database on ``backend``."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        return
    server: ThrowawayPostgres = request.getfixturevalue("postgres")
    name = f"test_{next(_database_numbers)}"
    url = server.create_database(name)
    yield url
    server.drop_database(name)


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """The URL of a new database on ``backend``, upgraded to head."""
    with Ledger.connect(empty_db_url) as ledger:
        ledger.upgrade()
    return empty_db_url


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def ledger(db_url: str, clock: ManualClock) -> Iterator[Ledger]:
    with Ledger.connect(db_url, clock=clock) as opened:
        yield opened


@pytest.fixture
def server() -> Iterator[ArtifactServer]:
    """A loopback artifact server (Range support, counters, injectable faults), stopped after."""
    with ArtifactServer() as serving:
        yield serving


# -- the hostile-input catalogue's count in the run's summary (tests/e2e/hostile_cases.py) --
CATALOGUE_TEST = "test_hostile_catalogue.py::test_hostile_input["


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print "hostile-input catalogue: N cases, P passed, F failed" when any case ran."""
    outcomes: dict[str, str] = {}
    for outcome, reports in terminalreporter.stats.items():
        for report in reports:
            nodeid = getattr(report, "nodeid", "")
            if CATALOGUE_TEST not in nodeid:
                continue
            when = getattr(report, "when", "call")
            # A failure or error in any phase decides; a pass counts only for the call.
            if outcome in {"failed", "error"} or (outcome == "passed" and when == "call"):
                if outcomes.get(nodeid) not in {"failed", "error"}:
                    outcomes[nodeid] = outcome
            elif outcome not in {"passed", ""}:
                outcomes.setdefault(nodeid, outcome)
    if not outcomes:
        return
    tally = {name: sum(1 for o in outcomes.values() if o == name) for name in ("passed", "failed")}
    others = len(outcomes) - tally["passed"] - tally["failed"]
    line = (
        f"hostile-input catalogue: {len(outcomes)} cases, {tally['passed']} passed, "
        f"{tally['failed']} failed"
    )
    if others:
        line += f", {others} other (error, skipped or xfailed)"
    terminalreporter.write_line(line)
