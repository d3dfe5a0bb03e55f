"""Commit means committed: SIGKILL a writing process at random moments, count what it lost.

A child process (tests/durability_child.py) runs THREADS threads of small
units of work (plan one job, plan several in one unit of work, lease a job and
advance it) and reports each write right after its ``commit()`` returns.  It
is SIGKILLed at a random moment (uniform in --min-ms..--max-ms of work); the
database is then read with a connection of its own: every reported write
must be there.  One database per backend, --kills kill points in a row.

    .venv/bin/python bench/bench_commit_durability.py [--kills 200] [--threads 8]
        [--backends sqlite,postgresql] [--seed N] [--pg-url URL]

Goal (issue 14, line 1): 0 writes missing, on both backends.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.durability_child import KillPoints, missing_commits
from tests.pgcluster import ThrowawayPostgres

from docstokg import Ledger


@dataclass
class Figures:
    kills: int = 0
    reported: int = 0
    missing: int = 0
    rounds_losing: int = 0
    wall_s: float = 0.0


@contextlib.contextmanager
def _database(backend: str, pg_url: str | None) -> Iterator[str]:
    """A fresh, upgraded ledger database on ``backend``."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="docstokg-bench-") as directory:
            url = f"sqlite:///{Path(directory) / 'ledger.sqlite3'}"
            _upgrade(url)
            yield url
        return
    if pg_url:
        _upgrade(pg_url)
        yield pg_url
        return
    with ThrowawayPostgres() as server:
        url = server.create_database("bench_durability")
        _upgrade(url)
        yield url


def _upgrade(url: str) -> None:
    with Ledger.connect(url) as ledger:
        ledger.upgrade()


def measure(
    backend: str, args: argparse.Namespace, rng: random.Random, child: KillPoints
) -> Figures:
    figures = Figures()
    with _database(backend, args.pg_url) as url:
        started = time.perf_counter()
        for round_number in range(args.kills):
            delay_s = rng.uniform(args.min_ms, args.max_ms) / 1000
            reports = child.kill_round(
                url, round_number, seed=args.seed, threads=args.threads, delay_s=delay_s
            )
            lost = missing_commits(url, reports)
            figures.kills += 1
            figures.reported += reports.writes
            figures.missing += len(lost)
            figures.rounds_losing += bool(lost)
            if lost and args.verbose:
                print(f"  {backend} kill {round_number}: {len(lost)} lost, e.g. {lost[0]}")
        figures.wall_s = time.perf_counter() - started
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200, help="kill points per backend")
    parser.add_argument("--threads", type=int, default=8, help="writing threads in the child")
    parser.add_argument("--min-ms", type=float, default=50.0, help="least work before a kill")
    parser.add_argument("--max-ms", type=float, default=300.0, help="most work before a kill")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--seed", type=int, default=None, help="of the kill moments and workload")
    parser.add_argument("--pg-url", help="use this PostgreSQL database instead of a throwaway one")
    parser.add_argument("--verbose", action="store_true", help="print each kill point that lost")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(2**32)
    rng = random.Random(args.seed)

    print(
        f"commit durability: {args.kills} SIGKILLs per backend, {args.threads} threads, "
        f"{args.min_ms:.0f}-{args.max_ms:.0f} ms of work each, seed {args.seed}"
    )
    print(f"{'backend':<11} {'kill points':>11} {'reported':>10} {'missing':>8} "
          f"{'kills losing':>13} {'wall s':>8}")  # fmt: skip
    failed = False
    with (
        tempfile.TemporaryDirectory(prefix="docstokg-bench-") as logs,
        KillPoints(Path(logs) / "child.err") as child,
    ):
        for backend in args.backends.split(","):
            figures = measure(backend, args, rng, child)
            print(
                f"{backend:<11} {figures.kills:>11} {figures.reported:>10,} "
                f"{figures.missing:>8} {figures.rounds_losing:>13} {figures.wall_s:>8.1f}"
            )
            failed |= figures.missing > 0
    print(f"goal: 0 reported writes missing: {'NOT MET' if failed else 'met'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
