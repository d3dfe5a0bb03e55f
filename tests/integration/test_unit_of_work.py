"""The unit of work: one transaction, explicit commit, rollback otherwise."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from docstokg import JobSpec, JobState, Ledger
from docstokg.errors import DatabaseUnavailable, LedgerError, TransientDatabaseError
from docstokg.ledger import unit_of_work as unit_of_work_module
from tests.dbtools import execute_sql
from tests.pgcluster import ThrowawayPostgres

SPEC = JobSpec("W1", "pdf", "https://example.org/1")


def _job_count(ledger: Ledger) -> int:
    with ledger.unit_of_work(read_only=True) as uow:
        return sum(uow.jobs.count_by_state().values())


def test_commit_persists(ledger: Ledger) -> None:
    with ledger.unit_of_work() as uow:
        uow.jobs.plan(SPEC, now=uow.now())
        uow.commit()
    assert _job_count(ledger) == 1


def test_leaving_without_commit_rolls_back(ledger: Ledger) -> None:
    with ledger.unit_of_work() as uow:
        uow.jobs.plan(SPEC, now=uow.now())
    assert _job_count(ledger) == 0


def test_an_exception_rolls_back_and_propagates(ledger: Ledger) -> None:
    class Boom(Exception):
        pass

    def plan_then_fail() -> None:
        with ledger.unit_of_work() as uow:
            uow.jobs.plan(SPEC, now=uow.now())
            raise Boom

    with pytest.raises(Boom):
        plan_then_fail()
    assert _job_count(ledger) == 0


def test_explicit_rollback_discards(ledger: Ledger) -> None:
    with ledger.unit_of_work() as uow:
        uow.jobs.plan(SPEC, now=uow.now())
        uow.rollback()
    assert _job_count(ledger) == 0


def test_a_finished_unit_of_work_cannot_be_used(ledger: Ledger) -> None:
    with ledger.unit_of_work() as uow:
        uow.commit()
        with pytest.raises(LedgerError, match="not active"):
            uow.jobs.get("x")
        with pytest.raises(LedgerError, match="not active"):
            uow.commit()


def test_records_are_immutable(ledger: Ledger) -> None:
    with ledger.unit_of_work() as uow:
        job = uow.jobs.get(uow.jobs.plan(SPEC, now=uow.now()).job_id)
        uow.commit()
    assert job is not None
    with pytest.raises(AttributeError):
        job.state = JobState.FAILED  # type: ignore[misc]


def test_sqlite_connections_use_the_documented_pragmas(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    with Ledger.connect(url) as ledger:
        ledger.upgrade()
        with ledger.unit_of_work(read_only=True) as uow:
            pragmas = {
                name: uow.session.execute(text(f"PRAGMA {name}")).scalar_one()
                for name in (
                    "journal_mode", "synchronous", "foreign_keys", "busy_timeout", "temp_store"
                )
            }  # fmt: skip
    assert pragmas == {
        "journal_mode": "wal",
        "synchronous": 1,  # NORMAL
        "foreign_keys": 1,
        "busy_timeout": 30_000,
        "temp_store": 2,  # MEMORY: a group's savepoint journals never reach a temp file
    }


def _try_write_lock(path: Path) -> bool:
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError:
        return False
    else:
        other.execute("ROLLBACK")
        return True
    finally:
        other.close()


def test_sqlite_write_units_hold_the_write_lock_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    url = f"sqlite:///{path}"
    with Ledger.connect(url) as ledger:
        ledger.upgrade()
        with ledger.unit_of_work(read_only=True):
            assert _try_write_lock(path), "a read-only unit of work must not block writers"
        with ledger.unit_of_work():
            # BEGIN IMMEDIATE: locked before the first statement, so a read
            # followed by a write can never fail half-way with SQLITE_BUSY.
            assert not _try_write_lock(path)
        assert _try_write_lock(path)


def test_unreachable_postgres_is_a_clear_error() -> None:
    with Ledger.connect("postgresql+psycopg://nobody@127.0.0.1:1/none") as ledger:
        with pytest.raises(DatabaseUnavailable, match=r"127\.0\.0\.1"), ledger.unit_of_work():
            pass


def test_not_a_database_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are not the tables you are looking for\n" * 20)
    with Ledger.connect(f"sqlite:///{path}") as ledger:
        with pytest.raises(DatabaseUnavailable, match=r"notes\.txt"), ledger.unit_of_work():
            pass


def test_a_database_without_the_schema_names_the_upgrade_command(empty_db_url: str) -> None:
    from docstokg.errors import SchemaNotCurrent

    with Ledger.connect(empty_db_url) as ledger:
        if ledger.dialect == "sqlite":
            ledger.upgrade("0001_v3_baseline")  # an older schema than this code's
        with pytest.raises(SchemaNotCurrent, match="docstokg db upgrade"), ledger.unit_of_work():
            pass


def test_a_database_from_a_newer_docstokg_is_not_written(db_url: str) -> None:
    from docstokg.errors import UnknownRevision

    execute_sql(db_url, "UPDATE alembic_version SET version_num = 'f00d_from_the_future'")
    with Ledger.connect(db_url) as ledger:
        with pytest.raises(UnknownRevision, match="f00d_from_the_future"), ledger.unit_of_work():
            pass


def test_a_write_unit_of_work_inside_another_on_sqlite_is_refused_not_a_deadlock(
    tmp_path: Path,
) -> None:
    from docstokg.errors import LedgerError

    with Ledger.connect(f"sqlite:///{tmp_path / 'nested.sqlite3'}") as ledger:
        ledger.upgrade()
        with ledger.unit_of_work() as outer:
            with pytest.raises(LedgerError, match="already open in this thread"):
                ledger.unit_of_work().__enter__()
            with ledger.unit_of_work(read_only=True) as reader:  # reading inside is fine
                assert reader.jobs.count_by_state()
            outer.commit()
        with ledger.unit_of_work() as again:  # the gate was left open for the next one
            again.commit()


def test_without_an_injected_clock_time_is_the_databases_read_once_in_a_while(
    db_url: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: the database's clock, one round trip per interval; SQLite: the host's."""
    reads: list[float] = []
    read_database_clock = unit_of_work_module._read_database_clock

    def counted(connection: Connection) -> float:
        reads.append(read_database_clock(connection))
        return reads[-1]

    monkeypatch.setattr(unit_of_work_module, "_read_database_clock", counted)
    with Ledger.connect(db_url) as ledger:
        answers = []
        for _ in range(50):
            with ledger.unit_of_work() as uow:
                answers.append(uow.now())
        reference = (
            float(execute_sql(db_url, "SELECT extract(epoch from clock_timestamp())")[0][0])
            if backend == "postgresql"
            else time.time()
        )
    assert answers == sorted(answers)
    assert reference - 5 <= answers[-1] <= reference
    if backend == "postgresql":
        assert len(reads) == 1  # not one round trip per unit of work
        assert reads[0] <= answers[0] <= reads[0] + 1  # carried on to the end of its trip
    else:
        assert reads == []  # SQLite's workers share this host's clock


class _BodyError(Exception):
    pass


@pytest.mark.parametrize("body_fails", [False, True], ids=["clean-exit", "body-raises"])
def test_a_unit_of_work_whose_connection_the_server_cut_ends_in_docstokg_errors(
    postgres: ThrowawayPostgres, body_fails: bool
) -> None:
    """A restart cuts the connection: the ROLLBACK on leaving fails too, and must not escape raw.

    PostgreSQL only: a SQLite connection cannot be cut from outside.
    """
    name = f"cut_{int(body_fails)}"
    url = postgres.create_database(name)

    def cut_mid_unit_of_work(ledger: Ledger) -> None:
        with ledger.unit_of_work() as uow:
            [(pid,)] = uow.session.execute(text("SELECT pg_backend_pid()")).all()
            execute_sql(url, f"SELECT pg_terminate_backend({int(pid)})")
            if body_fails:
                raise _BodyError("the body's own error")

    try:
        with Ledger.connect(url) as ledger:
            ledger.upgrade()
            with pytest.raises((TransientDatabaseError, _BodyError)) as raised:
                cut_mid_unit_of_work(ledger)
            # The body's error is what the caller sees; without one, the lost connection.
            assert raised.type is (_BodyError if body_fails else TransientDatabaseError)
            assert _job_count(ledger) == 0  # and the ledger is usable afterwards
    finally:
        postgres.drop_database(name)
