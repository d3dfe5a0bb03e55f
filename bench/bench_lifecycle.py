"""Lifecycle throughput: plan, lease, five effects with their transitions, finish.

For each backend and worker count, 5,000 jobs go through the whole
lifecycle through the public services: lease_next_job, then five run_effect
calls, each recording its result and its state transition in one commit
(``advance_to``); the last move (to DEDUPED) finishes the job and ends the
lease.  Beside it, in the same run, a plain
``sqlite3`` implementation of the same steps (same SQL conditions, WAL,
synchronous=NORMAL, one commit per statement, no SQLAlchemy) gives the floor,
and the script prints the ledger's time per job over the floor's.

``--executors driver,core`` runs the ledger twice per row: with its own
executor (statements compiled once, run on the driver's cursor), then with
every named statement sent through ``Connection.execute`` instead (the
executor's two entry points swapped for this run only): what the driver-level
executor buys, measured on the same statements.  With more than one executor
the script first prints each one's cost per statement: CPU microseconds of
the calling thread for three hot repository calls (get a job, check a lease,
renew it), best of 5 rounds of 3,000, the executors taking turns.  CPU time,
unlike throughput, barely moves when other processes share the machine.

    .venv/bin/python bench/bench_lifecycle.py [--jobs 5000] [--workers 1,4,16]
                                              [--backends sqlite,postgresql]
                                              [--executors driver,core]

Goal (issue 3): ledger / floor <= 1.5 at one worker on SQLite.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.pgcluster import ThrowawayPostgres

from docstokg import (
    JobSpec,
    JobState,
    Ledger,
    lease_next_job,
    op_key,
    plan_jobs,
    run_effect,
)
from docstokg.ledger.models import NOT_FINISHED_JOBS
from docstokg.ledger.prepared import Prepared

GOAL_RATIO = 1.5
STEPS = (
    ("HEAD", JobState.LEASED, JobState.HEAD_DONE),
    ("STREAM", JobState.HEAD_DONE, JobState.STREAMING),
    ("FINALIZE", JobState.STREAMING, JobState.FINALIZED),
    ("INDEX", JobState.FINALIZED, JobState.INDEXED),
    ("DEDUPE", JobState.INDEXED, JobState.DEDUPED),
)
TTL_S = 300.0


def _specs(count: int) -> list[JobSpec]:
    return [JobSpec(f"W{n:07d}", "pdf", f"https://example.org/{n}.pdf") for n in range(count)]


# --- the ledger ---------------------------------------------------------------------------


def _ledger_worker(ledger: Ledger, owner: str) -> int:
    done = 0
    while (lease := lease_next_job(ledger, owner=owner, ttl_s=TTL_S)) is not None:
        for kind, before, after in STEPS:
            run_effect(
                ledger,
                lease,
                kind=kind,
                opkey=op_key(kind, lease.job_id),
                effect_fn=functools.partial(dict, kind=kind, ok=True),
                advance_to=after,  # the step's result and its transition in one commit
                allowed_from=(before,),
            )
        # Finishing (the move to DEDUPED) ended the lease: nothing to release.
        done += 1
    return done


def run_ledger(url: str, jobs: int, workers: int) -> float:
    """Seconds for ``jobs`` jobs through the lifecycle with ``workers`` threads."""
    with Ledger.connect(url, pool_size=workers + 2) as ledger:
        ledger.upgrade()
        started = time.perf_counter()
        plan_jobs(ledger, _specs(jobs))
        _run_threads(lambda n: _ledger_worker(ledger, f"bench-{n}"), workers, jobs)
        return time.perf_counter() - started


# --- the floor: plain sqlite3, same steps, one commit per statement --------------------------

# The same predicate as the ledger's claim, so both walk the partial index.
CLAIM = f"""
UPDATE artifact_jobs SET lease_owner = ?, lease_until = ? + ?, lease_epoch = lease_epoch + 1,
  state = CASE WHEN state IN ('PLANNED', 'FAILED') THEN 'LEASED' ELSE state END, updated_at = ?
WHERE job_id = (
  SELECT job_id FROM artifact_jobs
  WHERE {NOT_FINISHED_JOBS.text}
    AND (lease_until IS NULL OR lease_until < ?)
    AND (state != 'FAILED' OR (attempts < max_attempts
         AND (next_attempt_at IS NULL OR next_attempt_at <= ?)))
  ORDER BY created_at, job_id LIMIT 1)
RETURNING job_id, lease_epoch
"""
FENCE = "job_id = ? AND lease_owner = ? AND lease_epoch = ? AND lease_until >= ?"
START_OP = f"""
INSERT INTO artifact_ops (op_key, job_id, op_type, started_at, status, attempt, lease_epoch)
SELECT ?, job_id, ?, ?, 'IN_PROGRESS', 1, lease_epoch FROM artifact_jobs WHERE {FENCE}
ON CONFLICT (op_key) DO NOTHING
"""
SUCCEED_OP = f"""
UPDATE artifact_ops SET status = 'SUCCEEDED', finished_at = ?, result_code = 'OK', result_json = ?
WHERE op_key = ? AND status = 'IN_PROGRESS' AND lease_epoch = ?
  AND EXISTS (SELECT 1 FROM artifact_jobs WHERE {FENCE})
"""
ADVANCE = f"UPDATE artifact_jobs SET state = ?, updated_at = ? WHERE {FENCE} AND state = ?"
# The last move finishes the job and ends its lease in the same statement.
FINISH = (
    "UPDATE artifact_jobs SET state = ?, updated_at = ?, lease_owner = NULL, "
    f"lease_until = NULL WHERE {FENCE} AND state = ?"
)
PLAN = """
INSERT INTO artifact_jobs (job_id, work_id, artifact_id, canonical_url, state, created_at,
  updated_at, idempotency_key) VALUES (?, ?, ?, ?, 'PLANNED', ?, ?, ?) ON CONFLICT DO NOTHING
"""


def _floor_worker(path: Path, owner: str) -> int:
    import json

    db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA foreign_keys = ON")
    done = 0
    try:
        while True:
            now = time.time()
            row = db.execute(CLAIM, (owner, now, TTL_S, now, now, now)).fetchone()
            if row is None:
                return done
            job_id, epoch = row
            fence = (job_id, owner, epoch)
            for kind, before, after in STEPS:
                key = op_key(kind, job_id)
                now = time.time()
                db.execute(START_OP, (key, kind, now, *fence, now))
                result = json.dumps({"kind": kind, "ok": True}, sort_keys=True)
                now = time.time()
                db.execute(SUCCEED_OP, (now, result, key, epoch, *fence, now))
                now = time.time()
                move = FINISH if after is JobState.DEDUPED else ADVANCE
                db.execute(move, (after.value, now, *fence, now, before.value))
            done += 1
    finally:
        db.close()


def run_floor(path: Path, jobs: int, workers: int) -> float:
    from docstokg.keys import job_id_for, job_key

    started = time.perf_counter()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("BEGIN IMMEDIATE")
    now = time.time()
    rows = []
    for spec in _specs(jobs):
        key = job_key(spec.work_id, spec.artifact_id, spec.canonical_url)
        rows.append((job_id_for(key), spec.work_id, spec.artifact_id, spec.canonical_url, now,
                     now, key))  # fmt: skip
    db.executemany(PLAN, rows)
    db.execute("COMMIT")
    db.close()
    _run_threads(lambda n: _floor_worker(path, f"floor-{n}"), workers, jobs)
    return time.perf_counter() - started


# --- the executor compared: Connection.execute in place of the driver's cursor -------------


def _core_run(
    self: Prepared, connection: Any, params: Mapping[str, Any], *, fetch: bool
) -> list[Sequence[Any]] | int:
    result = connection.execute(self[connection.dialect.name], dict(params))
    if not fetch:
        return int(result.rowcount)
    return [tuple(row) for row in result] if result.returns_rows else []


def _core_many(self: Prepared, connection: Any, rows: Sequence[Mapping[str, Any]]) -> int:
    if not rows:
        return 0
    statement = self[connection.dialect.name]
    return int(connection.execute(statement, [dict(row) for row in rows]).rowcount)


@contextlib.contextmanager
def _executor(name: str) -> Iterator[None]:
    """Run the ledger's statements with executor ``name``: "driver" (its own) or "core"."""
    if name == "driver":
        yield
        return
    if name != "core":
        raise SystemExit(f"unknown executor {name!r}; use driver or core")
    saved = Prepared._run, Prepared.many
    Prepared._run, Prepared.many = _core_run, _core_many  # type: ignore[method-assign]
    try:
        yield
    finally:
        Prepared._run, Prepared.many = saved  # type: ignore[method-assign]


EXECUTOR_COST_CALLS = 3_000
EXECUTOR_COST_ROUNDS = 5


def executor_cost(url: str, executors: Sequence[str]) -> dict[str, float]:
    """CPU microseconds per hot statement for each executor, best of several rounds."""
    with Ledger.connect(url) as ledger:
        ledger.upgrade()
        plan_jobs(ledger, _specs(1))
        lease = lease_next_job(ledger, owner="cost", ttl_s=TTL_S)
        assert lease is not None
        best = dict.fromkeys(executors, float("inf"))
        for _ in range(EXECUTOR_COST_ROUNDS):
            for name in executors:
                with _executor(name), ledger.unit_of_work() as uow:
                    now = uow.now()
                    started = time.thread_time()
                    for _ in range(EXECUTOR_COST_CALLS):
                        uow.jobs.get(lease.job_id)
                        uow.jobs.holds(lease, now=now)
                        uow.jobs.renew(lease, ttl_s=TTL_S, now=now)
                    spent = time.thread_time() - started
                    uow.rollback()
                best[name] = min(best[name], spent / (3 * EXECUTOR_COST_CALLS) * 1e6)
        return best


# --- harness ----------------------------------------------------------------------------------


def _run_threads(work: Callable[[int], int], workers: int, jobs: int) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def target(n: int) -> None:
        try:
            results.append(work(n))
        except Exception as exc:  # noqa: BLE001 -- re-raised below: the benchmark fails loudly
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    if sum(results) != jobs:
        raise SystemExit(f"{sum(results)} jobs finished, expected {jobs}")


@contextlib.contextmanager
def _databases(backend: str, server: ThrowawayPostgres | None) -> Iterator[Callable[[str], str]]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="docstokg-bench-") as directory:
            yield lambda name: f"sqlite:///{Path(directory) / (name + '.sqlite3')}"
        return
    assert server is not None
    yield server.create_database


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5_000)
    parser.add_argument("--workers", default="1,4,16")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--executors", default="driver")
    parser.add_argument(
        "--cost-only", action="store_true", help="print the executors' cost per statement only"
    )
    args = parser.parse_args()
    worker_counts = [int(n) for n in args.workers.split(",")]
    backends = args.backends.split(",")
    executors = args.executors.split(",")

    ratio_at_one = None
    server = ThrowawayPostgres().start() if "postgresql" in backends else None
    try:
        if len(executors) > 1 or args.cost_only:
            print("CPU us per statement (get, holds, renew), best of 5 x 3,000 calls")
            for backend in backends:
                with _databases(backend, server) as database:
                    costs = executor_cost(database("cost"), executors)
                print(f"{backend:<11} " + " ".join(f"{n} {c:6.1f}" for n, c in costs.items()))
        if args.cost_only:
            return
        print(f"lifecycle of {args.jobs:,} jobs: plan, lease, 5 effects + 5 transitions, finish")
        print(
            f"{'backend':<11} {'workers':>7} "
            + " ".join(f"{name + ' jobs/s':>13}" for name in executors)
            + f" {'floor jobs/s':>13} {'ratio':>6}"
        )
        for backend in backends:
            with _databases(backend, server) as database:
                for workers in worker_counts:
                    timings = []
                    for executor in executors:
                        with _executor(executor):
                            url = database(f"ledger_{executor}_{workers}")
                            timings.append(run_ledger(url, args.jobs, workers))
                    seconds = timings[0]
                    floor = ""
                    ratio = ""
                    if backend == "sqlite":
                        floor_url = database(f"floor_{workers}")
                        with Ledger.connect(floor_url) as ledger:
                            ledger.upgrade()
                        floor_seconds = run_floor(
                            Path(floor_url.removeprefix("sqlite:///")), args.jobs, workers
                        )
                        floor = f"{args.jobs / floor_seconds:,.0f}"
                        ratio_value = seconds / floor_seconds
                        ratio = f"{ratio_value:.2f}"
                        if workers == 1:
                            ratio_at_one = ratio_value
                    rates = " ".join(f"{args.jobs / timing:>13,.0f}" for timing in timings)
                    print(f"{backend:<11} {workers:>7} {rates} {floor:>13} {ratio:>6}", flush=True)
    finally:
        if server is not None:
            server.stop()
    if ratio_at_one is not None:
        verdict = "met" if ratio_at_one <= GOAL_RATIO else "NOT MET"
        print(f"goal: ledger/floor <= {GOAL_RATIO} at 1 worker on SQLite: "
              f"{ratio_at_one:.2f}, {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
