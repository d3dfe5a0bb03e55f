"""JobSteps' shortcuts: a claim that starts the first effect; a last commit claiming the next.

Both save a unit of work per job; both must leave exactly the records the
one-step-at-a-time path leaves.  On SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from docstokg import JobState, Ledger, op_key
from docstokg.ledger import UnitOfWork
from docstokg.ledger.models import OP_IN_PROGRESS, OP_SUCCEEDED
from docstokg.services import (
    JobSteps,
    LedgerStep,
    NextClaim,
    claim_and_start,
)
from tests.conftest import ManualClock
from tests.lifecycle import TTL, job_of, op_of, plan, take

HEAD = "HEAD"


def head_key(job_id: str) -> str:
    return op_key(HEAD, job_id)


def head_effect(steps: JobSteps, calls: list[str]) -> dict[str, Any]:
    def probe() -> dict[str, Any]:
        calls.append(steps.lease.job_id)
        return {"status": 200}

    return steps.effect(
        kind=HEAD,
        opkey=head_key(steps.lease.job_id),
        effect_fn=probe,
        advance_to=JobState.HEAD_DONE,
        allowed_from={JobState.LEASED},
    )


def note(uow: UnitOfWork, now: float) -> dict[str, Any]:
    return {"noted_at": now}


def test_a_claim_starts_the_first_effect_in_the_same_commit(ledger: Ledger) -> None:
    job_id = plan(ledger)

    steps = claim_and_start(ledger, owner="w1", ttl_s=TTL, first_kind=HEAD)

    assert steps is not None
    assert steps.lease.job_id == job_id
    started = op_of(ledger, head_key(job_id))
    assert (started.status, started.attempt, started.lease_epoch) == (OP_IN_PROGRESS, 1, 1)
    calls: list[str] = []
    with steps:
        assert head_effect(steps, calls) == {"status": 200}
    assert calls == [job_id]
    done = op_of(ledger, head_key(job_id))
    assert (done.status, done.attempt) == (OP_SUCCEEDED, 1)  # run once, not started twice
    assert job_of(ledger, job_id).state is JobState.HEAD_DONE


def test_a_claim_with_nothing_claimable_starts_nothing(ledger: Ledger) -> None:
    assert claim_and_start(ledger, owner="w1", ttl_s=TTL, first_kind=HEAD) is None


def test_a_job_taken_over_after_its_first_step_replays_that_step(
    ledger: Ledger, clock: ManualClock
) -> None:
    job_id = plan(ledger)
    first = JobSteps(ledger, take(ledger, "dead", ttl_s=5.0))
    with first:
        head_effect(first, [])
    clock.advance(10.0)  # the holder died; its lease expired

    steps = claim_and_start(ledger, owner="w2", ttl_s=TTL, first_kind=HEAD)

    assert steps is not None
    assert (steps.lease.job_id, steps.lease.epoch) == (job_id, 2)
    calls: list[str] = []
    with steps:
        assert head_effect(steps, calls) == {"status": 200}
    assert calls == []  # replayed from the ledger, not run again
    assert op_of(ledger, head_key(job_id)).attempt == 1


def test_the_last_commit_of_a_job_claims_the_next_job_and_starts_it(ledger: Ledger) -> None:
    first_id, second_id = plan(ledger, 1), plan(ledger, 2)
    steps = claim_and_start(ledger, owner="w1", ttl_s=TTL, first_kind=HEAD)
    assert steps is not None
    current = steps.lease.job_id
    step = LedgerStep("NOTE", op_key("NOTE", current), note, JobState.HEAD_DONE,
                      frozenset({JobState.LEASED}))  # fmt: skip

    steps.ledger_steps(step, then_claim=NextClaim("w1", TTL, HEAD))

    following = steps.next_job
    assert following is not None
    assert {current, following.lease.job_id} == {first_id, second_id}
    assert following.lease.owner == "w1"
    assert op_of(ledger, head_key(following.lease.job_id)).status == OP_IN_PROGRESS
    assert op_of(ledger, op_key("NOTE", current)).status == OP_SUCCEEDED
    assert job_of(ledger, following.lease.job_id).state is JobState.LEASED


def test_a_last_commit_with_nothing_left_to_claim_claims_nothing(ledger: Ledger) -> None:
    plan(ledger)
    steps = claim_and_start(ledger, owner="w1", ttl_s=TTL, first_kind=HEAD)
    assert steps is not None
    step = LedgerStep("NOTE", op_key("NOTE", steps.lease.job_id), note, JobState.HEAD_DONE,
                      frozenset({JobState.LEASED}))  # fmt: skip

    steps.ledger_steps(step, then_claim=NextClaim("w1", TTL, HEAD))

    assert steps.next_job is None
    assert job_of(ledger, steps.lease.job_id).state is JobState.HEAD_DONE
