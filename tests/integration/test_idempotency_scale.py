"""Scale (seed 1b.1): 1,000 and 10,000 jobs leased at once by a fleet of threads and processes.

Two rounds on one ledger: 1,000 new jobs, then 10,000 more.  Each round plans
its jobs in bulk, then starts together several child processes
(tests/scale_child.py) and threads of the test's own process, all leasing
from the one ledger and finishing each job at once (see tests/scale_kit.py).
The claims must cover the round's plan exactly: no job granted twice, none
left out, each granted once under epoch 1, no lease fenced out; and the
database must agree (every job DEDUPED, its five ops recorded under that epoch).

Lease latency p50/p99 and the times of the services behind ``docstokg job
status`` / ``job stats`` are printed (``pytest -s``), not asserted:
bench/bench_scale.py is where sizes beyond these are measured.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import func, select

from docstokg import JobState, Ledger, plan_jobs
from docstokg.keys import job_id_for, job_key
from docstokg.ledger.models import OP_SUCCEEDED, ArtifactJob, ArtifactOp
from docstokg.services.operations import job_status
from tests.scale_child import Fleet
from tests.scale_kit import (
    OPS_PER_JOB,
    Claim,
    describe,
    report_query_times,
    run_threads,
    specs,
    twice_leased,
)

PROCESSES = 3  # child processes, beside the test's own
THREADS_PER_PROCESS = 4
THREADS_HERE = 8
ROUNDS = (1_000, 10_000)  # new jobs planned, then leased by the fleet, in each round


def _plan(ledger: Ledger, count: int, *, start: int) -> tuple[list[str], float]:
    """Plan ``count`` new jobs in bulk; their ids, and the seconds it took."""
    started = time.perf_counter()
    rows = list(specs(count, start=start))
    assert plan_jobs(ledger, rows) == count
    elapsed = time.perf_counter() - started
    ids = [job_id_for(job_key(r.work_id, r.artifact_id, r.canonical_url)) for r in rows]
    return ids, elapsed


def _queries(times: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in times.items())


def _check_claims(claims: Sequence[Claim], planned: Sequence[str]) -> None:
    """Every planned job granted exactly once, under epoch 1; nothing else granted."""
    twice = twice_leased(claims)
    assert not twice, f"{len(twice)} jobs leased more than once, e.g. {next(iter(twice.values()))}"
    fenced = [claim for claim in claims if claim.lost]
    assert not fenced, f"{len(fenced)} leases were fenced out by another holder, e.g. {fenced[0]}"
    claimed = {claim.job_id for claim in claims}
    lost = set(planned) - claimed
    assert not lost, f"{len(lost)} planned jobs were never leased, e.g. {sorted(lost)[:3]}"
    assert claimed == set(planned)
    epochs = {claim.epoch for claim in claims}
    assert epochs == {1}, f"fresh jobs were granted under epochs {sorted(epochs)}, not only 1"


def _check_ledger(ledger: Ledger, planned: Sequence[str]) -> None:
    """The database agrees: every job DEDUPED under epoch 1, lease ended, five ops of that epoch."""
    report = job_status(ledger)
    assert report.total == len(planned)
    assert report.counts[JobState.DEDUPED] == len(planned), report.counts
    with ledger.unit_of_work(read_only=True) as uow:
        jobs = uow.session.execute(
            select(ArtifactJob.lease_epoch, ArtifactJob.lease_owner, func.count()).group_by(
                ArtifactJob.lease_epoch, ArtifactJob.lease_owner
            )
        ).all()
        ops = uow.session.execute(
            select(ArtifactOp.status, ArtifactOp.lease_epoch, func.count()).group_by(
                ArtifactOp.status, ArtifactOp.lease_epoch
            )
        ).all()
        per_job = set(
            uow.session.execute(
                select(func.count()).select_from(ArtifactOp).group_by(ArtifactOp.job_id)
            ).scalars()
        )
    assert [tuple(row) for row in jobs] == [(1, None, len(planned))]
    assert [tuple(row) for row in ops] == [(OP_SUCCEEDED, 1, OPS_PER_JOB * len(planned))]
    assert per_job == {OPS_PER_JOB}


def test_a_fleet_of_threads_and_processes_leases_each_job_once(
    db_url: str, backend: str, tmp_path: Path
) -> None:
    planned: list[str] = []
    with (
        Ledger.connect(db_url, pool_size=THREADS_HERE + 2) as ledger,
        Fleet(db_url, tmp_path, processes=PROCESSES, threads=THREADS_PER_PROCESS) as fleet,
    ):
        for jobs in ROUNDS:
            new, plan_s = _plan(ledger, jobs, start=len(planned))
            planned += new
            before = report_query_times(ledger)
            started = time.perf_counter()
            children, here = fleet.round(lambda: run_threads(ledger, "here", THREADS_HERE))
            run_s = time.perf_counter() - started
            claims = children + here
            after = report_query_times(ledger)
            print(
                f"\n[{backend}] {jobs:,} new jobs: planned in {plan_s:.2f} s; leased and ended "
                f"in {run_s:.2f} s by {PROCESSES} processes x {THREADS_PER_PROCESS} threads "
                f"+ {THREADS_HERE} threads here\n"
                f"  all:             {describe(claims)}\n"
                f"  child processes: {describe(children)}\n"
                f"  threads here:    {describe(here)}\n"
                f"  before the run:  {_queries(before)}\n"
                f"  after the run:   {_queries(after)}"
            )
            assert children, "the child processes got no job: nothing raced across processes"
            assert here, "the threads of the test's process got no job"
            _check_claims(claims, new)
            _check_ledger(ledger, planned)
