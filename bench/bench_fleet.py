"""A fleet on one PostgreSQL: 1,000 workers across processes, and 1,000+ downloads in flight.

Starts its own PostgreSQL with ``max_connections = 40`` (``--max-connections``)
and measures two things (issue 16, lines 2 and 3):

**claims** (``--parts claims``): ``--processes`` child processes of this
script, ``--workers`` threads each (1,000 in all by default), share one
ledger.  Each worker claims a job (``lease_next_job``, timed: the claim
latency includes any wait for a pooled connection), then "downloads" for
``--hold`` seconds holding no connection, then records the job's five steps
as the runner does.  Run twice: with the bound (``pool_size`` 8 per process,
the default), and without it (a connection per worker, as the old per-thread
connections had): the second meets "too many clients", printed.

**downloads** (``--parts downloads``): ``--processes`` ``docstokg run``
processes of ``--workers`` workers each, on one manifest, one ``--out`` and
one ledger, fetch ``--artifacts`` artifacts from a loopback server that holds
each GET ``--hold`` seconds (``python -m docstokg.testing.slow_server``, its
own process).  It prints the server's counts (each artifact fetched once?),
the most downloads in flight, errors, and the throughput against its ideal
(concurrency / hold).

    .venv/bin/python bench/bench_fleet.py [--processes 4] [--workers 250]
        [--artifacts 3000] [--hold 2] [--max-connections 40] [--parts claims,downloads]

Threads or processes, measured (1,000 workers, 2 shared cores, 3,000 or 1,000
artifacts held 2 s): 1 process x 1,000 workers 15 artifacts/s, 4 x 250 34/s,
8 x 125 54/s, all with zero errors and each artifact fetched once.  The
runner is CPU-bound (one interpreter lock per process), so a host runs
several processes of ~100 workers rather than one of 1,000; the pool sizes
fit them under max_connections (see ``download_pool_size``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.cli_kit import cli_env
from tests.pgcluster import ThrowawayPostgres

from docstokg import JobSpec, JobState, Ledger, lease_next_job, op_key, plan_jobs, run_effect
from docstokg.errors import DocstokgError
from docstokg.testing.slow_server import STATS_PATH, SlowStats

STEPS = (
    ("HEAD", JobState.LEASED, JobState.HEAD_DONE),
    ("STREAM", JobState.HEAD_DONE, JobState.STREAMING),
    ("FINALIZE", JobState.STREAMING, JobState.FINALIZED),
    ("INDEX", JobState.FINALIZED, JobState.INDEXED),
    ("DEDUPE", JobState.INDEXED, JobState.DEDUPED),
)
TTL_S = 300.0
OUTAGE_S = 20.0  # the unbounded run would otherwise wait two minutes per refused connection
JOBS_PER_WORKER = 2


# --- claims: one child process -------------------------------------------------------------


class _Errors(logging.Handler):
    """Collects the ledger's warnings: a refused connection is waited out, and said so there."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _claim_worker(
    ledger: Ledger, owner: str, hold_s: float, latencies: list[float], errors: list[str]
) -> None:
    while True:
        asked = time.perf_counter()
        try:
            lease = lease_next_job(ledger, owner=owner, ttl_s=TTL_S)
        except DocstokgError as exc:
            errors.append(f"claim: {exc}")
            return
        latencies.append(time.perf_counter() - asked)
        if lease is None:
            return
        time.sleep(hold_s)  # the download: no connection held
        try:
            for kind, before, after in STEPS:
                run_effect(
                    ledger,
                    lease,
                    kind=kind,
                    opkey=op_key(kind, lease.job_id),
                    effect_fn=functools.partial(dict, kind=kind),
                    advance_to=after,
                    allowed_from=(before,),
                )
        except DocstokgError as exc:
            errors.append(f"steps: {exc}")
            return


def claims_child(url: str, workers: int, pool_size: int, hold_s: float) -> None:
    """One process of the claims part; prints its latencies and errors as one JSON line."""
    collected = _Errors()
    logging.getLogger("docstokg").addHandler(collected)
    latencies: list[float] = []
    errors: list[str] = []
    with Ledger.connect(url, pool_size=pool_size, outage_s=OUTAGE_S) as ledger:
        threads = [
            threading.Thread(
                target=_claim_worker,
                args=(ledger, f"p{id(ledger)}:w{n}", hold_s, latencies, errors),
            )
            for n in range(workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    print(json.dumps({"latencies": latencies, "errors": errors, "warnings": collected.messages}))


@dataclass(frozen=True)
class ClaimResult:
    wall_s: float
    latencies: list[float]
    errors: list[str]
    warnings: list[str]
    jobs_done: int


def run_claims(
    server: ThrowawayPostgres, label: str, args: argparse.Namespace, pool_size: int
) -> ClaimResult:
    url = server.create_database(f"fleet_claims_{label}")
    jobs = args.processes * args.workers * JOBS_PER_WORKER
    with Ledger.connect(url) as ledger:
        ledger.upgrade()
        plan_jobs(ledger, [JobSpec(f"W{n}", "pdf", f"https://e.org/{n}") for n in range(jobs)])
    command = [sys.executable, __file__, "--child-claims", url, "--workers", str(args.workers),
               "--pool-size", str(pool_size), "--hold", str(args.hold)]  # fmt: skip
    started = time.perf_counter()
    children = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(args.processes)
    ]
    outputs = [child.communicate()[0] for child in children]
    wall = time.perf_counter() - started
    latencies: list[float] = []
    errors: list[str] = []
    warnings: list[str] = []
    for output in outputs:
        found = json.loads(output.strip().splitlines()[-1])
        latencies += found["latencies"]
        errors += found["errors"]
        warnings += found["warnings"]
    with Ledger.connect(url) as ledger, ledger.unit_of_work(read_only=True) as uow:
        done = uow.jobs.count_by_state().get(JobState.DEDUPED, 0)
    return ClaimResult(wall, latencies, errors, warnings, done)


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def print_claims(label: str, pool_size: int, args: argparse.Namespace, r: ClaimResult) -> None:
    jobs = args.processes * args.workers * JOBS_PER_WORKER
    refused = [w for w in r.warnings + r.errors if "too many" in w]
    print(
        f"claims {label}: {args.processes} processes x {args.workers} workers, pool_size "
        f"{pool_size} per process: {r.jobs_done:,}/{jobs:,} jobs done in {r.wall_s:.1f} s; "
        f"claim latency p50 {_percentile(r.latencies, 0.5) * 1000:.1f} ms, p99 "
        f"{_percentile(r.latencies, 0.99) * 1000:.1f} ms, max {max(r.latencies) * 1000:.0f} ms "
        f"({len(r.latencies):,} claims); errors {len(r.errors)}, ledger warnings "
        f"{len(r.warnings)}, 'too many clients' seen {len(refused)} times"
    )
    for message in (refused or r.errors or r.warnings)[:1]:
        print(f"  e.g.: ...{message[message.find('FATAL') :][:200]}")


# --- downloads: docstokg run processes against the slow server -----------------------------


@contextlib.contextmanager
def slow_server(count: int, size: int, hold_s: float) -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "docstokg.testing.slow_server", "--count", str(count),
         "--size", str(size), "--hold", str(hold_s)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        if not base_url.startswith("http://"):
            raise RuntimeError(f"the slow server did not start (printed {base_url!r})")
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)


def download_pool_size(args: argparse.Namespace) -> int:
    """min(workers, 8), or less if the processes' pools would not fit under max_connections.

    Four connections stay free: each process opens one more for a moment at
    start (the schema check), and the bench itself reads the ledger.
    """
    fits: int = (args.max_connections - 4) // args.processes
    workers: int = args.workers
    return max(1, min(workers, 8, fits))


def server_stats(base_url: str) -> SlowStats:
    with urllib.request.urlopen(base_url + STATS_PATH, timeout=30) as answer:
        data: dict[str, object] = json.loads(answer.read())
    return SlowStats.from_json(data)


def run_downloads(server: ThrowawayPostgres, args: argparse.Namespace, root: Path) -> None:
    url = server.create_database("fleet_downloads")
    with slow_server(args.artifacts, args.size, args.hold) as base_url:
        manifest = root / "fleet.jsonl"
        manifest.write_text(
            "".join(
                json.dumps({"work_id": f"W{n}", "artifact_id": "bin", "url": f"{base_url}/a/{n}"})
                + "\n"
                for n in range(args.artifacts)
            ),
            encoding="utf-8",
        )
        env = cli_env(
            DOCSTOKG_IDEMPOTENCY_ENABLED="true",
            DOCSTOKG_IDEMPOTENCY_POOL_SIZE=str(download_pool_size(args)),
        )
        out = str(root / "out")
        command = [sys.executable, "-m", "docstokg", "run", str(manifest), "--json",
                   "--out", out, "--db", url, "--workers", str(args.workers)]  # fmt: skip
        started = time.perf_counter()
        runs = []
        for n in range(args.processes):
            with (root / f"run{n}.out").open("wb") as log, (root / f"run{n}.err").open("wb") as err:
                runs.append(subprocess.Popen(command, env=env, stdout=log, stderr=err))
        codes = [run.wait() for run in runs]
        wall = time.perf_counter() - started
        stats = server_stats(base_url)
    problems = [
        line
        for n in range(args.processes)
        for line in (root / f"run{n}.err").read_text(encoding="utf-8").splitlines()
        if " WARNING " in line or " ERROR " in line or "error" in line.lower()
    ]
    counts = [
        json.loads((root / f"run{n}.out").read_text(encoding="utf-8") or "{}").get("counts")
        for n in range(args.processes)
    ]
    print_downloads(args, wall, stats=stats, codes=codes, counts=counts, problems=problems)


def print_downloads(
    args: argparse.Namespace,
    wall: float,
    *,
    stats: SlowStats,
    codes: list[int],
    counts: list[object],
    problems: list[str],
) -> None:
    concurrency = args.processes * args.workers
    fetched = sum(stats.gets.values())
    twice = sum(1 for count in stats.gets.values() if count > 1)
    span = (stats.last_sent_at or 0.0) - (stats.first_get_at or 0.0)
    ideal = concurrency / args.hold
    rate = args.artifacts / span if span > 0 else 0.0
    print(
        f"downloads: {args.processes} x `docstokg run --workers {args.workers}` "
        f"({concurrency:,} workers, pool_size {download_pool_size(args)} each), {args.artifacts:,} "
        f"artifacts held {args.hold:g} s each: exit codes {codes}; server: {fetched:,} GETs for "
        f"{len(stats.gets):,} artifacts ({twice} fetched more than once), at most "
        f"{stats.max_in_flight:,} in flight, {stats.connections:,} connections; errors/warnings "
        f"logged {len(problems)}"
    )
    print(
        f"  throughput {rate:,.0f} artifacts/s from first GET to last response ({span:.1f} s; "
        f"ideal concurrency/hold = {ideal:,.0f}/s: {rate / ideal:.0%}, goal >= 90%); whole "
        f"runs {wall:.1f} s wall (start-up, planning and the ends included)"
    )
    print(f"  counts per process: {counts}")
    for line in problems[:3]:
        print(f"  e.g.: {line[:300]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--workers", type=int, default=250)
    parser.add_argument("--artifacts", type=int, default=3000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--hold", type=float, default=2.0)
    parser.add_argument("--max-connections", type=int, default=40)
    parser.add_argument("--parts", default="claims,downloads")
    parser.add_argument("--child-claims", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--pool-size", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_claims:
        claims_child(args.child_claims, args.workers, args.pool_size, args.hold)
        return
    parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    with (
        ThrowawayPostgres(max_connections=args.max_connections) as server,
        tempfile.TemporaryDirectory(prefix="docstokg-bench-fleet-") as scratch,
    ):
        print(f"PostgreSQL with max_connections = {args.max_connections}")
        if "claims" in parts:
            for label, pool_size in (
                ("bounded", min(args.workers, 8)),
                ("unbounded", args.workers),
            ):
                result = run_claims(server, label, args, pool_size)
                print_claims(label, pool_size, args, result)
        if "downloads" in parts:
            run_downloads(server, args, Path(scratch))


if __name__ == "__main__":
    main()
