"""Real concurrency: 8 threads and 4 processes run 2,000 jobs through a 5-effect pipeline.

Every worker loops: lease the next job, run its effects (HEAD, STREAM,
FINALIZE, INDEX, DEDUPE), each followed by its state move, until no job is
left that is not terminal.  Each effect body creates a file named by its
op_key with ``O_CREAT | O_EXCL``: a second run of any body fails loudly, and
the folder counts the runs outside the database.  Any exception in any
worker fails the test, so a "database is locked" reaching a caller would too.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

from docstokg import (
    JobSpec,
    JobState,
    Ledger,
    advance_state,
    lease_next_job,
    op_key,
    plan_jobs,
    run_effect,
)
from tests.dbtools import execute_sql

JOBS = 2_000
THREADS = 8
PROCESSES = 4
TTL_S = 60.0
DEADLINE_S = 300.0
IDLE_POLL_S = 0.02

# kind, from, to: the five effects of a job, each followed by its state move.
PIPELINE = (
    ("HEAD", JobState.LEASED, JobState.HEAD_DONE),
    ("STREAM", JobState.HEAD_DONE, JobState.STREAMING),
    ("FINALIZE", JobState.STREAMING, JobState.FINALIZED),
    ("INDEX", JobState.FINALIZED, JobState.INDEXED),
    ("DEDUPE", JobState.INDEXED, JobState.DEDUPED),
)


@dataclass
class WorkerReport:
    name: str
    leased: int = 0
    effects_run: int = 0
    errors: list[str] = field(default_factory=list)


def _effect(folder: Path, key: str, kind: str) -> dict[str, Any]:
    """The effect body: create ``<folder>/<op_key>``, failing if any run made it before."""
    descriptor = os.open(folder / key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.close(descriptor)
    return {"kind": kind, "pid": os.getpid()}


def _unfinished(ledger: Ledger) -> int:
    """Jobs that are neither DEDUPED nor FAILED with their attempts used up."""
    with ledger.unit_of_work(read_only=True) as uow:
        counts = uow.jobs.count_by_state()
        failed = uow.jobs.list_by_state(JobState.FAILED, limit=JOBS)
    exhausted = sum(job.exhausted for job in failed)
    return sum(counts.values()) - counts[JobState.DEDUPED] - exhausted


def _work(ledger: Ledger, name: str, folder: Path, all_done: Event) -> WorkerReport:
    report = WorkerReport(name)
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not all_done.is_set():
            if time.monotonic() > deadline:
                report.errors.append(f"{name}: gave up after {DEADLINE_S} s")
                return report
            lease = lease_next_job(ledger, owner=name, ttl_s=TTL_S)
            if lease is None:
                if _unfinished(ledger) == 0:
                    all_done.set()
                else:
                    all_done.wait(IDLE_POLL_S)  # jobs held by others are still running
                continue
            report.leased += 1
            for kind, origin, target in PIPELINE:
                key = op_key(kind, lease.job_id)
                run_effect(
                    ledger,
                    lease,
                    kind=kind,
                    opkey=key,
                    effect_fn=partial(_effect, folder, key, kind),
                )
                report.effects_run += 1
                moved = advance_state(ledger, lease, to_state=target, allowed_from={origin})
                if not moved:
                    report.errors.append(f"{name}: {lease.job_id} did not move {origin}→{target}")
    except BaseException:  # noqa: BLE001  every failure must reach the test, whatever it is
        report.errors.append(f"{name}: {traceback.format_exc()}")
    return report


def _process_worker(  # noqa: PLR0917  Process(args=...) passes them positionally
    url: str, name: str, folder: str, start: Barrier, all_done: Event, results: Queue[Any]
) -> None:
    try:
        with Ledger.connect(url) as ledger:
            with ledger.unit_of_work(read_only=True):
                pass  # connected and schema checked before the race starts
            start.wait(timeout=120)
            report = _work(ledger, name, Path(folder), all_done)
    except BaseException:  # noqa: BLE001  reported to the parent, which fails the test
        report = WorkerReport(name, errors=[f"{name}: {traceback.format_exc()}"])
    results.put(report)


def test_threads_and_processes_run_every_effect_exactly_once(
    db_url: str, tmp_path: Path, backend: str
) -> None:
    folder = tmp_path / "effects"
    folder.mkdir()
    specs = [JobSpec(f"W{n:05d}", "pdf", f"https://example.org/{n}.pdf") for n in range(JOBS)]
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(THREADS + PROCESSES + 1)
    all_done = context.Event()
    results: Queue[Any] = context.Queue()

    with Ledger.connect(db_url, pool_size=THREADS, max_overflow=4) as ledger:
        assert plan_jobs(ledger, specs) == JOBS
        with ledger.unit_of_work(read_only=True) as uow:
            job_ids = [job.job_id for job in uow.jobs.list_by_state(JobState.PLANNED, limit=JOBS)]
        assert len(job_ids) == JOBS

        processes = [
            context.Process(
                target=_process_worker,
                args=(db_url, f"process-{n}", str(folder), start, all_done, results),
            )
            for n in range(PROCESSES)
        ]
        thread_reports: list[WorkerReport] = []

        def run_thread(name: str) -> None:
            start.wait(timeout=120)
            thread_reports.append(_work(ledger, name, folder, all_done))

        threads = [
            threading.Thread(target=run_thread, args=(f"thread-{n}",)) for n in range(THREADS)
        ]
        for process in processes:
            process.start()
        for thread in threads:
            thread.start()
        start.wait(timeout=120)
        began = time.perf_counter()
        for thread in threads:
            thread.join(timeout=DEADLINE_S + 30)
        process_reports: list[WorkerReport] = [
            results.get(timeout=DEADLINE_S + 30) for _ in processes
        ]
        elapsed = time.perf_counter() - began
        for process in processes:
            process.join(timeout=60)
            assert process.exitcode == 0, f"a worker process exited with {process.exitcode}"
        assert not any(thread.is_alive() for thread in threads)

        reports = thread_reports + process_reports
        errors = [error for report in reports for error in report.errors]
        assert not any("database is locked" in error for error in errors), errors
        assert errors == []
        print(
            f"\n{backend}: {JOBS} jobs x {len(PIPELINE)} effects by {THREADS} threads + "
            f"{PROCESSES} processes in {elapsed:.1f} s = {JOBS / elapsed:.0f} jobs/s; leased "
            + ", ".join(f"{report.name}={report.leased}" for report in reports)
        )

        # Each job was granted once (no lease expired), by threads and processes both.
        assert sum(report.leased for report in reports) == JOBS
        assert sum(report.leased for report in thread_reports) > 0
        assert sum(report.leased for report in process_reports) > 0
        assert sum(report.effects_run for report in reports) == JOBS * len(PIPELINE)

        with ledger.unit_of_work(read_only=True) as uow:
            counts = uow.jobs.count_by_state()
        assert counts[JobState.DEDUPED] == JOBS
        assert sum(counts.values()) == JOBS

    # Every effect body ran exactly once: one file per op_key, and no other file.
    expected = {op_key(kind, job_id) for job_id in job_ids for kind, _, _ in PIPELINE}
    assert len(expected) == JOBS * len(PIPELINE)
    assert {path.name for path in folder.iterdir()} == expected

    # The ledger agrees, read behind its back: one SUCCEEDED record per op, first attempt.
    assert execute_sql(
        db_url, "SELECT status, attempt, count(*) FROM artifact_ops GROUP BY status, attempt"
    ) == [("SUCCEEDED", 1, JOBS * len(PIPELINE))]
    assert execute_sql(
        db_url, "SELECT state, min(lease_epoch), max(lease_epoch) FROM artifact_jobs GROUP BY state"
    ) == [("DEDUPED", 1, 1)]
