"""Helpers shared by the lifecycle tests: plan, take, look at and walk jobs."""

from __future__ import annotations

from docstokg import (
    JobRecord,
    JobState,
    Lease,
    Ledger,
    OpRecord,
    advance_state,
    lease_next_job,
    plan_job_if_absent,
)

TTL = 30.0


class WorkerDied(BaseException):
    """The worker process killed in the middle of an effect.

    A ``BaseException``: no ``except Exception`` of the ledger intercepts it,
    so the ledger sees exactly what a killed process leaves behind.
    """


# The path from LEASED to each state a worker can be in while holding the job.
PATH_FROM_LEASED: dict[JobState, tuple[JobState, ...]] = {
    JobState.LEASED: (),
    JobState.HEAD_DONE: (JobState.HEAD_DONE,),
    JobState.RESUME_OK: (JobState.HEAD_DONE, JobState.RESUME_OK),
    JobState.STREAMING: (JobState.HEAD_DONE, JobState.STREAMING),
    JobState.FINALIZED: (JobState.HEAD_DONE, JobState.STREAMING, JobState.FINALIZED),
    JobState.INDEXED: (
        JobState.HEAD_DONE,
        JobState.STREAMING,
        JobState.FINALIZED,
        JobState.INDEXED,
    ),
}


def triple(n: int) -> tuple[str, str, str]:
    return (f"W{n}", "pdf", f"https://example.org/{n}.pdf")


def plan(ledger: Ledger, n: int = 0) -> str:
    work_id, artifact_id, url = triple(n)
    return plan_job_if_absent(ledger, work_id=work_id, artifact_id=artifact_id, canonical_url=url)


def take(ledger: Ledger, owner: str, ttl_s: float = TTL) -> Lease:
    granted = lease_next_job(ledger, owner=owner, ttl_s=ttl_s)
    assert granted is not None, f"{owner} was granted no job"
    return granted


def job_of(ledger: Ledger, job_id: str) -> JobRecord:
    with ledger.unit_of_work(read_only=True) as uow:
        job = uow.jobs.get(job_id)
    assert job is not None
    return job


def op_or_none(ledger: Ledger, key: str) -> OpRecord | None:
    with ledger.unit_of_work(read_only=True) as uow:
        return uow.ops.get(key)


def op_of(ledger: Ledger, key: str) -> OpRecord:
    op = op_or_none(ledger, key)
    assert op is not None
    return op


def walk(ledger: Ledger, lease: Lease, target: JobState) -> None:
    """Move a freshly leased job along its path to ``target``."""
    current = JobState.LEASED
    for step in PATH_FROM_LEASED[target]:
        assert advance_state(ledger, lease, to_state=step, allowed_from=[current]) is True
        current = step
    assert job_of(ledger, lease.job_id).state is target
