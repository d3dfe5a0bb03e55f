"""``docstokg job ...`` as an operator runs it: real subprocesses, real databases.

Each test writes the known population of :mod:`tests.populations` with the
factories (relative to the ledger's own clock, which the subprocess reads
too), then runs ``python -m docstokg job ...`` and checks the numbers it
prints: in the rich table (``COLUMNS=200 NO_COLOR=1``) and in the ``--json``
document, whose exact key sets are asserted so that a change of shape fails
here.  ``status``, ``stats`` and ``metrics`` run on SQLite and PostgreSQL, the
others on a SQLite file.  Every command is also run against a database
without ledger tables, one with an older schema, and a missing file.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from docstokg import JobState, Ledger
from docstokg.cli import main
from docstokg.ledger.migrate import describe, head_revision, upgrade
from docstokg.testing.server import Artifact, ArtifactServer, Fault, generated_body
from tests import populations as P
from tests.cli_kit import cli_env, error_line, explain, free_port, sqlite_path
from tests.dbtools import execute_sql, table_names

pytestmark = pytest.mark.slow

OLD_REVISION = "0004_content_index"
STATES = [state.value for state in JobState]
STATUS_KEYS = {"window_s", "manifest", "counts", "failed_exhausted", "failed_retrying", "total"}
LEASES_KEYS = {"total", "live", "expired", "leases"}
LEASE_KEYS = {"job_id", "owner", "state", "seconds_left", "epoch", "work_id", "artifact_id"}
STATS_KEYS = {
    "window_s",
    "manifest",
    "counts",
    "failed_exhausted",
    "finished_in_window",
    "finished_per_minute",
    "retried_jobs",
    "retry_attempts",
    "top_failures",
    "op_durations",
    "abandoned_ops",
    "database_bytes",
}
FAILURE_KEYS = {"reason", "count", "exhausted", "example"}
DURATION_KEYS = {"count", "p50_s", "p95_s"}
SHOW_KEYS = {"job", "manifests", "ops"}
SHOW_JOB_KEYS = {
    "job_id",
    "work_id",
    "artifact_id",
    "url",
    "state",
    "attempts",
    "max_attempts",
    "lease_owner",
    "lease_until",
    "lease_epoch",
    "next_attempt_at",
    "last_error",
    "sha256",
    "size_bytes",
    "final_path",
    "content_type",
    "created_at",
    "updated_at",
}
SHOW_OP_KEYS = {
    "kind",
    "op_key",
    "status",
    "attempt",
    "epoch",
    "started_at",
    "finished_at",
    "duration_s",
    "result",
    "error",
}
CLEANUP_KEYS = {"dry_run", "expired_leases", "abandoned_ops", "stale_parts", "jobs_requeued"}
RETRY_KEYS = {"retried", "skipped"}
VACUUM_KEYS = {"cutoff", "ops_deleted", "bytes_before", "bytes_after", "bytes_reclaimed"}
# Every job command, with arguments that pass its own validation.
COMMANDS = {
    "status": ["job", "status"],
    "leases": ["job", "leases"],
    "stats": ["job", "stats"],
    "show": ["job", "show", "some-job-id"],
    "cleanup": ["job", "cleanup"],
    "retry": ["job", "retry", "--failed"],
    "vacuum": ["job", "vacuum", "--older-than", "1h"],
    "metrics": ["job", "metrics"],
}
RUN_TIMEOUT_S = 60.0


# --- running the command line ------------------------------------------------------------


def docstokg(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "docstokg", *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=cwd,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )


def ok(*args: str, cwd: Path) -> str:
    result = docstokg(*args, cwd=cwd)
    assert result.returncode == 0, explain(result)
    return result.stdout


def as_json(*args: str, cwd: Path, exit_code: int = 0) -> dict[str, Any]:
    result = docstokg(*args, "--json", cwd=cwd)
    assert result.returncode == exit_code, explain(result)
    document: dict[str, Any] = json.loads(result.stdout)  # the whole of stdout
    return document


def table_rows(text: str) -> list[list[str]]:
    """The cells of every body and header row of the rich tables in ``text``."""
    return [
        [cell.strip() for cell in re.split("[│┃]", line)[1:-1]]
        for line in text.splitlines()
        if line.startswith(("│", "┃"))
    ]


def by_first_cell(text: str) -> dict[str, list[str]]:
    return {row[0]: row[1:] for row in table_rows(text)}


# --- the population -----------------------------------------------------------------------


def populated(url: str) -> P.Population:
    """The known population, at the ledger's own time (the subprocess reads the same clock)."""
    with Ledger.connect(url) as ledger:
        return P.populate(ledger, ledger.now())


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """An upgraded SQLite ledger holding the population."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    upgrade(url)
    return url


@pytest.fixture
def population(sqlite_url: str) -> P.Population:
    return populated(sqlite_url)


# --- job status ---------------------------------------------------------------------------


def test_status_table_and_json(db_url: str, tmp_path: Path) -> None:
    populated(db_url)
    rows = by_first_cell(ok("job", "status", "--db", db_url, cwd=tmp_path))
    assert rows["state"] == ["jobs"]
    for state, count in P.COUNTS.items():
        if state is JobState.FAILED:
            assert rows["FAILED (4 out of attempts, 2 retrying)"] == [str(count)]
        else:
            assert rows[state.value] == [str(count)], state
    assert rows["total"] == [str(P.TOTAL)]

    document = as_json("job", "status", "--db", db_url, cwd=tmp_path)
    assert set(document) == STATUS_KEYS
    assert document == {
        "window_s": None,
        "manifest": None,
        "counts": {state.value: count for state, count in P.COUNTS.items()},
        "failed_exhausted": P.EXHAUSTED,
        "failed_retrying": P.COUNTS[JobState.FAILED] - P.EXHAUSTED,
        "total": P.TOTAL,
    }
    assert list(document["counts"]) == sorted(STATES)  # sorted keys: stable for diffs

    window = as_json("job", "status", "--db", db_url, "--window-s", "600", cwd=tmp_path)
    assert window == {
        "window_s": 600.0,
        "manifest": None,
        "counts": {state.value: count for state, count in P.WINDOW_COUNTS.items()},
        "failed_exhausted": P.WINDOW_EXHAUSTED,
        "failed_retrying": 1,
        "total": 4,
    }


def test_status_window_table(sqlite_url: str, population: P.Population, tmp_path: Path) -> None:
    text = ok("job", "status", "--db", sqlite_url, "--window-s", "600", cwd=tmp_path)
    assert "Jobs by state (created in the last 600 s)" in text
    rows = by_first_cell(text)
    assert rows["PLANNED"] == ["1"]
    assert rows["LEASED"] == ["1"]
    assert rows["DEDUPED"] == ["0"]
    assert rows["FAILED (1 out of attempts, 1 retrying)"] == ["2"]
    assert rows["total"] == ["4"]


# --- job stats ----------------------------------------------------------------------------


def test_stats_table_and_json(db_url: str, tmp_path: Path) -> None:
    populated(db_url)
    text = ok("job", "stats", "--db", db_url, cwd=tmp_path)
    rows = by_first_cell(text)
    for state, count in P.COUNTS.items():
        assert rows[state.value] == [str(count)], state
    assert rows["FAILED, out of attempts"] == [str(P.EXHAUSTED)]
    assert rows["finished in the last 3600 s"] == ["3 (0.1/min)"]
    assert rows["jobs retried / extra step runs"] == [f"{P.RETRIED_JOBS} / {P.RETRY_ATTEMPTS}"]
    assert rows["abandoned ops"] == [str(P.ABANDONED_OPS)]
    assert re.fullmatch(r"[1-9][\d,]* bytes", rows["database size"][0])
    assert rows["reason"] == ["jobs", "out of attempts", "example"]
    assert rows["http_404"][:2] == ["3", "3"]
    assert rows["http_404"][2] in {P.ERROR_404_A, P.ERROR_404_B}
    assert rows["http_503"][:2] == ["2", "1"]
    assert rows["timeout"] == ["1", "0", P.ERROR_TIMEOUT]
    assert rows["kind"] == ["runs", "p50", "p95"]
    assert rows["HEAD"] == ["10", "0.050 s", "0.500 s"]
    assert rows["STREAM"] == ["3", "2.000 s", "7.500 s"]
    assert rows["FINALIZE"] == ["1", "0.004 s", "0.004 s"]

    document = as_json("job", "stats", "--db", db_url, cwd=tmp_path)
    assert set(document) == STATS_KEYS
    for failure in document["top_failures"]:
        assert set(failure) == FAILURE_KEYS
    for summary in document["op_durations"].values():
        assert set(summary) == DURATION_KEYS
    assert document["window_s"] == 3600.0
    assert document["counts"] == {state.value: count for state, count in P.COUNTS.items()}
    assert document["failed_exhausted"] == P.EXHAUSTED
    assert document["finished_in_window"] == P.FINISHED_IN_HOUR
    assert document["finished_per_minute"] == 0.05
    assert (document["retried_jobs"], document["retry_attempts"]) == (
        P.RETRIED_JOBS,
        P.RETRY_ATTEMPTS,
    )
    assert [
        (f["reason"], f["count"], f["exhausted"]) for f in document["top_failures"]
    ] == P.FAILURES
    assert document["top_failures"][2]["example"] == P.ERROR_TIMEOUT
    assert document["op_durations"] == {
        kind: {"count": count, "p50_s": p50, "p95_s": p95}
        for kind, (count, p50, p95) in P.DURATIONS.items()
    }
    assert document["abandoned_ops"] == P.ABANDONED_OPS
    assert isinstance(document["database_bytes"], int)
    assert document["database_bytes"] > 0

    if db_url.startswith("sqlite"):
        # 50 s ago in, 100 s ago out: 25 s of slack either side for a slow machine.
        narrow = as_json("job", "stats", "--db", db_url, "--window-s", "75", cwd=tmp_path)
        assert (narrow["window_s"], narrow["finished_in_window"]) == (75.0, 1)
        assert narrow["finished_per_minute"] == 0.8


# --- job leases ---------------------------------------------------------------------------


def test_leases_table_and_json(sqlite_url: str, population: P.Population, tmp_path: Path) -> None:
    ids = population.job_ids
    text = ok("job", "leases", "--db", sqlite_url, cwd=tmp_path)
    assert "Leases: 2 live, 2 expired" in text
    rows = by_first_cell(text)
    assert rows["job_id"] == ["owner", "state", "seconds left", "epoch", "work_id/artifact_id"]
    expected = {
        "resume_ok": ("hostB:22:run2:w2", "RESUME_OK", -500.0, "1"),
        "head_done": ("hostB:22:run2:w1", "HEAD_DONE", -15.0, "2"),
        "leased": ("hostA:11:run1:w0", "LEASED", 30.0, "3"),
        "streaming": ("hostA:11:run1:w1", "STREAMING", 90.0, "5"),
    }
    for name, (owner, state, left, epoch) in expected.items():
        row = rows[ids[name]]
        assert row[:2] == [owner, state], row
        # The command runs a moment after the rows were written: a little less is left.
        assert left - 10 < float(row[2]) <= left, row
        assert row[3:] == [epoch, f"W-{name}/pdf"], row

    document = as_json("job", "leases", "--db", sqlite_url, cwd=tmp_path)
    assert set(document) == LEASES_KEYS
    assert (document["total"], document["live"], document["expired"]) == (4, 2, 2)
    for lease in document["leases"]:
        assert set(lease) == LEASE_KEYS
    listed = [(lease["job_id"], lease["owner"], lease["state"], lease["epoch"])
              for lease in document["leases"]]  # fmt: skip
    assert listed == [(ids[name], owner, state, int(epoch))
                      for name, (owner, state, _, epoch) in expected.items()]  # fmt: skip
    lefts = [lease["seconds_left"] for lease in document["leases"]]
    assert lefts[0] < lefts[1] < 0 < lefts[2] < lefts[3]
    assert -510 < lefts[0] <= -500
    assert (document["leases"][0]["work_id"], document["leases"][0]["artifact_id"]) == (
        "W-resume_ok",
        "pdf",
    )

    limited = ok("job", "leases", "--db", sqlite_url, "--limit", "1", cwd=tmp_path)
    assert "... and 3 more (--limit)." in limited
    assert ids["resume_ok"] in limited
    assert ids["head_done"] not in limited


# --- job show -----------------------------------------------------------------------------


def test_show_json_job_and_ops(sqlite_url: str, population: P.Population, tmp_path: Path) -> None:
    job_id = population.job_ids["deduped_old"]
    document = as_json("job", "show", job_id, "--db", sqlite_url, cwd=tmp_path)
    assert set(document) == SHOW_KEYS
    job = document["job"]
    assert set(job) == SHOW_JOB_KEYS
    assert (job["job_id"], job["work_id"], job["artifact_id"], job["state"]) == (
        job_id,
        "W-deduped_old",
        "pdf",
        "DEDUPED",
    )
    assert job["url"] == "https://example.org/W-deduped_old/pdf.pdf"
    assert (job["attempts"], job["max_attempts"], job["lease_owner"]) == (0, 5, None)
    assert job["updated_at"] == pytest.approx(population.now - 5000)
    ops = document["ops"]
    for op in ops:
        assert set(op) == SHOW_OP_KEYS
    assert [(op["kind"], op["status"], op["duration_s"], op["attempt"], op["epoch"])
            for op in ops] == [
        ("HEAD", "SUCCEEDED", 0.02, 1, 0),
        ("STREAM", "ABANDONED", None, 1, 0),
        ("STREAM", "SUCCEEDED", 1.0, 1, 0),
        ("FINALIZE", "SUCCEEDED", 0.004, 1, 0),
    ]  # fmt: skip
    assert [op["op_key"] for op in ops] == [
        key
        for _, key in sorted(
            zip(
                [o[4] for o in P.OPS if o[0] == "deduped_old"],
                population.op_keys["deduped_old"],
                strict=True,
            ),
            reverse=True,  # started the longest ago first
        )
    ]
    assert ops[0]["result"] == '{"ok": true}'
    assert ops[0]["error"] is None
    assert ops[0]["started_at"] == pytest.approx(population.now - 5100)


def test_show_table_columns_and_errors(
    sqlite_url: str, population: P.Population, tmp_path: Path
) -> None:
    text = ok("job", "show", population.job_ids["f404_b"], "--db", sqlite_url, cwd=tmp_path)
    assert f"Job {population.job_ids['f404_b']}" in text
    rows = table_rows(text)
    head = {row[0]: row[1] for row in rows if len(row) == 2}
    assert head["state"] == "FAILED"
    assert head["attempts"] == "5 of 5"
    assert head["last error"] == P.ERROR_404_B
    assert head["work_id / artifact_id"] == "W-f404_b / pdf"
    columns = ["kind", "status", "attempt", "epoch", "started", "duration", "result or error"]
    assert columns in rows
    [op] = [row for row in rows if len(row) == len(columns) and row[0] == "HEAD"]
    assert op[:4] == ["HEAD", "FAILED", "1", "0"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z", op[4]), op
    assert op[5:] == ["0.030 s", "HTTP 404 Not Found"]


# --- job retry ----------------------------------------------------------------------------


def test_retry_named_then_all_failed(
    sqlite_url: str, population: P.Population, tmp_path: Path
) -> None:
    ids = population.job_ids
    one = ok("job", "retry", ids["f404_a"], "--db", sqlite_url, cwd=tmp_path)
    assert "1 jobs have a fresh attempt budget." in one

    document = as_json("job", "retry", "--failed", "--db", sqlite_url, cwd=tmp_path)
    assert set(document) == RETRY_KEYS
    assert sorted(document["retried"]) == sorted(ids[n] for n in ("f404_b", "f404_c", "f503_out"))
    assert document["skipped"] == {}

    status = as_json("job", "status", "--db", sqlite_url, cwd=tmp_path)
    assert (status["failed_exhausted"], status["failed_retrying"]) == (0, 6)
    attempts = dict(
        execute_sql(sqlite_url, "SELECT work_id, attempts FROM artifact_jobs WHERE state='FAILED'")
    )
    assert attempts == {"W-f404_a": 0, "W-f404_b": 0, "W-f404_c": 0, "W-f503_out": 0,
                        "W-f503_retry": 2, "W-timeout_retry": 1}  # fmt: skip


def test_retry_reports_the_jobs_it_skipped(
    sqlite_url: str, population: P.Population, tmp_path: Path
) -> None:
    ids = population.job_ids
    document = as_json(
        "job", "retry", ids["deduped_recent"], "nope", ids["f503_out"], "--db", sqlite_url,
        cwd=tmp_path, exit_code=1,
    )  # fmt: skip
    assert document == {
        "retried": [ids["f503_out"]],
        "skipped": {
            ids["deduped_recent"]: "DEDUPED, not an exhausted FAILED job",
            "nope": "no such job",
        },
    }
    table = docstokg("job", "retry", ids["f503_retry"], "--db", sqlite_url, cwd=tmp_path)
    assert table.returncode == 1, explain(table)
    assert f"skipped {ids['f503_retry']}: FAILED, not an exhausted FAILED job" in table.stdout


# --- job vacuum ---------------------------------------------------------------------------


def test_vacuum_deletes_old_ops_and_reports_the_bytes(
    sqlite_url: str, population: P.Population, tmp_path: Path
) -> None:
    zero = docstokg("job", "vacuum", "--older-than", "0s", "--db", sqlite_url, cwd=tmp_path)
    assert "--older-than '0s' is out of range; give more than 0 s" in error_line(zero, 2)
    assert execute_sql(sqlite_url, "SELECT count(*) FROM artifact_ops") == [(P.TOTAL_OPS,)]

    # ended more than an hour ago: deduped_old, f404_b, f404_c and f503_out (7 ops)
    document = as_json("job", "vacuum", "--older-than", "1h", "--db", sqlite_url, cwd=tmp_path)
    assert set(document) == VACUUM_KEYS
    assert document["ops_deleted"] == P.VACUUM_OPS_DELETED
    assert document["cutoff"] == pytest.approx(time.time() - 3600, abs=60)
    assert document["bytes_before"] > 0
    assert document["bytes_after"] > 0
    assert document["bytes_after"] <= document["bytes_before"]
    assert document["bytes_reclaimed"] == document["bytes_before"] - document["bytes_after"]
    assert document["bytes_after"] == sqlite_path(sqlite_url).stat().st_size
    assert execute_sql(sqlite_url, "SELECT count(*) FROM artifact_ops") == [
        (P.TOTAL_OPS - P.VACUUM_OPS_DELETED,)
    ]
    assert execute_sql(sqlite_url, "SELECT count(*) FROM artifact_jobs") == [(P.TOTAL,)]

    again = ok("job", "vacuum", "--older-than", "30m", "--db", sqlite_url, cwd=tmp_path)
    assert re.search(r"Deleted 0 op rows of jobs ended before \d{4}-\d\d-\d\d ", again), again
    assert "reclaimed" in again


# --- job cleanup --------------------------------------------------------------------------


def test_cleanup_dry_run_then_real_run(
    sqlite_url: str, population: P.Population, tmp_path: Path
) -> None:
    ids = population.job_ids
    staging = tmp_path / "out" / ".staging"
    staging.mkdir(parents=True)
    two_hours_ago = time.time() - 7200
    parts = {}
    for name, old in (("head_done", True), ("leased", True), ("planned_new", False)):
        parts[name] = staging / f"{ids[name]}.part"
        parts[name].write_bytes(b"x" * 10)
        if old:
            os.utime(parts[name], (two_hours_ago, two_hours_ago))
    args = ["job", "cleanup", "--db", sqlite_url, "--staging", str(staging)]
    before = execute_sql(sqlite_url, "SELECT * FROM artifact_jobs ORDER BY job_id")

    dry = as_json(*args, "--dry-run", cwd=tmp_path)
    assert set(dry) == CLEANUP_KEYS
    assert dry == {
        "dry_run": True,
        "expired_leases": 2,
        "abandoned_ops": 2,  # IN_PROGRESS for over lease_ttl_s (120 s) without a live holder
        "stale_parts": [str(parts["head_done"])],
        "jobs_requeued": [],
    }
    dry_text = ok(*args, "--dry-run", cwd=tmp_path)
    assert (
        "cleanup (dry run): would clear 2 expired leases, would mark 2 ops abandoned, would "
        "delete 1 stale .part files, would requeue 0 jobs whose file is missing."
    ) in " ".join(dry_text.split())
    assert all(part.exists() for part in parts.values())
    assert execute_sql(sqlite_url, "SELECT * FROM artifact_jobs ORDER BY job_id") == before

    done = ok(*args, cwd=tmp_path)
    assert (
        "cleanup (done): did clear 2 expired leases, did mark 2 ops abandoned, did delete 1 "
        "stale .part files"
    ) in " ".join(done.split())
    assert not parts["head_done"].exists()
    assert parts["leased"].exists()
    assert parts["planned_new"].exists()

    again = as_json(*args, cwd=tmp_path)
    assert again == {
        "dry_run": False,
        "expired_leases": 0,
        "abandoned_ops": 0,
        "stale_parts": [],
        "jobs_requeued": [],
    }


# --- job metrics --------------------------------------------------------------------------


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    families = list(text_string_to_metric_families(text))
    types = {family.name: family.type for family in families}
    assert types["docstokg_jobs"] == "gauge"
    assert types["docstokg_live_leases"] == "gauge"
    assert types["docstokg_op_duration_seconds"] == "histogram"
    assert types["docstokg_retries"] == "counter"
    assert types["docstokg_step_failures"] == "counter"
    assert types["docstokg_failed_jobs"] == "gauge"
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }


def test_metrics_exposition(sqlite_url: str, population: P.Population, tmp_path: Path) -> None:
    samples = metric_samples(ok("job", "metrics", "--db", sqlite_url, cwd=tmp_path))
    assert {
        labels[0][1]: value for (name, labels), value in samples.items() if name == "docstokg_jobs"
    } == {state.value: count for state, count in P.COUNTS.items()}
    assert samples["docstokg_live_leases", ()] == P.LIVE_LEASES
    assert samples["docstokg_jobs_exhausted", ()] == P.EXHAUSTED
    assert samples["docstokg_abandoned_ops", ()] == P.ABANDONED_OPS
    assert samples["docstokg_retries_total", ()] == P.RETRY_ATTEMPTS
    assert {
        labels[0][1]: value
        for (name, labels), value in samples.items()
        if name == "docstokg_failed_jobs"
    } == {reason: count for reason, count, _ in P.FAILURES}
    counts = {
        labels[0][1]: value
        for (name, labels), value in samples.items()
        if name == "docstokg_op_duration_seconds_count"
    }
    assert counts == {kind: count for kind, (count, _, _) in P.DURATIONS.items()}
    bucket = "docstokg_op_duration_seconds_bucket"
    assert samples[bucket, (("kind", "HEAD"), ("le", "0.05"))] == 5
    assert samples[bucket, (("kind", "STREAM"), ("le", "2.5"))] == 2
    assert samples[bucket, (("kind", "STREAM"), ("le", "+Inf"))] == 3
    assert samples["docstokg_op_duration_seconds_sum", (("kind", "STREAM"),)] == 10.5


# --- a ledger that is not there, not enabled, or too old ---------------------------------
#
# Every command against each case, in process through ``docstokg.cli.main`` (the
# function ``python -m docstokg`` calls, which turns errors into exit codes): the
# same code path as a subprocess without its half a second of imports.  One
# subprocess per case checks the real process too.


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str

    def message(self, exit_code: int | None = None) -> str:
        """The one-line error on stderr (no traceback), given a failing exit code."""
        explained = f"exit {self.code}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        if exit_code is None:
            assert self.code != 0, explained
        else:
            assert self.code == exit_code, explained
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, explained
        assert lines[0].startswith("error: "), explained
        return lines[0]


Invoke = Callable[..., Outcome]


@pytest.fixture
def invoke(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> Invoke:
    """Run ``docstokg ARGS`` in this process, from ``tmp_path``, with no DOCSTOKG_* variable."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("DOCSTOKG_"):
            monkeypatch.delenv(name)

    def run(*args: str) -> Outcome:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["docstokg", *args])
        with pytest.raises(SystemExit) as exited:
            main()
        captured = capsys.readouterr()
        code = exited.value.code
        return Outcome(code if isinstance(code, int) else int(code is not None),
                       captured.out, captured.err)  # fmt: skip

    return run


def foreign_database(path: Path) -> str:
    """A SQLite database of another application: no ledger table."""
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        connection.execute("INSERT INTO notes (body) VALUES ('keep me')")
    connection.close()
    return f"sqlite:///{path}"


def old_database(path: Path) -> str:
    url = f"sqlite:///{path}"
    assert upgrade(url, OLD_REVISION).to_revision == OLD_REVISION
    return url


def folder_state(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def assert_only_read(folder: Path, before: dict[str, bytes]) -> None:
    """Every file as it was; a WAL database may gain its (empty) side files, nothing else.

    Reading a database in WAL mode opens its -wal and -shm files, and a
    read-only connection leaves them behind; an empty -wal proves nothing was
    written.
    """
    after = folder_state(folder)
    for name, content in before.items():
        assert after.pop(name) == content, f"{name} changed"
    allowed = {f"{name}{suffix}" for name in before for suffix in ("-wal", "-shm")}
    assert set(after) <= allowed, sorted(after)
    for name, content in after.items():
        if name.endswith("-wal"):
            assert content == b"", f"{name} holds {len(content)} bytes: something was written"


@pytest.mark.parametrize("command", COMMANDS)
def test_no_ledger_tables_yet(command: str, invoke: Invoke, tmp_path: Path) -> None:
    folder = tmp_path / "db"
    folder.mkdir()
    url = foreign_database(folder / "other.sqlite3")
    before = folder_state(folder)

    message = invoke(*COMMANDS[command], "--db", url).message()
    assert "no ledger tables" in message
    assert "Point --db at the ledger your runs use" in message  # first: the likely fix
    assert "only to start a new, empty ledger here run `docstokg db upgrade" in message
    assert folder_state(folder) == before  # same files, same bytes: nothing created or changed


@pytest.mark.parametrize("command", COMMANDS)
def test_older_schema(command: str, invoke: Invoke, tmp_path: Path) -> None:
    folder = tmp_path / "db"
    folder.mkdir()
    url = old_database(folder / "old.sqlite3")
    before = folder_state(folder)

    message = invoke(*COMMANDS[command], "--db", url).message()
    assert f"revision {OLD_REVISION!r}" in message
    assert f"needs revision {head_revision()!r}" in message
    assert "run `docstokg db upgrade" in message
    assert_only_read(folder, before)


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_file(command: str, invoke: Invoke, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ledger.sqlite3"
    message = invoke(*COMMANDS[command], "--db", f"sqlite:///{missing}").message()
    assert str(missing) in message
    assert "does not exist" in message
    assert "point --db at the ledger your runs use" in message
    assert "config's db_url" in message
    assert "db upgrade" not in message  # AGENTS.md: never create an empty ledger to silence it
    assert not missing.exists()
    assert not missing.parent.exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_no_ledger_named(command: str, invoke: Invoke, tmp_path: Path) -> None:
    message = invoke(*COMMANDS[command]).message(2)
    assert "pass --db URL" in message
    assert "DOCSTOKG_DB_URL" in message
    assert "--out DIR" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_out_dir_names_its_manifest_ledger(
    command: str, invoke: Invoke, tmp_path: Path
) -> None:
    out = tmp_path / "store"
    message = invoke(*COMMANDS[command], "--out", str(out)).message()
    assert str(out / "manifest.sqlite3") in message
    assert not out.exists()


def test_the_real_process_refuses_each_case(tmp_path: Path) -> None:
    """One subprocess per case (a different command each): exit code and one-line error."""
    folder = tmp_path / "db"
    folder.mkdir()
    foreign = foreign_database(folder / "other.sqlite3")
    old = old_database(folder / "old.sqlite3")
    missing = folder / "missing.sqlite3"
    before = folder_state(folder)

    no_tables = docstokg(*COMMANDS["stats"], "--db", foreign, cwd=tmp_path)
    assert "no ledger tables" in error_line(no_tables, 1)
    older = docstokg(*COMMANDS["cleanup"], "--db", old, cwd=tmp_path)
    assert "run `docstokg db upgrade" in error_line(older, 1)
    absent = docstokg(*COMMANDS["vacuum"], "--db", f"sqlite:///{missing}", cwd=tmp_path)
    assert str(missing) in error_line(absent, 1)
    unnamed = docstokg(*COMMANDS["retry"], cwd=tmp_path)
    assert "pass --db URL" in error_line(unnamed, 2)

    assert_only_read(folder, before)
    assert not missing.exists()


def test_every_command_on_a_database_without_ledger_tables_or_too_old(
    backend: str, empty_db_url: str, invoke: Invoke
) -> None:
    """The same refusals on both backends: a database of another application, then revision 4."""
    if backend == "sqlite":
        foreign_database(sqlite_path(empty_db_url))
    else:
        execute_sql(empty_db_url, "CREATE TABLE notes (id integer PRIMARY KEY, body text)")
    for command, args in COMMANDS.items():
        message = invoke(*args, "--db", empty_db_url).message()
        assert "no ledger tables" in message, command
        assert "docstokg db upgrade" in message, command
    assert table_names(empty_db_url) == {"notes"}  # nothing was created
    upgrade(empty_db_url, OLD_REVISION)
    for command, args in COMMANDS.items():
        message = invoke(*args, "--db", empty_db_url).message()
        assert f"revision {OLD_REVISION!r}" in message, command
        assert "run `docstokg db upgrade" in message, command
    assert describe(empty_db_url).revision == OLD_REVISION


def test_the_ledger_is_named_by_env_or_config(
    sqlite_url: str, population: P.Population, invoke: Invoke, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:  # fmt: skip
    """``--db`` > DOCSTOKG_DB_URL > db_url / db_path of the config > ``--out``."""
    monkeypatch.setenv("DOCSTOKG_DB_URL", sqlite_url)
    outcome = invoke("job", "status", "--json")
    assert outcome.code == 0, outcome
    assert json.loads(outcome.stdout)["total"] == P.TOTAL
    monkeypatch.delenv("DOCSTOKG_DB_URL")

    config = tmp_path / "ledger.yaml"
    config.write_text(f"idempotency:\n  db_path: {sqlite_path(sqlite_url)}\n", encoding="utf-8")
    outcome = invoke("job", "stats", "--json", "--config", str(config))
    assert outcome.code == 0, outcome
    assert json.loads(outcome.stdout)["retry_attempts"] == P.RETRY_ATTEMPTS

    config.write_text(f"idempotency:\n  db_url: {sqlite_url}\n", encoding="utf-8")
    outcome = invoke("job", "leases", "--json", "--config", str(config))
    assert outcome.code == 0, outcome
    assert json.loads(outcome.stdout)["total"] == 4


@pytest.mark.parametrize("extra", [[], ["--failed", "some-job"]], ids=["neither", "both"])
def test_retry_needs_jobs_or_failed_but_not_both(
    sqlite_url: str, extra: list[str], invoke: Invoke
) -> None:
    assert "--failed" in invoke("job", "retry", *extra, "--db", sqlite_url).message(2)


def test_show_an_unknown_job(sqlite_url: str, population: P.Population, invoke: Invoke) -> None:
    message = invoke("job", "show", "no-such-job", "--db", sqlite_url).message(1)
    assert "no job with job_id 'no-such-job'" in message


def test_vacuum_needs_a_duration(sqlite_url: str, invoke: Invoke) -> None:
    for text in ("soon", "-1h", "1y"):
        message = invoke("job", "vacuum", "--older-than", text, "--db", sqlite_url).message(2)
        assert f"{text!r} is not a duration" in message


@pytest.mark.parametrize("text", ["99999999999d", "36526d", "9" * 400, "0", "0s"])
def test_vacuum_refuses_a_duration_out_of_range(sqlite_url: str, text: str, invoke: Invoke) -> None:
    message = invoke("job", "vacuum", "--older-than", text, "--db", sqlite_url).message(2)
    assert f"--older-than {text!r} is out of range" in message
    assert "more than 0 s and at most 100 years (36525d)" in message


@pytest.mark.parametrize("option", ["--out", "--staging"])
def test_an_empty_folder_option_is_a_usage_error(
    sqlite_url: str, option: str, invoke: Invoke, tmp_path: Path
) -> None:
    args = ["job", "cleanup", "--db", sqlite_url, option, ""]
    outcome = invoke(*args)
    assert outcome.code == 2, outcome
    assert f"Invalid value for '{option}'" in outcome.stderr
    assert "is empty" in outcome.stderr


def test_a_password_in_the_ledger_url_is_not_printed(invoke: Invoke) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        url = f"postgresql+psycopg://ledger:s3cret-pw@127.0.0.1:{port}/x?password=other-pw"
        for command, args in COMMANDS.items():
            outcome = invoke(*args, "--db", url)
            message = outcome.message(1)
            assert f"ledger:***@127.0.0.1:{port}/x?password=***" in message, command
            assert "s3cret-pw" not in outcome.stdout + outcome.stderr, command
            assert "other-pw" not in outcome.stdout + outcome.stderr, command


def test_out_dir_is_the_ledger_of_a_run(invoke: Invoke, tmp_path: Path) -> None:
    out = tmp_path / "store"
    url = f"sqlite:///{out / 'manifest.sqlite3'}"
    upgrade(url)
    populated(url)
    outcome = invoke("job", "status", "--out", str(out), "--json")
    assert outcome.code == 0, outcome
    assert json.loads(outcome.stdout)["total"] == P.TOTAL


# --- run --metrics-port -------------------------------------------------------------------


def test_run_serves_metrics_while_it_runs(server: ArtifactServer, tmp_path: Path) -> None:
    path = "/held/dataset.bin"
    body = generated_body(path, 512 * 1024)
    url = server.add(path, Artifact(body, pause_after=128 * 1024))
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"work_id": "W1", "artifact_id": "data", "url": url}) + "\n")
    port = free_port()
    out = tmp_path / "out"
    with (tmp_path / "run.out").open("wb") as stdout, (tmp_path / "run.err").open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "docstokg", "run", str(manifest), "--out", str(out),
             "--idempotency", "--workers", "1", "--metrics-port", str(port)],
            cwd=tmp_path, env=cli_env(), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
        )  # fmt: skip
    try:
        assert server.wait_paused(path, timeout=30), (tmp_path / "run.err").read_text()
        # The download is held mid-body: the job has its HEAD done and its lease live.
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert response.status_code == 200
        samples = metric_samples(response.text)
        jobs = {
            labels[0][1]: value
            for (name, labels), value in samples.items()
            if name == "docstokg_jobs"
        }
        assert jobs == {state: (1 if state == "HEAD_DONE" else 0) for state in STATES}
        assert samples["docstokg_live_leases", ()] == 1
        assert samples["docstokg_op_duration_seconds_count", (("kind", "HEAD"),)] == 1
        assert ("docstokg_op_duration_seconds_count", (("kind", "STREAM"),)) not in samples
    finally:
        server.release(path)
    assert process.wait(timeout=RUN_TIMEOUT_S) == 0, (tmp_path / "run.err").read_text()
    with pytest.raises(httpx.ConnectError):  # served while it ran, and only then
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_metrics_port_needs_the_ledger(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.jsonl"
    row = {"work_id": "W1", "artifact_id": "pdf", "url": "http://127.0.0.1:9/x"}
    manifest.write_text(json.dumps(row) + "\n")
    result = docstokg(
        "run", str(manifest), "--out", str(tmp_path / "out"), "--metrics-port", "9100",
        cwd=tmp_path,
    )  # fmt: skip
    message = error_line(result, 2)
    assert "--metrics-port 9100 needs the ledger" in message
    assert "--idempotency" in message
    assert not (tmp_path / "out" / "manifest.sqlite3").exists()


def test_metrics_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.jsonl"
    row = {"work_id": "W1", "artifact_id": "pdf", "url": "http://127.0.0.1:9/x"}
    manifest.write_text(json.dumps(row) + "\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = docstokg(
            "run", str(manifest), "--out", str(tmp_path / "out"), "--idempotency",
            "--metrics-port", str(port), cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 2, explain(result)
    assert "Traceback" not in result.stderr, explain(result)
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "pick a free --metrics-port" in result.stderr


# --- the numbers of a real run ------------------------------------------------------------


def test_stats_and_metrics_count_the_retries_a_real_run_made(
    server: ArtifactServer, invoke: Invoke, tmp_path: Path
) -> None:
    """A 404 is tried once and never retried; a 503 then 200 is retried once.

    The server counts the requests, so "retries" has one meaning here: requests
    beyond the first of each artifact.  1 job retried, 1 retry in all.
    """
    rows = []
    for name, artifact in (
        ("ok", Artifact(generated_body("/ok", 1000))),
        ("gone", Artifact(b"", status=404)),
        ("flaky", Artifact(generated_body("/flaky", 1000), faults=[Fault(503)])),
    ):
        rows.append(
            {"work_id": name, "artifact_id": "pdf", "url": server.add(f"/{name}", artifact)}
        )
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    env = cli_env()
    env["DOCSTOKG_IDEMPOTENCY_BACKOFF_BASE_S"] = "0.01"
    run = subprocess.run(
        [sys.executable, "-m", "docstokg", "run", str(manifest), "--out", str(out),
         "--idempotency", "--workers", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert run.returncode == 1, explain(run)  # one artifact failed
    gone, flaky = server.stats("/gone"), server.stats("/flaky")
    assert gone.head_requests + gone.get_requests == 1  # tried once, never retried
    assert flaky.faults_served == 1  # failed once, then fetched

    outcome = invoke("job", "stats", "--out", str(out), "--json")
    assert outcome.code == 0, outcome
    stats = json.loads(outcome.stdout)
    assert stats["counts"]["DEDUPED"] == 2
    assert [(f["reason"], f["count"], f["exhausted"]) for f in stats["top_failures"]] == [
        ("http_404", 1, 1)
    ]
    outcome = invoke("job", "metrics", "--out", str(out))
    assert outcome.code == 0, outcome
    samples = metric_samples(outcome.stdout)
    assert samples["docstokg_failed_jobs", (("reason", "http_404"),)] == 1
    # The 404's HEAD and the 503's first HEAD did not succeed; the 503's second did.
    assert samples["docstokg_step_failures_total", (("kind", "HEAD"),)] == 2
    # The 404 was never retried: it must not count as a retried job, nor as retries.
    assert (stats["retried_jobs"], stats["retry_attempts"]) == (1, 1), stats
    assert samples["docstokg_retries_total", ()] == 1
