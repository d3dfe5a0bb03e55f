"""Databases made before Alembic are adopted; anything unrecognised is refused untouched."""

from __future__ import annotations

import hashlib
import random
import sqlite3
from pathlib import Path

import pytest

from docstokg import JobSpec, JobState, Ledger
from docstokg.errors import DatabaseUnavailable, SchemaMismatch, UnknownRevision
from docstokg.ledger import migrate
from tests.dbtools import alembic_check, execute_sql

# The hand-rolled ledger's DDL, as its apply_migration script ran it.
V3_DDL = """
CREATE TABLE IF NOT EXISTS _meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO _meta(key, value) VALUES ('schema_version', '3');
CREATE TABLE IF NOT EXISTS artifact_jobs (
  job_id           TEXT PRIMARY KEY,
  work_id          TEXT NOT NULL,
  artifact_id      TEXT NOT NULL,
  canonical_url    TEXT NOT NULL,
  state            TEXT NOT NULL DEFAULT 'PLANNED',
  lease_owner      TEXT,
  lease_until      REAL,
  created_at       REAL NOT NULL,
  updated_at       REAL NOT NULL,
  idempotency_key  TEXT NOT NULL,
  UNIQUE(work_id, artifact_id, canonical_url),
  UNIQUE(idempotency_key),
  CHECK (state IN ('PLANNED','LEASED','HEAD_DONE','RESUME_OK','STREAMING','FINALIZED',
                   'INDEXED','DEDUPED','FAILED','SKIPPED_DUPLICATE'))
);
CREATE INDEX IF NOT EXISTS idx_artifact_jobs_state ON artifact_jobs(state);
CREATE INDEX IF NOT EXISTS idx_artifact_jobs_lease ON artifact_jobs(lease_until);
CREATE TABLE IF NOT EXISTS artifact_ops (
  op_key        TEXT PRIMARY KEY,
  job_id        TEXT NOT NULL,
  op_type       TEXT NOT NULL,
  started_at    REAL NOT NULL,
  finished_at   REAL,
  result_code   TEXT,
  result_json   TEXT,
  FOREIGN KEY(job_id) REFERENCES artifact_jobs(job_id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS idx_artifact_ops_job ON artifact_ops(job_id);
"""

JOBS = 1_000
OPS_PER_JOB = 3


def _make_v3_ledger(path: Path) -> None:
    rng = random.Random(3)
    states = [state.value for state in JobState]
    connection = sqlite3.connect(path)
    try:
        connection.executescript(V3_DDL)
        jobs = []
        ops = []
        for n in range(JOBS):
            job_id = f"legacy-{n:05d}"
            leased = rng.random() < 0.3
            jobs.append(
                (
                    job_id,
                    f"W{n // 3}",
                    f"A{n % 3}",
                    f"https://example.org/{n}.pdf",
                    rng.choice(states),
                    "worker-1" if leased else None,
                    1_700_000_100.5 + n if leased else None,
                    1_700_000_000.25 + n,
                    1_700_000_050.75 + n,
                    f"legacy-key-{n}",
                )
            )
            for step, kind in enumerate(("HEAD", "STREAM", "FINALIZE")[:OPS_PER_JOB]):
                ops.append(
                    (
                        f"{job_id}:{kind}",
                        job_id,
                        kind,
                        1_700_000_001.0 + n + step / 4,
                        1_700_000_002.0 + n if rng.random() < 0.8 else None,
                        "OK",
                        '{"status": 200, "note": "caf\u00e9"}',
                    )
                )
        connection.executemany(f"INSERT INTO artifact_jobs VALUES ({','.join('?' * 10)})", jobs)
        connection.executemany(f"INSERT INTO artifact_ops VALUES ({','.join('?' * 7)})", ops)
        connection.commit()
    finally:
        connection.close()


def _dump(path: Path) -> dict[str, list[tuple[object, ...]]]:
    connection = sqlite3.connect(path)
    try:
        return {
            table: connection.execute(
                f"SELECT {', '.join(sorted(migrate.V3_COLUMNS[table]))} FROM {table} ORDER BY 1"
            ).fetchall()
            for table in ("artifact_jobs", "artifact_ops")
        }
    finally:
        connection.close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def v3_file(tmp_path: Path) -> Path:
    path = tmp_path / "manifest.sqlite3"
    _make_v3_ledger(path)
    return path


def test_v3_ledger_is_adopted_with_every_row(v3_file: Path) -> None:
    before = _dump(v3_file)
    assert len(before["artifact_jobs"]) == JOBS
    assert len(before["artifact_ops"]) == JOBS * OPS_PER_JOB

    with Ledger.connect(f"sqlite:///{v3_file}") as ledger:
        result = ledger.upgrade()
        status = ledger.schema_status()
        with ledger.unit_of_work(read_only=True) as uow:
            counts = uow.jobs.count_by_state()
            legacy = uow.jobs.get("legacy-00007")
            ops = uow.ops.list_for_job("legacy-00007")

    assert result.adopted is True
    assert result.from_revision is None
    assert result.to_revision == migrate.head_revision()
    assert status.is_current
    assert _dump(v3_file) == before
    assert sum(counts.values()) == JOBS
    assert legacy is not None
    assert legacy.created_at == 1_700_000_007.25
    assert [op.op_type for op in ops] == ["HEAD", "STREAM", "FINALIZE"]


def test_adopted_ledger_keeps_working_and_matches_the_models(v3_file: Path) -> None:
    url = f"sqlite:///{v3_file}"
    with Ledger.connect(url) as ledger:
        ledger.upgrade()
        with ledger.unit_of_work() as uow:
            # A job the old ledger planned is found by its triple, not re-planned.
            again = uow.jobs.plan(JobSpec("W2", "A1", "https://example.org/7.pdf"), now=1.0)
            fresh = uow.jobs.plan(JobSpec("W-new", "A0", "https://example.org/new"), now=1.0)
            uow.commit()
        assert again.job_id == "legacy-00007"
        assert again.created is False
        assert fresh.created is True
        second = ledger.upgrade()
    assert second.adopted is False
    alembic_check(url)


def test_unknown_revision_is_refused_and_the_file_is_unchanged(v3_file: Path) -> None:
    connection = sqlite3.connect(v3_file)
    connection.executescript(
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY);"
        "INSERT INTO alembic_version VALUES ('f00dfeed9999');"
    )
    connection.close()
    digest = _sha256(v3_file)

    with Ledger.connect(f"sqlite:///{v3_file}") as ledger:
        with pytest.raises(UnknownRevision, match="f00dfeed9999") as raised:
            ledger.upgrade()
    assert "left unchanged" in str(raised.value)
    assert _sha256(v3_file) == digest
    assert sorted(p.name for p in v3_file.parent.iterdir()) == [v3_file.name]


def test_unknown_revision_is_refused_on_both_backends(db_url: str) -> None:
    execute_sql(db_url, "UPDATE alembic_version SET version_num = 'abc123future'")
    with Ledger.connect(db_url) as ledger, pytest.raises(UnknownRevision, match="abc123future"):
        ledger.upgrade()
    assert migrate.describe(db_url).revision == "abc123future"


def test_foreign_tables_with_the_ledger_names_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "other-app.sqlite3"
    connection = sqlite3.connect(path)
    connection.executescript(
        "CREATE TABLE artifact_jobs (id INTEGER PRIMARY KEY, name TEXT, status TEXT);"
        "INSERT INTO artifact_jobs (name, status) VALUES ('theirs', 'queued');"
    )
    connection.close()
    digest = _sha256(path)
    with Ledger.connect(f"sqlite:///{path}") as ledger:
        with pytest.raises(SchemaMismatch) as raised:
            ledger.upgrade()
    message = str(raised.value)
    assert "artifact_jobs lacks column(s)" in message
    assert "job_id" in message
    assert "unexpected column(s) id, name, status" in message
    assert _sha256(path) == digest


def test_v3_tables_with_another_schema_version_are_refused(v3_file: Path) -> None:
    connection = sqlite3.connect(v3_file)
    connection.execute("UPDATE _meta SET value = '2' WHERE key = 'schema_version'")
    connection.commit()
    connection.close()
    digest = _sha256(v3_file)
    with Ledger.connect(f"sqlite:///{v3_file}") as ledger:
        with pytest.raises(SchemaMismatch, match=r"schema_version is '2'"):
            ledger.upgrade()
    assert _sha256(v3_file) == digest


def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "manifest.sqlite3"
    path.write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 16)
    digest = _sha256(path)
    with Ledger.connect(f"sqlite:///{path}") as ledger:
        with pytest.raises(DatabaseUnavailable, match="is not a SQLite database"):
            ledger.upgrade()
    assert _sha256(path) == digest


def test_upgrade_creates_missing_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "ledger.sqlite3"
    with Ledger.connect(f"sqlite:///{path}") as ledger:
        assert ledger.upgrade().to_revision == migrate.head_revision()
    assert path.exists()


def test_a_wal_ledger_with_unknown_revision_keeps_its_main_file_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    url = f"sqlite:///{path}"
    with Ledger.connect(url) as ledger:
        ledger.upgrade()
    # A newer docstokg's stamp, left in the WAL by a writer that is still open.
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("UPDATE alembic_version SET version_num = '9999_newer'")
    wal = path.with_name(path.name + "-wal")
    digests = (_sha256(path), _sha256(wal))
    try:
        with Ledger.connect(url) as ledger, pytest.raises(UnknownRevision, match="9999_newer"):
            ledger.upgrade()
        assert (_sha256(path), _sha256(wal)) == digests
    finally:
        writer.close()


def test_v3_rows_without_a_primary_key_are_refused_before_anything_changes(
    v3_file: Path,
) -> None:
    connection = sqlite3.connect(v3_file)
    connection.execute(
        "INSERT INTO artifact_jobs VALUES (NULL, 'W', 'A', 'u', 'PLANNED', NULL, NULL, 1, 1, 'k')"
    )
    connection.commit()
    connection.close()
    digest = _sha256(v3_file)
    with Ledger.connect(f"sqlite:///{v3_file}") as ledger:
        with pytest.raises(SchemaMismatch, match="1 row\\(s\\) of artifact_jobs have no job_id"):
            ledger.upgrade()
    assert _sha256(v3_file) == digest


def test_v3_ops_get_the_status_they_really_had(tmp_path: Path) -> None:
    path = tmp_path / "manifest.sqlite3"
    connection = sqlite3.connect(path)
    connection.executescript(V3_DDL)
    connection.execute(
        "INSERT INTO artifact_jobs VALUES ('j', 'W', 'A', 'u', 'STREAMING', NULL, NULL, 1, 1, 'k')"
    )
    cut_result = '{"data": "' + "x" * 19_990  # cut at 20,000 characters: invalid JSON
    whole_result = '{"data": "' + "x" * 20_000 + '"}'
    rows = [
        ("done", 2.0, "OK", '{"status": 200}'),
        ("died", None, None, None),  # the holder died after writing the row
        ("retry", 2.0, "RETRYABLE", '{"error": "timeout"}'),
        ("cut", 2.0, "OK", cut_result),
        ("long", 2.0, "OK", whole_result),
    ]
    connection.executemany("INSERT INTO artifact_ops VALUES (?, 'j', 'STREAM', 1.0, ?, ?, ?)", rows)
    connection.commit()
    connection.close()

    with Ledger.connect(f"sqlite:///{path}") as ledger:
        ledger.upgrade()
        with ledger.unit_of_work(read_only=True) as uow:
            ops = {op.op_key: op for op in uow.ops.list_for_job("j")}
            job = uow.jobs.get("j")

    assert {key: op.status for key, op in ops.items()} == {
        "done": "SUCCEEDED",
        "died": "IN_PROGRESS",
        "retry": "FAILED",
        "cut": "FAILED",
        "long": "SUCCEEDED",
    }
    assert ops["died"].lease_epoch == 0  # older than any grant: the next holder takes it over
    assert ops["cut"].error is not None
    assert "invalid JSON" in ops["cut"].error
    assert ops["long"].result_json == whole_result
    assert job is not None
    assert (job.lease_epoch, job.attempts, job.max_attempts) == (0, 0, 5)
    assert migrate.describe(f"sqlite:///{path}").schema_version == "9"
