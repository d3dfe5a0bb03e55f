"""Runner overhead: the same downloads with the ledger on and off, in one run.

A loopback server (``python -m docstokg.testing.server``, its own process so it
does not share the runner's interpreter lock) serves N generated artifacts;
``DownloadRun`` fetches all of them into a fresh output folder with W
workers, once with the ledger off and once on (a fresh SQLite ledger, or a
throwaway PostgreSQL with ``--backends postgresql``).  Rounds alternate
off/on so that machine noise falls on both; the script prints each wall
time, the medians and the ratio on / off, and this process's CPU time in each mode.
On PostgreSQL it also prints the transactions each ledger-on run committed
(``pg_stat_database.xact_commit`` of its database, read after the run's
connections closed), per artifact: start-up (migrations, planning) included.

    .venv/bin/python bench/bench_runner.py [--artifacts 2000] [--size 65536]
                                           [--workers 8] [--rounds 5]
                                           [--backends sqlite]

Goals: ledger on costs at most 1.3x ledger off on SQLite, 1.5x on PostgreSQL, with at
most 3 commits per artifact there (2,000 x 64 KiB, 8 workers).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg
from tests.pgcluster import ThrowawayPostgres

from docstokg.config import IdempotencyConfig
from docstokg.manifest import read_manifest
from docstokg.run.bootstrap import build_run
from docstokg.run.runner import RunSettings


@contextlib.contextmanager
def artifact_server(count: int, size: int) -> Iterator[str]:
    """The demo server in a child process; yields its base URL."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "docstokg.testing.server",
            "--count",
            str(count),
            "--size",
            str(size),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        if not base_url.startswith("http://"):
            raise RuntimeError(f"the artifact server did not start (printed {base_url!r})")
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)


def write_manifest(path: Path, base_url: str, count: int) -> Path:
    rows = (
        json.dumps({"work_id": f"W{i}", "artifact_id": "bin", "url": f"{base_url}/a/{i}"})
        for i in range(count)
    )
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


# The most the ledger may cost, as wall time on / off, per backend.
GOALS = {"sqlite": 1.30, "postgresql": 1.50}


@dataclass(frozen=True)
class Timing:
    """One run: its wall time, and the CPU time (user + system, all threads) of this process.

    The CPU time tells a run that waits from one that works: the runner
    shares one interpreter lock, so its CPU time is most of what bounds it.
    """

    wall_s: float
    cpu_s: float


def timed_run(manifest: Path, out_dir: Path, workers: int, db_url: str | None) -> Timing:
    config = IdempotencyConfig(enabled=db_url is not None)
    settings = RunSettings(out_dir=out_dir, config=config, workers=workers, db_url=db_url)
    parsed = read_manifest(manifest)
    started, cpu_started = time.perf_counter(), time.process_time()
    summary = build_run(parsed, settings).run()
    timing = Timing(time.perf_counter() - started, time.process_time() - cpu_started)
    stored = summary.counts["stored"] + summary.counts["duplicates"]
    if stored != len(parsed.rows):
        raise RuntimeError(f"only {stored} of {len(parsed.rows)} artifacts were stored")
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--artifacts", type=int, default=2_000)
    parser.add_argument("--size", type=int, default=64 * 1024)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backends", default="sqlite")
    args = parser.parse_args()

    with (
        artifact_server(args.artifacts, args.size) as base_url,
        tempfile.TemporaryDirectory(prefix="docstokg-bench-runner-") as scratch,
    ):
        root = Path(scratch)
        manifest = write_manifest(root / "manifest.jsonl", base_url, args.artifacts)
        # One warm-up pass so that neither mode pays for cold caches alone.
        timed_run(manifest, root / "warmup", args.workers, None)
        print(
            f"{args.artifacts:,} artifacts x {args.size:,} bytes, {args.workers} workers, "
            f"{args.rounds} rounds (off and on alternate)"
        )
        for backend in [name.strip() for name in args.backends.split(",") if name.strip()]:
            with _databases(backend, root) as new_url:
                off: list[Timing] = []
                on: list[Timing] = []
                for round_number in range(args.rounds):
                    off.append(timed_run(manifest, root / f"off{round_number}", args.workers, None))
                    url = new_url(round_number)
                    on.append(timed_run(manifest, root / f"on{round_number}", args.workers, url))
                    committed = _commits_per_artifact(url, args.artifacts)
                    print(
                        f"  {backend} round {round_number + 1}: off {off[-1].wall_s:.2f} s "
                        f"(cpu {off[-1].cpu_s:.2f} s), on {on[-1].wall_s:.2f} s "
                        f"(cpu {on[-1].cpu_s:.2f} s), ratio {on[-1].wall_s / off[-1].wall_s:.2f}"
                        + committed
                    )
                median_off = statistics.median(t.wall_s for t in off)
                median_on = statistics.median(t.wall_s for t in on)
                cpu_off = statistics.median(t.cpu_s for t in off)
                cpu_on = statistics.median(t.cpu_s for t in on)
                # Each round's own ratio, off and on run back to back: its spread is
                # the machine's noise, and a change smaller than it is not measured.
                paired = sorted(b.wall_s / a.wall_s for a, b in zip(off, on, strict=True))
                print(
                    f"{backend}: median off {median_off:.2f} s "
                    f"({args.artifacts / median_off:,.0f} artifacts/s), median on "
                    f"{median_on:.2f} s ({args.artifacts / median_on:,.0f} artifacts/s), "
                    f"ratio on/off {median_on / median_off:.2f} "
                    f"(goal <= {GOALS[backend]:.2f}; rounds' own ratios "
                    f"{paired[0]:.2f}-{paired[-1]:.2f}, median "
                    f"{statistics.median(paired):.2f}); runner CPU "
                    f"median off {cpu_off:.2f} s, on {cpu_on:.2f} s: the ledger costs "
                    f"{(cpu_on - cpu_off) / args.artifacts * 1000:.2f} ms of CPU per artifact"
                )


def _commits_per_artifact(url: str, artifacts: int) -> str:
    """``, N commits per artifact`` for a PostgreSQL ledger (empty for SQLite).

    The run's engine is closed when it returns; its backends flush their
    statistics as they exit, a moment later, so the counter is read until it
    stops moving.  The reading connection's own transactions are autocommit
    reads of a snapshot-free view, each counted once: they are subtracted.
    """
    if not url.startswith("postgresql"):
        return ""
    dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
    readings: list[int] = []
    with psycopg.connect(dsn, autocommit=True) as connection:
        while len(readings) < 3 or readings[-1] - readings[-2] > 1:
            row = connection.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
            assert row is not None
            readings.append(int(row[0]))
            time.sleep(0.5)  # a bench, not a test: the backends' exit is not observable
    ours = len(readings) - 1  # every reading before the last one committed a transaction
    return f", {(readings[-1] - ours) / artifacts:.2f} commits per artifact"


@contextlib.contextmanager
def _databases(backend: str, root: Path) -> Iterator[Callable[[int], str]]:
    """A function giving a fresh ledger URL per round on ``backend``."""
    if backend == "sqlite":
        yield lambda number: f"sqlite:///{root / f'on{number}' / 'manifest.sqlite3'}"
        return
    if backend != "postgresql":
        raise SystemExit(f"unknown backend {backend!r}: use sqlite or postgresql")
    with ThrowawayPostgres() as server:
        yield lambda number: server.create_database(f"bench_runner_{number}")


if __name__ == "__main__":
    main()
