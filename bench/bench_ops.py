"""Operator reports at scale: ``job status`` and ``job stats`` on 1,000,000 jobs / 5,000,000 ops.

Builds a SQLite ledger at the head revision (``Ledger.upgrade``), then fills it
with plain ``sqlite3`` in one process and one transaction (the explicit indexes
are dropped first and re-created from their own SQL afterwards, which sorts
once instead of inserting 5 million random keys into each B-tree).  The
population is a ledger after a month of work: jobs planned in batches over 30
days ending now, ~90% DEDUPED, some SKIPPED_DUPLICATE, FAILED ones (out of
attempts, and still retrying) with a few kinds of last_error (404/410 texts
carry the job's URL, as real ones do), a few in flight with live and expired
leases.  Every job has one op of each kind (HEAD, STREAM, FINALIZE, INDEX,
DEDUPE): SUCCEEDED with a realistic duration_s for finished jobs; for a job
that stopped at some step, the op of that step is FAILED or IN_PROGRESS and
the ops past it are ABANDONED leftovers without a duration (so that the ledger
holds exactly 5 ops per job, as the requirement counts them).

Then it measures, through the services and once each through the CLI:
``job_status(ledger)``, ``job_status(ledger, window_s=3600)``, ``job_stats(ledger)``
(a cold first call: fresh Ledger, the file's pages dropped from the OS cache
with posix_fadvise(DONTNEED); then the median of warm calls), and prints
``EXPLAIN QUERY PLAN`` of every SQL statement they run, as recorded by a
``before_cursor_execute`` listener on the ledger's engine, with the time each
statement takes on its own, cold and warm.  The CLI wall times include about
0.65 s of interpreter start-up and imports, printed apart (``job status --help``).
Other processes sharing the machine skew the figures: run it on a quiet one.

docstokg never runs ANALYZE on SQLite (only ``Ledger.compact`` on PostgreSQL
runs VACUUM (ANALYZE)), so a production ledger usually has no sqlite_stat1.
The script measures first without statistics, then after ``ANALYZE``, and
says whether any plan changed.

    .venv/bin/python bench/bench_ops.py [--jobs 1000000] [--db-path PATH] [--reuse]
                                        [--runs 5] [--no-analyze-phase]

Goal (issue): `job status` and `job stats` each under 1 s on SQLite, thanks to indexes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import event

from docstokg import Ledger
from docstokg.keys import job_id_for
from docstokg.ledger import migrate
from docstokg.services.operations import job_stats, job_status

GOAL_S = 1.0
WINDOW_S = 3600.0
DAY_S = 86_400.0
SPAN_S = 30 * DAY_S
PLAN_BATCH = 1_000  # jobs planned together share one created_at (plan_many uses one "now")
CHUNK = 20_000  # jobs per executemany round (and their ops)
TTL_S = 300.0
MAX_ATTEMPTS = 5
KINDS = ("HEAD", "STREAM", "FINALIZE", "INDEX", "DEDUPE")
SQL_WIDTH = 300  # longer SQL is cut in the plan listing

# (state, share of the jobs).  Shares add up to 1.
POPULATION = (
    ("DEDUPED", 0.895),
    ("SKIPPED_DUPLICATE", 0.045),
    ("FAILED_EXHAUSTED", 0.025),
    ("FAILED_RETRYING", 0.015),
    ("PLANNED", 0.008),
    ("LEASED", 0.002),
    ("HEAD_DONE", 0.002),
    ("RESUME_OK", 0.001),
    ("STREAMING", 0.004),
    ("FINALIZED", 0.002),
    ("INDEXED", 0.001),
)
# Ops that succeeded before a job in this state was caught; the next one is in progress.
DONE_STEPS = {
    "PLANNED": 0,
    "LEASED": 0,
    "HEAD_DONE": 1,
    "RESUME_OK": 1,
    "STREAMING": 2,
    "FINALIZED": 3,
    "INDEXED": 4,
}
# (last_error, failing step, permanent).  "{url}" is the job's URL.
ERRORS = (
    ("HTTP 404 Not Found for {url} (permanent: not retried)", 0, True),
    ("HTTP 410 Gone for {url} (permanent: not retried)", 0, True),
    ("HTTP 503 Service Unavailable for https://example.org/ (retry after 120 s)", 0, False),
    ("HTTP 429 Too Many Requests for https://example.org/ (retry after 60 s)", 0, False),
    ("ReadTimeout: timed out", 1, False),
    ("ConnectError: [Errno 111] Connection refused", 0, False),
    ("server sent 1048576 of 4194304 bytes", 1, False),
)
OWNERS = tuple(f"worker-{host}-{pid}" for host in ("a", "b", "c") for pid in (4101, 4102, 4103))

JOB_COLUMNS = (
    "job_id", "work_id", "artifact_id", "canonical_url", "state", "lease_owner", "lease_until",
    "created_at", "updated_at", "idempotency_key", "lease_epoch", "attempts", "max_attempts",
    "next_attempt_at", "last_error", "sha256", "final_path", "size_bytes", "content_type",
)  # fmt: skip
OP_COLUMNS = (
    "op_key", "job_id", "op_type", "started_at", "finished_at", "result_code", "result_json",
    "status", "attempt", "lease_epoch", "error", "duration_s",
)  # fmt: skip

Row = tuple[Any, ...]


# --- building the ledger ----------------------------------------------------------------


def _duration(rng: random.Random, kind: str) -> float:
    """How long one successful run of ``kind`` takes, in seconds."""
    if kind == "HEAD":
        return min(30.0, max(0.002, rng.lognormvariate(math.log(0.08), 0.8)))
    if kind == "STREAM":
        return math.exp(rng.uniform(math.log(0.010), math.log(5.0)))
    if kind == "FINALIZE":
        return math.exp(rng.uniform(math.log(0.001), math.log(0.030)))
    return math.exp(rng.uniform(math.log(0.0005), math.log(0.010)))


def _result(kind: str, size: int, sha: str, path: str) -> str:
    if kind == "HEAD":
        document: dict[str, object] = {
            "status": 200,
            "content_type": "application/pdf",
            "content_length": size,
        }
    elif kind == "STREAM":
        document = {"bytes": size, "sha256": sha}
    elif kind == "FINALIZE":
        document = {"final_path": path}
    elif kind == "INDEX":
        document = {"sha256": sha}
    else:
        document = {"stored": True}
    return json.dumps(document, separators=(",", ":"))


@dataclass
class JobPlan:
    """One job as the generator decides it, before it becomes rows."""

    n: int
    kind: str  # an entry of POPULATION
    created_at: float
    attempts: int = 0
    error: str | None = None
    fail_step: int = 0


@dataclass
class Population:
    rng: random.Random
    now: float
    jobs: int
    stored: list[str] = field(default_factory=list)  # recent DEDUPED sha256, for duplicates

    def plans(self) -> Iterator[JobPlan]:
        batches = max(1, math.ceil(self.jobs / PLAN_BATCH))
        step = SPAN_S / batches
        start = self.now - SPAN_S
        names = [name for name, _ in POPULATION]
        weights = [share for _, share in POPULATION]
        for batch in range(batches):
            created = start + (batch + 0.1 + 0.8 * self.rng.random()) * step
            for n in range(batch * PLAN_BATCH, min(self.jobs, (batch + 1) * PLAN_BATCH)):
                kind = self.rng.choices(names, weights)[0]
                yield self._plan(n, kind, created)

    def _plan(self, n: int, kind: str, created: float) -> JobPlan:
        plan = JobPlan(n, kind, created)
        if kind.startswith("FAILED"):
            template, plan.fail_step, _ = self.rng.choice(
                ERRORS if kind == "FAILED_EXHAUSTED" else [e for e in ERRORS if not e[2]]
            )
            plan.error = template
            plan.attempts = MAX_ATTEMPTS if kind == "FAILED_EXHAUSTED" else self.rng.randint(1, 4)
        elif kind in ("DEDUPED", "SKIPPED_DUPLICATE") and self.rng.random() < 0.03:
            plan.attempts = self.rng.randint(1, 2)  # succeeded after a retry
        return plan

    def rows(self, plan: JobPlan) -> tuple[Row, list[Row]]:
        """The job's row and its five ops' rows."""
        rng = self.rng
        work, artifact = f"W{plan.n // 4:07d}", f"A{plan.n % 4}"
        url = f"https://example.org/works/{plan.n // 4}/{plan.n % 4}.pdf"
        key = hashlib.sha256(f"job|{work}|{artifact}|{url}".encode()).hexdigest()
        job_id = job_id_for(key)
        size = int(math.exp(rng.uniform(math.log(20_000), math.log(50_000_000))))
        sha = hashlib.sha256(f"content|{plan.n}".encode()).hexdigest()
        path = f"store/{sha[:2]}/{sha[2:4]}/{sha}.pdf"
        state = plan.kind
        live = state in DONE_STEPS and state != "PLANNED" and rng.random() < 0.6
        grant = self._grant_time(plan, live)
        done = self._done_steps(plan)
        ops, end = self._ops(plan, job_id, grant, done, (size, sha, path), live=live)
        lease_owner = lease_until = next_attempt = last_error = None
        epoch = plan.attempts + (0 if state.startswith("FAILED") else 1)
        content: tuple[str | None, str | None, int | None, str | None] = (None, None, None, None)
        if state.startswith("FAILED"):
            last_error = (plan.error or "").format(url=url)
            state = "FAILED"
            if plan.kind == "FAILED_RETRYING":
                next_attempt = end + 30.0 * 2**plan.attempts
        elif state == "PLANNED":
            epoch, end = 0, plan.created_at
        elif state in DONE_STEPS:  # in flight: holds a lease, live or expired
            lease_owner, lease_until = rng.choice(OWNERS), grant + TTL_S
        if plan.kind == "DEDUPED":
            content = (sha, path, size, "application/pdf")
            self.stored.append(sha)
            if len(self.stored) > 2_000:
                del self.stored[:1_000]
        elif plan.kind == "SKIPPED_DUPLICATE" and self.stored:
            content = (rng.choice(self.stored), None, size, "application/pdf")
        elif plan.kind in ("FINALIZED", "INDEXED"):
            content = (sha, path, size, "application/pdf")
        job = (
            job_id, work, artifact, url, state, lease_owner, lease_until, plan.created_at,
            end, key, epoch, plan.attempts, MAX_ATTEMPTS, next_attempt, last_error, *content,
        )  # fmt: skip
        return job, ops

    def _grant_time(self, plan: JobPlan, live: bool) -> float:
        """When the last holder was granted the job."""
        if live:
            return self.now - self.rng.uniform(5.0, 240.0)
        room = max(0.0, self.now - plan.created_at - 120.0)
        return plan.created_at + self.rng.uniform(0.0, min(4 * 3600.0, room))

    def _done_steps(self, plan: JobPlan) -> int:
        if plan.kind in ("DEDUPED", "SKIPPED_DUPLICATE"):
            return len(KINDS)
        if plan.kind.startswith("FAILED"):
            return plan.fail_step
        return DONE_STEPS[plan.kind]

    def _ops(
        self,
        plan: JobPlan,
        job_id: str,
        grant: float,
        done: int,
        content: tuple[int, str, str],
        *,
        live: bool,
    ) -> tuple[list[Row], float]:
        rng = self.rng
        epoch = max(1, plan.attempts + (0 if plan.kind.startswith("FAILED") else 1))
        ops: list[Row] = []
        t = grant + rng.uniform(0.0005, 0.003)
        end = grant
        for step, kind in enumerate(KINDS):
            key = hashlib.sha256(f"op|{kind}|{job_id}".encode()).hexdigest()
            if step < done:
                duration = _duration(rng, kind)
                attempt = plan.attempts + 1 if kind == "STREAM" and plan.attempts else 1
                ops.append(
                    (key, job_id, kind, t, t + duration, "OK", _result(kind, *content),
                     "SUCCEEDED", attempt, epoch, None, duration)
                )  # fmt: skip
                end = t + duration
                t = end + rng.uniform(0.0005, 0.003)
            elif step == done and plan.kind.startswith("FAILED"):
                duration = 30.0 if "timed out" in (plan.error or "") else _duration(rng, "HEAD")
                error = (plan.error or "").split(" for ")[0]
                ops.append(
                    (key, job_id, kind, t, t + duration, "ERROR", None, "FAILED",
                     plan.attempts, epoch, error, duration)
                )  # fmt: skip
                end = t + duration
            elif step == done and plan.kind != "PLANNED":
                started = min(t, self.now - 0.5) if live else t
                ops.append(
                    (key, job_id, kind, started, None, None, None, "IN_PROGRESS", 1, epoch,
                     None, None)
                )  # fmt: skip
            else:
                ops.append(
                    (key, job_id, kind, plan.created_at, None, None, None, "ABANDONED", 1, 0,
                     "abandoned: no result from the holder within 600 s", None)
                )  # fmt: skip
        return ops, end


@dataclass
class BuildInfo:
    seconds: float
    jobs: int
    ops: int
    reused: bool


def _explicit_indexes(connection: sqlite3.Connection) -> list[tuple[str, str]]:
    rows = connection.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
        "AND tbl_name IN ('artifact_jobs', 'artifact_ops') ORDER BY name"
    )
    return [(str(name), str(sql)) for name, sql in rows]


def build(path: Path, jobs: int, seed: int) -> BuildInfo:
    started = time.perf_counter()
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    url = f"sqlite:///{path}"
    with Ledger.connect(url) as ledger:
        ledger.upgrade()
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in (
            "journal_mode = OFF",
            "synchronous = OFF",
            "locking_mode = EXCLUSIVE",
            "cache_size = -4000000",
            "temp_store = MEMORY",
        ):
            connection.execute(f"PRAGMA {pragma}")
        indexes = _explicit_indexes(connection)
        connection.execute("BEGIN")
        for name, _ in indexes:
            connection.execute(f"DROP INDEX {name}")
        population = Population(random.Random(seed), time.time(), jobs)
        job_sql = _insert_sql("artifact_jobs", JOB_COLUMNS)
        op_sql = _insert_sql("artifact_ops", OP_COLUMNS)
        job_rows: list[Row] = []
        op_rows: list[Row] = []
        total_ops = 0
        for plan in population.plans():
            job, ops = population.rows(plan)
            job_rows.append(job)
            op_rows.extend(ops)
            if len(job_rows) >= CHUNK:
                connection.executemany(job_sql, job_rows)
                connection.executemany(op_sql, op_rows)
                total_ops += len(op_rows)
                job_rows, op_rows = [], []
        connection.executemany(job_sql, job_rows)
        connection.executemany(op_sql, op_rows)
        total_ops += len(op_rows)
        filled = time.perf_counter() - started
        for _, sql in indexes:
            connection.execute(sql)
        connection.execute("COMMIT")
        indexed = time.perf_counter() - started - filled
        print(f"  filled in {filled:.1f} s, indexes re-created in {indexed:.1f} s")
        connection.execute("PRAGMA locking_mode = NORMAL")
        connection.execute("PRAGMA journal_mode = WAL")  # as the ledger keeps it
    finally:
        connection.close()
    migrate.require_current(url)
    return BuildInfo(time.perf_counter() - started, jobs, total_ops, reused=False)


def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    marks = ", ".join("?" for _ in columns)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"


def _counts(path: Path) -> tuple[int, int]:
    with _plain(path) as connection:
        (jobs,) = connection.execute("SELECT count(*) FROM artifact_jobs").fetchone()
        (ops,) = connection.execute("SELECT count(*) FROM artifact_ops").fetchone()
    return int(jobs), int(ops)


class _plain:
    """A read-only plain sqlite3 connection, with the ledger's page cache size."""

    def __init__(self, path: Path, *, writable: bool = False) -> None:
        mode = "rw" if writable else "ro"
        self.connection = sqlite3.connect(
            f"file:{path}?mode={mode}", uri=True, isolation_level=None
        )
        self.connection.execute("PRAGMA cache_size = -32768")

    def __enter__(self) -> sqlite3.Connection:
        return self.connection

    def __exit__(self, *_: object) -> None:
        self.connection.close()


def describe(path: Path) -> None:
    """What the ledger holds: jobs by state, ops by status, distinct errors."""
    with _plain(path) as connection:
        states = connection.execute(
            "SELECT state, count(*) FROM artifact_jobs GROUP BY state ORDER BY 2 DESC"
        ).fetchall()
        statuses = connection.execute(
            "SELECT status, count(*) FROM artifact_ops GROUP BY status ORDER BY 2 DESC"
        ).fetchall()
        (errors,) = connection.execute(
            "SELECT count(DISTINCT last_error) FROM artifact_jobs WHERE state = 'FAILED'"
        ).fetchone()
        (leases,) = connection.execute(
            "SELECT count(*) FROM artifact_jobs WHERE lease_until IS NOT NULL"
        ).fetchone()
    print("  jobs: " + ", ".join(f"{state} {count:,}" for state, count in states))
    print("  ops:  " + ", ".join(f"{status} {count:,}" for status, count in statuses))
    print(f"  {errors:,} distinct last_error texts; {leases:,} leases held (live or expired)")


def _drop_statistics(path: Path) -> None:
    with _plain(path, writable=True) as connection:
        for table in ("sqlite_stat1", "sqlite_stat4"):
            exists = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE name = ?", (table,)
            ).fetchone()
            if exists:
                connection.execute(f"DROP TABLE {table}")


def _analyze(path: Path) -> float:
    started = time.perf_counter()
    with _plain(path, writable=True) as connection:
        connection.execute("ANALYZE")
    return time.perf_counter() - started


# --- measuring ----------------------------------------------------------------------------

REPORTS: dict[str, Callable[[Ledger], object]] = {
    "job status": job_status,
    f"job status --window-s {WINDOW_S:g}": lambda ledger: job_status(ledger, window_s=WINDOW_S),
    "job stats": job_stats,
}
CLI_ARGS = {
    "job status": ["job", "status"],
    f"job status --window-s {WINDOW_S:g}": ["job", "status", "--window-s", f"{WINDOW_S:g}"],
    "job stats": ["job", "stats"],
}


@dataclass
class Timing:
    first_s: float
    warm_s: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.warm_s)


def drop_os_cache(path: Path) -> bool:
    """Ask the kernel to forget the ledger's cached pages, for a cold first call."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for name in (path, path.with_name(path.name + "-wal")):
        if name.exists():
            descriptor = os.open(name, os.O_RDONLY)
            try:
                os.fsync(descriptor)
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)
    return True


def time_services(path: Path, runs: int) -> dict[str, Timing]:
    timings: dict[str, Timing] = {}
    url = f"sqlite:///{path}"
    for name, report in REPORTS.items():
        drop_os_cache(path)
        with Ledger.connect(url) as ledger:  # fresh: empty page cache, schema check included
            started = time.perf_counter()
            report(ledger)
            first = time.perf_counter() - started
            warm = []
            for _ in range(runs):
                started = time.perf_counter()
                report(ledger)
                warm.append(time.perf_counter() - started)
        timings[name] = Timing(first, warm)
        print(
            f"  {name:<28} first {first * 1000:8.1f} ms   warm median "
            f"{timings[name].median_s * 1000:8.1f} ms  (min {min(warm) * 1000:.1f}, "
            f"max {max(warm) * 1000:.1f})"
        )
    return timings


def time_cli(url: str) -> tuple[float, dict[str, float]]:
    """Wall time of each command as a subprocess, and of the CLI's bare start-up."""
    env = dict(os.environ, NO_COLOR="1", COLUMNS="120")
    env.pop("DOCSTOKG_DB_URL", None)

    def run(args: list[str]) -> float:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "docstokg", *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"docstokg {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return elapsed

    startup = min(run(["job", "status", "--help"]) for _ in range(2))
    print(f"  {'(start-up: job status --help)':<34} {startup * 1000:8.1f} ms")
    walls = {}
    for name, args in CLI_ARGS.items():
        with Ledger.connect(url) as ledger:
            REPORTS[name](ledger)  # warms the OS cache for the pages this command reads
        walls[name] = run([*args, "--db", url, "--json"])
        print(f"  {'docstokg ' + name + ' --json':<34} {walls[name] * 1000:8.1f} ms wall")
    return startup, walls


@dataclass
class Statement:
    report: str
    sql: str
    parameters: Any


def record_statements(url: str) -> list[Statement]:
    """Every statement the reports send, through a listener on the ledger's engine."""
    recorded: list[Statement] = []
    with Ledger.connect(url) as ledger:
        job_status(ledger)  # the schema check runs once per Ledger: keep it out of the record
        current = ""

        def listener(
            _conn: object,
            _cursor: object,
            statement: str,
            parameters: Any,
            _context: object,
            _executemany: bool,
        ) -> None:
            recorded.append(Statement(current, statement, parameters))

        engine = ledger._engine
        event.listen(engine, "before_cursor_execute", listener)
        try:
            for current, report in REPORTS.items():  # noqa: B007 (read by the listener)
                report(ledger)
        finally:
            event.remove(engine, "before_cursor_execute", listener)
    return recorded


def _plan_lines(connection: sqlite3.Connection, statement: Statement) -> list[str]:
    rows = connection.execute(f"EXPLAIN QUERY PLAN {statement.sql}", statement.parameters)
    depth: dict[int, int] = {0: 0}
    lines = []
    for node, parent, _, detail in rows:
        depth[node] = depth.get(parent, 0) + 1
        lines.append(f"{'  ' * depth[node]}{detail}")
    return lines


def _time_statement(path: Path, statement: Statement, runs: int) -> tuple[float, float]:
    """(cold, warm median) seconds: the first run on a new connection after dropping
    the OS cache, then ``runs`` more."""
    drop_os_cache(path)
    with _plain(path) as connection:
        times = []
        for _ in range(runs + 1):
            started = time.perf_counter()
            connection.execute(statement.sql, statement.parameters).fetchall()
            times.append(time.perf_counter() - started)
    return times[0], statistics.median(times[1:])


def _one_line(sql: str) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= SQL_WIDTH else text[: SQL_WIDTH - 3] + "..."


def show_plans(
    path: Path, statements: list[Statement], earlier: dict[str, list[str]] | None
) -> tuple[dict[str, list[str]], list[tuple[str, float, float]]]:
    """Print each statement's plan (or "same plan" against ``earlier``) and its own time."""
    plans: dict[str, list[str]] = {}
    slow: list[tuple[str, float, float]] = []
    with _plain(path) as connection:
        report = None
        for statement in statements:
            if statement.sql.lstrip().upper().startswith("PRAGMA"):
                continue
            if statement.report != report:
                report = statement.report
                print(f"\n  -- {report}")
            lines = _plan_lines(connection, statement)
            cold, warm = _time_statement(path, statement, 3)
            params = "" if not statement.parameters else f"   params {statement.parameters}"
            print(
                f"\n  [cold {cold * 1000:7.1f} ms | warm {warm * 1000:6.1f} ms] "
                f"{_one_line(statement.sql)}{params}"
            )
            if earlier is not None and earlier.get(statement.sql) == lines:
                print("      (same plan as without ANALYZE)")
            else:
                for line in lines:
                    print(f"    {line}")
            plans[statement.sql] = lines
            if max(cold, warm) > GOAL_S / 4:
                slow.append((_one_line(statement.sql), cold, warm))
    return plans, slow


# --- the run ------------------------------------------------------------------------------


@dataclass
class Phase:
    label: str
    services: dict[str, Timing]
    cli: dict[str, float]
    startup_s: float
    slow: list[tuple[str, float, float]]


def measure_phase(
    label: str, path: Path, runs: int, earlier: dict[str, list[str]] | None
) -> tuple[Phase, dict[str, list[str]]]:
    url = f"sqlite:///{path}"
    print(
        f"\n== {label}: services (first call: fresh Ledger, OS cache of the file dropped; "
        f"then {runs} warm calls)"
    )
    services = time_services(path, runs)
    print(f"\n== {label}: CLI, one subprocess each (OS cache warmed by a service call)")
    startup, cli = time_cli(url)
    print(
        f"\n== {label}: EXPLAIN QUERY PLAN of every statement the reports run "
        "(timed alone on a plain sqlite3 connection: cold after dropping the OS cache, "
        "then warm median of 3)"
    )
    plans, slow = show_plans(path, record_statements(url), earlier)
    return Phase(label, services, cli, startup, slow), plans


def _prepare(args: argparse.Namespace) -> tuple[Path, BuildInfo]:
    path = (
        Path(args.db_path)
        if args.db_path
        else Path(tempfile.gettempdir()) / (f"docstokg-bench-ops-{args.jobs}.sqlite3")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if args.reuse and path.exists():
        try:
            migrate.require_current(f"sqlite:///{path}")
            jobs, ops = _counts(path)
        except Exception as exc:  # noqa: BLE001 (any doubt: rebuild)
            print(f"cannot reuse {path} ({exc}); building it again")
        else:
            if jobs == args.jobs:
                print(f"reusing {path}: {jobs:,} jobs, {ops:,} ops")
                return path, BuildInfo(0.0, jobs, ops, reused=True)
            print(f"{path} holds {jobs:,} jobs, not {args.jobs:,}; building it again")
    print(f"building {path}: {args.jobs:,} jobs, {len(KINDS) * args.jobs:,} ops")
    return path, build(path, args.jobs, args.seed)


def _figures(path: Path, info: BuildInfo, phases: list[Phase], analyze_s: float | None) -> bool:
    print("\n== figures")
    size = path.stat().st_size
    built = "reused (--reuse)" if info.reused else f"{info.seconds:.1f} s"
    print(f"ledger     {info.jobs:,} jobs, {info.ops:,} ops, {size / 2**20:,.0f} MiB")
    print(f"build      {built}")
    if analyze_s is not None:
        print(f"ANALYZE    {analyze_s:.1f} s")
    met = cli_met = True
    for phase in phases:
        print(f"\n{phase.label}")
        print(f"  {'command':<28} {'first':>9} {'warm':>9} {'CLI wall':>10}")
        for name, timing in phase.services.items():
            print(
                f"  {name:<28} {timing.first_s * 1000:7.0f}ms {timing.median_s * 1000:7.0f}ms "
                f"{phase.cli[name] * 1000:8.0f}ms"
            )
            met = met and max(timing.first_s, timing.median_s) < GOAL_S
            cli_met = cli_met and phase.cli[name] < GOAL_S
        print(f"  CLI start-up alone (job status --help): {phase.startup_s * 1000:.0f} ms")
        for sql, cold, warm in phase.slow:
            print(f"  slow statement (cold {cold * 1000:.0f} ms, warm {warm * 1000:.0f} ms): {sql}")
    goal = f"goal: job status, job status --window-s, job stats each < {GOAL_S:g} s"
    print(f"\n{goal}, as service calls (cold and warm): {'met' if met else 'NOT MET'}")
    print(f"{goal}, as CLI processes (wall): {'met' if cli_met else 'NOT MET'}")
    return met and cli_met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000, help="5 ops per job")
    parser.add_argument("--db-path", help="where to build (or --reuse) the ledger file")
    parser.add_argument("--reuse", action="store_true", help="keep an existing file of --jobs")
    parser.add_argument("--runs", type=int, default=5, help="warm calls per report")
    parser.add_argument("--seed", type=int, default=20261129)
    parser.add_argument(
        "--no-analyze-phase", action="store_true", help="skip the run after ANALYZE"
    )
    args = parser.parse_args()

    path, info = _prepare(args)
    describe(path)
    _drop_statistics(path)  # as docstokg leaves a ledger: no sqlite_stat1
    phases = []
    phase, plans = measure_phase("without ANALYZE (as docstokg leaves it)", path, args.runs, None)
    phases.append(phase)
    analyze_s = None
    if not args.no_analyze_phase:
        analyze_s = _analyze(path)
        print(f"\nANALYZE took {analyze_s:.1f} s")
        phase, _ = measure_phase("after ANALYZE", path, args.runs, plans)
        phases.append(phase)
    met = _figures(path, info, phases, analyze_s)
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
