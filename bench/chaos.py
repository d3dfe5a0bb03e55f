"""Chaos, the long run: competing ``docstokg run``s under hundreds of faults, invariants checked.

Per backend, rounds of ``tests/chaos/harness.py`` (each a fresh manifest,
``--out`` and ledger; 3 runs sharing them) are played until ``--kills``
SIGKILLs have been applied: a round ends when its work is done, and the next
one takes the kills still owed.  Each round also applies what is still owed of
``--stops`` (SIGSTOP past the lease), ``--restarts`` (``pg_ctl restart -m
fast``, PostgreSQL only) and ``--held-writers`` (another process holding
SQLite's write lock, SQLite only).  After each round a recovery run (if
faults left work) and a final clean run; then every invariant is checked (see
``check_invariants``).  Printed per backend: faults applied, invariant
violations (must be 0), bytes re-sent (sent / needed - 1), wall time.

    .venv/bin/python bench/chaos.py --kills 200 --backends sqlite,postgresql [--urls 150]

Exit code 1 if any invariant was violated.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.chaos.harness import (
    ChaosPlan,
    ChaosResult,
    ChaosRound,
    Database,
    KiB,
    postgres_restarter,
)
from tests.pgcluster import ThrowawayPostgres

from docstokg.testing.server import ArtifactServer

MAX_ROUNDS = 50
"""A round that applies no fault at all would loop forever; this bounds it."""


def main() -> None:
    args = _arguments()
    failed = False
    for backend in [name.strip() for name in args.backends.split(",") if name.strip()]:
        plan = ChaosPlan(
            backend,
            urls=args.urls,
            min_bytes=args.min_kib * KiB,
            max_bytes=args.max_kib * KiB,
            bytes_per_s=args.kib_per_s * KiB,
            runs=args.runs,
            workers=args.workers,
            kills=args.kills,
            stops=args.stops,
            pg_restarts=args.restarts if backend == "postgresql" else 0,
            held_writers=args.held_writers if backend == "sqlite" else 0,
            seed=args.seed,
        )
        results = play(plan)
        print(totals(backend, results), flush=True)
        failed = failed or any(result.violations for result in results)
    sys.exit(1 if failed else 0)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kills", type=int, default=200, help="SIGKILLs per backend")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--urls", type=int, default=150, help="artifacts per round")
    parser.add_argument("--stops", type=int, default=4, help="SIGSTOPs past the lease")
    parser.add_argument("--restarts", type=int, default=4, help="PostgreSQL restarts")
    parser.add_argument("--held-writers", type=int, default=4, help="SQLite writers held")
    parser.add_argument("--runs", type=int, default=3, help="concurrent docstokg runs")
    parser.add_argument("--workers", type=int, default=2, help="workers per run")
    parser.add_argument("--min-kib", type=int, default=64)
    parser.add_argument("--max-kib", type=int, default=2048, help="> 1024: resumes happen")
    parser.add_argument("--kib-per-s", type=int, default=256, help="server rate per download")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def play(plan: ChaosPlan) -> list[ChaosResult]:
    """Rounds until every planned fault was applied; each round's report is printed."""
    owed = {"kill": plan.kills, "stop": plan.stops}
    owed |= {"pg_restart": plan.pg_restarts, "held_writer": plan.held_writers}
    results: list[ChaosResult] = []
    with _databases(plan.backend) as databases, tempfile.TemporaryDirectory() as scratch:
        for number in range(MAX_ROUNDS):
            if not any(owed.values()):
                break
            round_plan = replace(
                plan,
                kills=owed["kill"],
                stops=owed["stop"],
                pg_restarts=owed["pg_restart"],
                held_writers=owed["held_writer"],
                seed=plan.seed + number,
            )
            work_dir = Path(scratch) / f"round{number}"
            work_dir.mkdir()
            with ArtifactServer() as server:
                result = ChaosRound(
                    round_plan, work_dir=work_dir, server=server, database=databases(number)
                ).run()
            print(f"round {number + 1}: {result.report()}", flush=True)
            results.append(result)
            applied = {kind: result.count(kind) for kind in owed}
            if not any(applied.values()):
                raise SystemExit(f"round {number + 1} applied no fault; stopping")
            owed = {kind: max(0, owed[kind] - applied[kind]) for kind in owed}
    return results


class _Databases:
    """A fresh ledger per round: SQLite in the round's ``--out``, or a new PostgreSQL database."""

    def __init__(self, backend: str, cluster: ThrowawayPostgres | None) -> None:
        self.backend = backend
        self.cluster = cluster

    def __call__(self, number: int) -> Database:
        if self.cluster is None:
            return Database(self.backend)
        url = self.cluster.create_database(f"chaos_{number}")
        return Database(self.backend, url, restart=postgres_restarter(self.cluster))


@contextlib.contextmanager
def _databases(backend: str) -> Iterator[_Databases]:
    if backend == "sqlite":
        yield _Databases(backend, None)
        return
    if backend != "postgresql":
        raise SystemExit(f"unknown backend {backend!r}: use sqlite or postgresql")
    with ThrowawayPostgres() as cluster:
        yield _Databases(backend, cluster)


def totals(backend: str, results: list[ChaosResult]) -> str:
    sent = sum(result.bytes_sent for result in results)
    needed = sum(result.bytes_needed for result in results)
    violations = sum(len(result.violations) for result in results)
    wall = sum(result.wall_s for result in results)
    counts = {kind: sum(r.count(kind) for r in results) for kind in ("kill", "stop")}
    counts |= {kind: sum(r.count(kind) for r in results) for kind in ("pg_restart", "held_writer")}
    resent = 100.0 * (sent - needed) / needed if needed else 0.0
    return (
        f"== {backend}: {len(results)} rounds, kill points applied {counts['kill']}, "
        f"stops past the lease {counts['stop']}, PostgreSQL restarts {counts['pg_restart']}, "
        f"held SQLite writers {counts['held_writer']}; invariant violations {violations}; "
        f"bytes re-sent {resent:+.1f} % ({sent:,} sent for {needed:,} needed); "
        f"wall time {wall:.1f} s (at {time.strftime('%H:%M:%S')})"
    )


if __name__ == "__main__":
    main()
