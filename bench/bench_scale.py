"""Ledger growth: bytes per job, query times and what ``job vacuum`` reclaims, 1K to 1M jobs.

The ledger grows by bulk planning (``plan_jobs``, 10,000 rows a transaction)
to each size in turn.  At each size the script

* finishes ``--finish-fraction`` of the new jobs (at least ``--claims``) the
  way tests/scale_kit.py does: a lease, then the five steps of a download
  in one unit of work, so each leaves a DEDUPED job and five op rows; the
  first ``--claims`` leases are timed one by one (one worker, no contention:
  the cost of the claim statement at that size);
* prints bytes per job: SQLite's file plus its WAL after a checkpoint,
  PostgreSQL's ``pg_total_relation_size`` of the ledger tables;
* times the services behind ``docstokg job status``, ``job stats``, ``job
  leases`` and ``job show``, and the reads a runner makes (get_job,
  jobs_among and count_unfinished of 1,000 jobs), median of ``--repeats``;
* runs ``vacuum_ops`` (``docstokg job vacuum``) on the jobs just finished and
  prints the op rows it deleted and the bytes it gave back.

    .venv/bin/python bench/bench_scale.py [--sizes 1000,10000,100000,1000000]
                                          [--backend sqlite|postgresql] [--pg-url URL]

PostgreSQL is a throwaway 15 cluster this script starts itself (fsync off, as
for the tests), unless ``--pg-url`` names a database to fill.  Figures only:
nothing here is a goal.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg
from tests.pgcluster import ThrowawayPostgres
from tests.scale_kit import LEASE_TTL_S, finish, quantile, specs, timed

from docstokg import Ledger, lease_next_job, plan_jobs
from docstokg.keys import job_id_for, job_key
from docstokg.services import count_unfinished, get_job, jobs_among
from docstokg.services.operations import (
    job_leases,
    job_stats,
    job_status,
    job_timeline,
    vacuum_ops,
)

LEDGER_TABLES = ("artifact_jobs", "artifact_ops", "manifest_jobs", "_meta")
SAMPLE = 1_000  # jobs read by jobs_among / count_unfinished
FINISHERS = 8  # threads finishing the fraction of jobs beyond the timed claims
# vacuum_ops takes the ops of jobs that ended before now minus this: all that this run finished.
VACUUM_OLDER_THAN_S = 1e-3
QUERIES = ("job status", "job stats", "job leases", "job show", "get_job", "jobs_among",
           "count_unfinished")  # fmt: skip


@dataclass
class SizeFigures:
    size: int
    grow_s: float
    bytes_per_job: float
    claim_p50_s: float
    claim_p99_s: float
    finished: int
    queries: dict[str, float]
    ops_deleted: int
    bytes_before: int
    bytes_after: int


def _job_ids(start: int, count: int) -> list[str]:
    return [
        job_id_for(job_key(s.work_id, s.artifact_id, s.canonical_url))
        for s in specs(count, start=start)
    ]


# --- bytes on disk ----------------------------------------------------------------------------


def _conninfo(url: str) -> str:
    """A libpq conninfo for a ``postgresql+psycopg://user@host:port/db`` URL."""
    match = re.fullmatch(r"postgresql\+psycopg://(\w+)@([\w.]+):(\d+)/(\w+)", url)
    if match is None:
        raise SystemExit(f"--pg-url {url!r} is not postgresql+psycopg://user@host:port/db")
    user, host, port, database = match.groups()
    return f"user={user} host={host} port={port} dbname={database}"


def ledger_bytes(url: str) -> int:
    """SQLite: the file and its WAL after a checkpoint; PostgreSQL: the ledger tables' relations."""
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        wal = path.with_name(path.name + "-wal")
        return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    with psycopg.connect(_conninfo(url), autocommit=True) as connection:
        total = 0
        for table in LEDGER_TABLES:
            row = connection.execute(
                "SELECT coalesce(pg_total_relation_size(to_regclass(%s)), 0)", (table,)
            ).fetchone()
            total += int(row[0]) if row else 0
        return total


# --- one size ---------------------------------------------------------------------------------


def timed_claims(ledger: Ledger, count: int) -> list[float]:
    """Seconds each of ``count`` leases took, one worker; every job leased is finished."""
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        lease = lease_next_job(ledger, owner="bench:timed", ttl_s=LEASE_TTL_S)
        latencies.append(time.perf_counter() - started)
        if lease is None:
            raise SystemExit("no job left to lease: --claims exceeds the jobs of a size step")
        finish(ledger, lease)
    return latencies


def finish_jobs(ledger: Ledger, count: int) -> None:
    """Lease and finish ``count`` more jobs with a few threads (untimed)."""
    left = [count]
    lock = threading.Lock()

    def worker(n: int) -> None:
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            lease = lease_next_job(ledger, owner=f"bench:w{n}", ttl_s=LEASE_TTL_S)
            if lease is None:
                return
            finish(ledger, lease)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(FINISHERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def query_times(ledger: Ledger, size: int, repeats: int) -> dict[str, float]:
    """Median seconds of each operator report and runner read at this size."""
    sample = _job_ids(max(0, size - SAMPLE), min(SAMPLE, size))
    first = _job_ids(0, 1)[0]  # `job show` of a job that exists at every size
    calls: dict[str, Callable[[], object]] = {
        "job status": lambda: job_status(ledger),
        "job stats": lambda: job_stats(ledger),
        "job leases": lambda: job_leases(ledger),
        "job show": lambda: job_timeline(ledger, first),
        "get_job": lambda: get_job(ledger, sample[0]),
        "jobs_among": lambda: jobs_among(ledger, sample),
        "count_unfinished": lambda: count_unfinished(ledger, sample),
    }
    return {
        name: statistics.median(timed(call) for _ in range(repeats)) for name, call in calls.items()
    }


def grow(ledger: Ledger, url: str, start: int, size: int, args: argparse.Namespace) -> SizeFigures:
    """Grow the ledger from ``start`` to ``size`` jobs and measure it there."""
    grow_s = timed(lambda: plan_jobs(ledger, specs(size - start, start=start)))
    claims = min(args.claims, size - start)
    latencies = timed_claims(ledger, claims)
    extra = max(0, int((size - start) * args.finish_fraction) - claims)
    finish_jobs(ledger, extra)
    per_job = ledger_bytes(url) / size
    queries = query_times(ledger, size, args.repeats)
    vacuum = vacuum_ops(ledger, older_than_s=VACUUM_OLDER_THAN_S)
    return SizeFigures(
        size=size,
        grow_s=grow_s,
        bytes_per_job=per_job,
        claim_p50_s=quantile(latencies, 0.5),
        claim_p99_s=quantile(latencies, 0.99),
        finished=claims + extra,
        queries=queries,
        ops_deleted=vacuum.ops_deleted,
        bytes_before=vacuum.bytes_before,
        bytes_after=vacuum.bytes_after,
    )


# --- harness ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _database(backend: str, pg_url: str | None) -> Iterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="docstokg-bench-") as directory:
            yield f"sqlite:///{Path(directory) / 'ledger.sqlite3'}"
        return
    if backend != "postgresql":
        raise SystemExit(f"--backend {backend!r}: use sqlite or postgresql")
    if pg_url:
        yield pg_url
        return
    with ThrowawayPostgres() as server:
        yield server.create_database("bench_scale")


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f}"


def print_tables(backend: str, rows: list[SizeFigures]) -> None:
    print(f"\n{backend}: growth, bytes per job and claim latency (one worker)")
    print(f"{'jobs':>10} {'grow s':>8} {'bytes/job':>10} {'claim p50 ms':>13} {'p99 ms':>8}")
    for row in rows:
        print(
            f"{row.size:>10,} {row.grow_s:>8.2f} {row.bytes_per_job:>10,.0f} "
            f"{_ms(row.claim_p50_s):>13} {_ms(row.claim_p99_s):>8}"
        )
    print(f"\n{backend}: query times, ms (median)")
    print(f"{'jobs':>10} " + " ".join(f"{name:>16}" for name in QUERIES))
    for row in rows:
        print(f"{row.size:>10,} " + " ".join(f"{_ms(row.queries[n]):>16}" for n in QUERIES))
    print(f"\n{backend}: job vacuum after finishing part of each step's new jobs")
    print(
        f"{'jobs':>10} {'finished':>9} {'ops deleted':>12} {'bytes before':>14} "
        f"{'bytes after':>14} {'reclaimed':>12}"
    )
    for row in rows:
        print(
            f"{row.size:>10,} {row.finished:>9,} {row.ops_deleted:>12,} {row.bytes_before:>14,} "
            f"{row.bytes_after:>14,} {max(0, row.bytes_before - row.bytes_after):>12,}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000,1000000",
                        help="ledger sizes in jobs, growing")  # fmt: skip
    parser.add_argument("--backend", default="sqlite", help="sqlite or postgresql")
    parser.add_argument("--pg-url", help="fill this PostgreSQL database, not a throwaway one")
    parser.add_argument("--claims", type=int, default=200, help="leases timed at each size")
    parser.add_argument("--finish-fraction", type=float, default=0.01,
                        help="share of each step's new jobs finished, then vacuumed")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="runs of each query (median)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    if sizes != sorted(set(sizes)) or sizes[0] <= 0:
        raise SystemExit(f"--sizes {args.sizes!r}: give growing positive sizes, e.g. 1000,10000")
    if not 0 <= args.finish_fraction <= 1:
        raise SystemExit(f"--finish-fraction {args.finish_fraction}: give a share from 0 to 1")

    rows: list[SizeFigures] = []
    started = time.perf_counter()
    with (
        _database(args.backend, args.pg_url) as url,
        Ledger.connect(url, pool_size=FINISHERS + 2) as ledger,
    ):
        ledger.upgrade()
        start = 0
        for size in sizes:
            rows.append(grow(ledger, url, start, size, args))
            print(f"{size:,} jobs measured ({time.perf_counter() - started:.0f} s)", flush=True)
            start = size
    print_tables(args.backend, rows)


if __name__ == "__main__":
    main()
