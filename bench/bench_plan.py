"""Bulk planning throughput: 100,000 jobs into an empty ledger, then the same again.

Prints jobs/s for the first planning (every row new) and the second (every row
a repeat, which must add 0 rows), on a SQLite file and on a throwaway
PostgreSQL 15 cluster this script starts itself (or the one at --pg-url).

    .venv/bin/python bench/bench_plan.py [--jobs 100000] [--backends sqlite,postgresql]

Goal (issue 2): at least 50,000 jobs/s into an empty SQLite file on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.pgcluster import ThrowawayPostgres

from docstokg import JobSpec, Ledger

SQLITE_GOAL_JOBS_PER_S = 50_000


def _specs(count: int) -> list[JobSpec]:
    return [
        JobSpec(f"W{n // 4:07d}", f"A{n % 4}", f"https://example.org/works/{n // 4}/{n % 4}.pdf")
        for n in range(count)
    ]


def _plan(ledger: Ledger, specs: list[JobSpec]) -> tuple[int, float]:
    started = time.perf_counter()
    with ledger.unit_of_work() as uow:
        created = uow.jobs.plan_many(specs, now=uow.now())
        uow.commit()
    return created, time.perf_counter() - started


@contextlib.contextmanager
def _database(backend: str, pg_url: str | None, run: int) -> Iterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="docstokg-bench-") as directory:
            yield f"sqlite:///{Path(directory) / 'ledger.sqlite3'}"
        return
    if pg_url:
        yield pg_url
        return
    with ThrowawayPostgres() as server:
        yield server.create_database(f"bench_{run}")


def measure(backend: str, count: int, repeats: int, pg_url: str | None) -> dict[str, float]:
    specs = _specs(count)
    fresh_rates, repeat_rates = [], []
    for run in range(repeats):
        with _database(backend, pg_url, run) as url, Ledger.connect(url) as ledger:
            ledger.upgrade()
            created, elapsed = _plan(ledger, specs)
            if created != count:
                raise SystemExit(f"{backend}: first planning created {created}, not {count}")
            fresh_rates.append(count / elapsed)
            created_again, elapsed_again = _plan(ledger, specs)
            if created_again != 0:
                raise SystemExit(f"{backend}: re-planning created {created_again} rows, not 0")
            repeat_rates.append(count / elapsed_again)
            with ledger.unit_of_work(read_only=True) as uow:
                rows = sum(uow.jobs.count_by_state().values())
            if rows != count:
                raise SystemExit(f"{backend}: {rows} rows in the ledger, not {count}")
    return {
        "fresh_median": statistics.median(fresh_rates),
        "fresh_min": min(fresh_rates),
        "repeat_median": statistics.median(repeat_rates),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3, help="fresh databases per backend")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pg-url", help="use this PostgreSQL database instead of a throwaway one")
    args = parser.parse_args()

    print(f"bulk planning of {args.jobs:,} jobs, {args.repeats} fresh databases per backend")
    print(f"{'backend':<11} {'new rows/s (median)':>20} {'(worst)':>10} {'repeats/s':>11}  added")
    failed = False
    for backend in args.backends.split(","):
        figures = measure(backend, args.jobs, args.repeats, args.pg_url)
        print(
            f"{backend:<11} {figures['fresh_median']:>20,.0f} {figures['fresh_min']:>10,.0f} "
            f"{figures['repeat_median']:>11,.0f}  0 on re-plan"
        )
        if backend == "sqlite" and figures["fresh_median"] < SQLITE_GOAL_JOBS_PER_S:
            failed = True
    goal = f"goal: >= {SQLITE_GOAL_JOBS_PER_S:,} new jobs/s on SQLite"
    print(f"{goal}: {'NOT MET' if failed else 'met'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
