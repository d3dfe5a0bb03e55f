"""A worker's death is an attempt: a job whose holder's lease expired mid-step pays for it.

Without this, a job that kills its worker every time (a crash, an OOM kill on
one artifact) would be taken over forever.  Time moves only through the
``clock`` fixture; a worker "dies" by simply never touching its lease again.
"""

from __future__ import annotations

import pytest
from sqlalchemy import update

from docstokg import (
    JobState,
    Ledger,
    advance_state,
    cleanup_stale_leases,
    lease_next_job,
    release_lease,
    renew_lease,
)
from docstokg.errors import LeaseLost
from docstokg.ledger.models import jobs_table
from docstokg.services import claim_and_start, release_leases_of
from docstokg.services.operations import retry_jobs
from tests.conftest import ManualClock
from tests.lifecycle import TTL, job_of, plan, take, walk

# The state a holder died in, and the step it was running there.
DIED_DURING = [
    (JobState.LEASED, "HEAD"),
    (JobState.HEAD_DONE, "STREAM"),
    (JobState.RESUME_OK, "STREAM"),
    (JobState.STREAMING, "FINALIZE"),
    (JobState.FINALIZED, "INDEX"),
    (JobState.INDEXED, "DEDUPE"),
]


def plan_with_attempts(ledger: Ledger, max_attempts: int) -> str:
    job_id = plan(ledger)
    with ledger.unit_of_work() as uow:
        uow.session.execute(
            update(jobs_table)
            .where(jobs_table.c.job_id == job_id)
            .values(max_attempts=max_attempts)
        )
        uow.commit()
    return job_id


@pytest.mark.parametrize(("died_in", "step"), DIED_DURING)
def test_a_takeover_after_an_expired_lease_costs_an_attempt_and_names_the_step(
    ledger: Ledger, clock: ManualClock, died_in: JobState, step: str
) -> None:
    job_id = plan(ledger)
    first = take(ledger, "w1")
    walk(ledger, first, died_in)
    clock.advance(TTL + 1)

    second = take(ledger, "w2")

    assert second.job_id == job_id
    assert second.state is died_in  # the new holder resumes where the dead one stopped
    job = job_of(ledger, job_id)
    assert job.attempts == 1
    assert job.last_error == f"worker lost during {step} (lease expired)"


def test_a_released_lease_is_no_lost_worker(ledger: Ledger, clock: ManualClock) -> None:
    """A holder that hands its job back (a stop, a transient error) costs it nothing."""
    job_id = plan(ledger)
    first = take(ledger, "w1")
    walk(ledger, first, JobState.STREAMING)
    assert release_lease(ledger, first)

    take(ledger, "w2")

    job = job_of(ledger, job_id)
    assert (job.attempts, job.last_error) == (0, None)


def test_a_job_that_kills_every_worker_ends_failed_after_max_attempts(
    ledger: Ledger, clock: ManualClock
) -> None:
    job_id = plan_with_attempts(ledger, 3)
    for owner in ("w1", "w2", "w3"):
        lease = take(ledger, owner)
        assert lease.job_id == job_id
        clock.advance(TTL + 1)  # the worker died mid-step

    # The third death used the last attempt: no fourth worker gets the job.
    assert lease_next_job(ledger, owner="w4", ttl_s=TTL) is None
    job = job_of(ledger, job_id)
    assert job.state is JobState.FAILED
    assert job.attempts == job.max_attempts == 3
    assert job.lease_owner is None
    assert job.last_error == "worker lost during HEAD (lease expired)"

    # An operator's retry gives it a fresh budget.
    assert retry_jobs(ledger, [job_id]).refilled == [job_id]
    assert take(ledger, "w5").job_id == job_id


def test_an_exhausted_poison_job_does_not_hide_the_next_job(
    ledger: Ledger, clock: ManualClock
) -> None:
    """The claim that gives a poison job up goes on to grant the next one, in the same call."""
    poison = plan_with_attempts(ledger, 1)
    take(ledger, "w1")
    clock.advance(TTL + 1)
    healthy = plan(ledger, 1)

    granted = take(ledger, "w2")

    assert granted.job_id == healthy
    assert job_of(ledger, poison).state is JobState.FAILED


def test_the_cleanup_of_an_expired_lease_counts_the_attempt_too(
    ledger: Ledger, clock: ManualClock
) -> None:
    job_id = plan_with_attempts(ledger, 1)
    lease = take(ledger, "w1")
    walk(ledger, lease, JobState.HEAD_DONE)
    clock.advance(TTL + 1)

    assert cleanup_stale_leases(ledger) == 1

    job = job_of(ledger, job_id)
    assert job.state is JobState.FAILED
    assert job.attempts == 1
    assert job.last_error == "worker lost during STREAM (lease expired)"
    assert lease_next_job(ledger, owner="w2", ttl_s=TTL) is None


def test_renewing_a_lease_whose_job_just_finished_is_not_a_lost_lease(
    ledger: Ledger, clock: ManualClock
) -> None:
    """The heartbeat races the job's last commit: that is no reason to warn of a lost lease."""
    plan(ledger)
    lease = take(ledger, "w1")
    walk(ledger, lease, JobState.INDEXED)
    assert advance_state(ledger, lease, to_state=JobState.DEDUPED, allowed_from=[JobState.INDEXED])

    assert renew_lease(ledger, lease, ttl_s=TTL) == lease

    # A lease another worker took over is lost, as before.
    plan(ledger, 2)
    taken_over = take(ledger, "a")
    clock.advance(TTL + 1)
    assert take(ledger, "b").job_id == taken_over.job_id
    with pytest.raises(LeaseLost):
        renew_lease(ledger, taken_over, ttl_s=TTL)


def test_a_worker_unsure_of_its_claims_hands_them_all_back_at_no_cost(
    ledger: Ledger, clock: ManualClock
) -> None:
    """After a COMMIT whose fate it could not learn, a worker gives back whatever it may hold."""
    first, second = plan(ledger, 1), plan(ledger, 2)
    take(ledger, "w1")
    take(ledger, "w1")  # a claim the worker never heard of (its COMMIT's answer was lost)

    assert release_leases_of(ledger, "w1") == 2

    clock.advance(TTL + 1)  # no lease to expire: the next claims are no takeovers
    assert {take(ledger, "w2").job_id, take(ledger, "w3").job_id} == {first, second}
    assert [job_of(ledger, job_id).attempts for job_id in (first, second)] == [0, 0]


def test_a_claim_that_only_gives_a_poison_job_up_still_records_it(
    ledger: Ledger, clock: ManualClock
) -> None:
    """No job granted, but the exhausted one ends FAILED for good: the run waiting on it ends."""
    poison = plan_with_attempts(ledger, 1)
    take(ledger, "w1")
    clock.advance(TTL + 1)  # its worker died mid-step

    assert claim_and_start(ledger, owner="w2", ttl_s=TTL, first_kind="HEAD") is None

    job = job_of(ledger, poison)
    assert (job.state, job.attempts, job.lease_owner) == (JobState.FAILED, 1, None)
