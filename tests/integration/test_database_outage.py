"""A database that goes away: a passing error is waited out, a lasting one stops the run cleanly.

The PostgreSQL here is a cluster of the test's own (it is stopped for good
mid-run); a restart in the middle of competing runs is the chaos suite's
(tests/chaos).  The SQLite errors are the driver's own, provoked for real.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError

from docstokg import Ledger
from docstokg.errors import (
    ConstraintViolated,
    DatabaseOutage,
    DatabaseUnavailable,
    TransientDatabaseError,
)
from docstokg.ledger.engine import database_error, parse_url
from docstokg.ledger.faults import OutageWatch
from docstokg.testing.server import Artifact, ArtifactServer, generated_body
from tests.pgcluster import ThrowawayPostgres
from tests.runner_kit import BytesReached, make_config, make_run, part_files, write_manifest

LARGE = "/outage/large.bin"
LARGE_BYTES = 2 * 1024 * 1024
PAUSE_AT = 1024 * 1024


@pytest.fixture
def own_postgres() -> Iterator[ThrowawayPostgres]:
    """A cluster this test may stop: the session's is shared with other tests."""
    with ThrowawayPostgres() as cluster:
        yield cluster


def test_a_database_down_for_good_stops_the_run_cleanly_with_a_summary(
    own_postgres: ThrowawayPostgres, server: ArtifactServer, tmp_path: Path
) -> None:
    url = server.add(LARGE, Artifact(generated_body(LARGE, LARGE_BYTES), pause_after=PAUSE_AT))
    manifest = write_manifest(tmp_path / "m.jsonl", [("W-large", "pdf", url)])
    db_url = own_postgres.url()
    config = make_config(lease_ttl_s=30.0).model_copy(update={"db_outage_s": 1.0})
    written = BytesReached(PAUSE_AT)
    run = make_run(manifest, tmp_path / "out", config, db_url=db_url, workers=2, reporter=written)

    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(run.run)
        assert server.wait_paused(LARGE, timeout=30)
        assert written.reached.wait(timeout=30)
        own_postgres.stop()  # for good, in the middle of the download
        server.release(LARGE)
        summary = running.result(timeout=120)  # no exception: a summary

    assert summary.exit_code == 1
    assert summary.ledger_error is not None
    assert "stayed unreachable" in summary.ledger_error
    assert f"127.0.0.1:{own_postgres.port}" in summary.ledger_error
    assert not summary.interrupted  # not a Ctrl-C: exit 1, not 130
    assert summary.to_json()["ledger_error"] == summary.ledger_error
    [job] = summary.jobs
    assert job.state == "UNFINISHED"
    # The bytes fetched are kept for the next run to resume.
    assert [part.stat().st_size for part in part_files(tmp_path / "out")] == [LARGE_BYTES]


def test_an_outage_is_waited_out_then_given_up_after_its_deadline() -> None:
    watch = OutageWatch(parse_url("postgresql+psycopg://u:secret@db.example:5432/x"), outage_s=0.2)
    calls = 0

    def failing() -> None:
        nonlocal calls
        calls += 1
        raise TransientDatabaseError("the ledger database: connection refused")

    # Before the database ever answered: said at once, nothing waited.
    with pytest.raises(TransientDatabaseError):
        watch.retrying(failing)
    assert calls == 1

    watch.recovered()  # it answered once: from now on an outage is waited out
    with pytest.raises(DatabaseOutage, match="stayed unreachable") as caught:
        watch.retrying(failing)
    assert calls > 2
    assert "secret" not in str(caught.value)
    assert "db.example:5432" in str(caught.value)


def test_reads_that_succeed_do_not_end_an_outage_that_writes_still_meet() -> None:
    """A full disk: reads go on, every write fails; the deadline still comes."""
    watch = OutageWatch(parse_url("sqlite:///ledger.sqlite3"), outage_s=0.2)
    watch.recovered()
    writes = 0

    def write_on_a_full_disk() -> None:
        nonlocal writes
        writes += 1
        watch.answered()  # a read in between succeeded
        raise TransientDatabaseError("database or disk is full", server_seen=True)

    with pytest.raises(DatabaseOutage, match="stayed unreachable"):
        watch.retrying(write_on_a_full_disk)
    assert writes > 1


def test_an_outage_given_up_on_is_said_at_once_until_a_write_commits() -> None:
    """A run winds down in seconds: no thread waits out its own timeouts after the verdict."""
    watch = OutageWatch(parse_url("sqlite:///ledger.sqlite3"), outage_s=0.1)
    watch.recovered()
    with pytest.raises(DatabaseOutage) as first:
        watch.retrying(partial(_fail_with, TransientDatabaseError("locked", server_seen=True)))

    with pytest.raises(DatabaseOutage) as again:
        watch.check()
    assert again.value is first.value

    watch.recovered()
    watch.check()  # a write committed: the verdict no longer stands


def _fail_with(error: Exception) -> None:
    raise error


def test_a_server_met_restarting_at_start_up_is_waited_for() -> None:
    """It said it is going down: the "connection refused" that follows is part of its restart."""
    watch = OutageWatch(parse_url("postgresql+psycopg://u@db.example:5432/x"), outage_s=30.0)
    answers: Iterator[TransientDatabaseError | int] = iter(
        [
            TransientDatabaseError("terminating connection", server_seen=True),
            TransientDatabaseError("connection refused"),
            7,
        ]
    )

    def restarting() -> int:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert watch.retrying(restarting) == 7


def test_a_passing_error_is_retried_until_it_passes() -> None:
    watch = OutageWatch(parse_url("sqlite:///ledger.sqlite3"), outage_s=30.0)
    watch.recovered()
    answers: Iterator[TransientDatabaseError | int] = iter(
        [TransientDatabaseError("locked"), TransientDatabaseError("locked"), 7]
    )

    def flaky() -> int:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert watch.retrying(flaky) == 7


def sqlite_error(connection: sqlite3.Connection, statement: str) -> DBAPIError:
    try:
        connection.execute(statement)
    except sqlite3.Error as exc:
        wrapped = DBAPIError.instance(statement, (), exc, sqlite3.Error)
        assert isinstance(wrapped, DBAPIError)
        return wrapped
    raise AssertionError(f"{statement} did not fail")


def test_a_read_only_sqlite_ledger_is_a_permanent_error_that_says_what_to_do(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.sqlite3"
    with Ledger.connect(f"sqlite:///{path}") as ledger:
        ledger.upgrade()
    read_only = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    error = database_error(
        parse_url(f"sqlite:///{path}"), sqlite_error(read_only, "DELETE FROM artifact_jobs")
    )
    read_only.close()

    assert isinstance(error, DatabaseUnavailable)
    assert not isinstance(error, TransientDatabaseError)
    assert str(path) in str(error)
    assert "writable" in str(error)


def test_lost_tables_are_a_permanent_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    empty = sqlite3.connect(path)
    error = database_error(
        parse_url(f"sqlite:///{path}"), sqlite_error(empty, "SELECT * FROM artifact_jobs")
    )
    empty.close()

    assert not isinstance(error, TransientDatabaseError)
    assert "lost its tables" in str(error)
    assert str(path) in str(error)


def test_sqlite_locked_past_its_busy_timeout_is_transient(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    error = database_error(parse_url(f"sqlite:///{path}"), sqlite_error(other, "BEGIN IMMEDIATE"))
    holder.rollback()
    holder.close()
    other.close()

    assert isinstance(error, TransientDatabaseError)


def test_a_run_survives_a_postgresql_restart_mid_download_and_spends_no_attempt(
    own_postgres: ThrowawayPostgres, server: ArtifactServer, tmp_path: Path
) -> None:
    large = server.add(LARGE, Artifact(generated_body(LARGE, LARGE_BYTES), pause_after=PAUSE_AT))
    rows = [("W-large", "pdf", large)]
    for n in range(6):
        path = f"/outage/small-{n}.bin"
        rows.append((f"W{n}", "pdf", server.add(path, Artifact(generated_body(path, 50_000)))))
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    db_url = own_postgres.url()
    written = BytesReached(PAUSE_AT)
    config = make_config(lease_ttl_s=30.0, max_attempts=2)
    run = make_run(manifest, tmp_path / "out", config, db_url=db_url, workers=2, reporter=written)

    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(run.run)
        assert server.wait_paused(LARGE, timeout=30)
        assert written.reached.wait(timeout=30)
        own_postgres.restart()  # every connection of the run is cut mid-download
        server.release(LARGE)
        summary = running.result(timeout=120)

    assert summary.exit_code == 0, summary.to_json()
    assert summary.ledger_error is None
    assert {job.state for job in summary.jobs} == {"DEDUPED"}
    with Ledger.connect(db_url) as ledger, ledger.unit_of_work(read_only=True) as uow:
        jobs = uow.jobs.get_many([job.job_id for job in summary.jobs])
    # A passing database error never costs a job an attempt, nor leaves an error behind.
    assert [(job.attempts, job.last_error) for job in jobs] == [(0, None)] * len(rows)
    # The large body was not fetched again from zero: what was kept is resumed.
    assert server.stats(LARGE).body_bytes_sent <= LARGE_BYTES
    assert part_files(tmp_path / "out") == []


def test_a_broken_constraint_is_a_race_to_decide_again_not_a_broken_database(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.sqlite3"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE t (x UNIQUE)")
    connection.execute("INSERT INTO t VALUES (1)")
    error = database_error(
        parse_url(f"sqlite:///{path}"), sqlite_error(connection, "INSERT INTO t VALUES (1)")
    )
    connection.close()

    assert isinstance(error, ConstraintViolated)
    assert not isinstance(error, DatabaseUnavailable)


def test_a_server_restart_in_the_middle_of_an_upgrade_is_waited_out_not_a_failed_migration(
    postgres: ThrowawayPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server cuts the migration's own connection inside Alembic's upgrade (as a restart does).

    That is a passing error: the upgrade is one transaction, rolled back, and
    done again; it must not be reported as a migration that failed.
    """
    from alembic import command

    from docstokg.ledger import migrate

    real_upgrade = command.upgrade
    cut: list[bool] = []

    def cut_once(config: Any, revision: str) -> None:
        if not cut:
            cut.append(True)
            connection = config.attributes["connection"]
            connection.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")
        real_upgrade(config, revision)

    monkeypatch.setattr(command, "upgrade", cut_once)
    url = postgres.create_database("cut_upgrade")
    try:
        with Ledger.connect(url, outage_s=30.0) as ledger:
            result = ledger.upgrade()
        assert cut == [True]
        assert result.to_revision == migrate.head_revision()
    finally:
        postgres.drop_database("cut_upgrade")
