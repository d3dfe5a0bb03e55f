"""JobSteps: a claim that starts the first effect; a last turn claiming the next job; a
turn's op rows in one write and its move in another; a turn planned again from the truth.

A turn is planned from what the holder knows (at first, nothing recorded
but its own work) and, when its writes do not all take, planned once more
from what the database says.  Both must leave exactly the same rows.  On
SQLite and PostgreSQL.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import pytest

from docstokg import InvalidTransition, JobState, LeaseLost, Ledger, op_key, run_effect
from docstokg.errors import DocstokgError
from docstokg.ledger import UnitOfWork
from docstokg.ledger.models import OP_IN_PROGRESS, OP_SUCCEEDED
from docstokg.ledger.records import OpWrite
from docstokg.ledger.repositories import JobRepository, OpRepository
from docstokg.services import (
    JobSteps,
    LedgerStep,
    NextClaim,
    claim_and_start,
    redo_effect,
)
from docstokg.services.content import StoredContent, index_and_dedupe_steps
from tests.conftest import ManualClock
from tests.lifecycle import TTL, job_of, op_of, op_or_none, plan, take, walk

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


# --- ledger steps: one write per step -------------------------------------------------


def counted_step(
    kind: str, job_id: str, to: JobState, start: JobState, runs: Counter[str]
) -> LedgerStep:
    def write(uow: UnitOfWork, now: float) -> dict[str, Any]:
        runs[kind] += 1
        return {"kind": kind}

    return LedgerStep(kind, op_key(kind, job_id), write, to, frozenset({start}))


def streaming_and_finalizing(job_id: str, runs: Counter[str]) -> tuple[LedgerStep, LedgerStep]:
    return (
        counted_step("S1", job_id, JobState.STREAMING, JobState.HEAD_DONE, runs),
        counted_step("S2", job_id, JobState.FINALIZED, JobState.STREAMING, runs),
    )


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often the fenced op and job writes are called (the real ones run)."""
    calls: Counter[str] = Counter()

    def counting(cls: type, name: str) -> None:
        real = getattr(cls, name)

        def spy(self: object, *args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return real(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, spy)

    counting(OpRepository, "start")
    counting(OpRepository, "succeed")
    counting(OpRepository, "record")
    counting(OpRepository, "list_for_job")  # a turn planned again from what the database says
    counting(JobRepository, "advance")
    return calls


def from_the_truth(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every turn planned from what the database says, as a turn that did not take is."""

    def learning(self: JobSteps, **turn: Any) -> Any:
        return self._attempt(
            turn.get("start"), turn.get("steps", ()), turn.get("then_claim"), learn=True
        )

    monkeypatch.setattr(JobSteps, "_turn", learning)


def test_ledger_steps_insert_each_op_done_and_move_the_job_once(
    ledger: Ledger, writes: Counter[str]
) -> None:
    job_id = plan(ledger)
    runs: Counter[str] = Counter()
    with JobSteps(ledger, take(ledger, "w1")) as steps:
        head_effect(steps, [])  # its result waits for the ledger steps' commit
        writes.clear()
        results = steps.ledger_steps(*streaming_and_finalizing(job_id, runs))

    assert results == [{"kind": "S1"}, {"kind": "S2"}]
    assert runs == Counter({"S1": 1, "S2": 1})
    # HEAD's waiting result and both steps in one write; the job moves once.
    assert writes == Counter({"record": 1, "advance": 1})
    assert job_of(ledger, job_id).state is JobState.FINALIZED
    for kind in ("S1", "S2"):
        done = op_of(ledger, op_key(kind, job_id))
        assert (done.status, done.attempt, done.lease_epoch) == (OP_SUCCEEDED, 1, 1)
        assert done.result_json == f'{{"kind":"{kind}"}}'
    assert op_of(ledger, head_key(job_id)).status == OP_SUCCEEDED


IDENTITY = {"job_id", "work_id", "canonical_url", "idempotency_key", "created_at"}


def assert_twins(ledger: Ledger, one: str, other: str, *, kinds: tuple[str, ...]) -> None:
    """Two jobs taken through the same steps hold the same rows, but for what names them."""

    def job_row(job_id: str) -> dict[str, Any]:
        row = dataclasses.asdict(job_of(ledger, job_id))
        return {k: v for k, v in row.items() if k not in IDENTITY}

    def op_row(kind: str, job_id: str) -> dict[str, Any]:
        row = dataclasses.asdict(op_of(ledger, op_key(kind, job_id)))
        return {k: v for k, v in row.items() if k not in {"op_key", "job_id"}}

    assert job_row(one) == job_row(other)
    for kind in kinds:
        assert op_row(kind, one) == op_row(kind, other)


def test_a_turn_planned_from_the_truth_commits_the_rows_an_assumed_one_commits(
    ledger: Ledger, writes: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One job through ledger_steps as usual, its twin with every turn read first: same rows."""
    assumed_id, learned_id = plan(ledger, 1), plan(ledger, 2)
    assumed, learned = take(ledger, "w1"), take(ledger, "w1")
    assert {assumed.job_id, learned.job_id} == {assumed_id, learned_id}
    runs: Counter[str] = Counter()
    with JobSteps(ledger, assumed) as steps:
        head_effect(steps, [])
        steps.ledger_steps(*streaming_and_finalizing(assumed.job_id, runs))
    assert (writes["record"], writes["list_for_job"], writes["succeed"]) == (2, 0, 0)
    from_the_truth(monkeypatch)
    with JobSteps(ledger, learned) as steps:
        head_effect(steps, [])
        steps.ledger_steps(*streaming_and_finalizing(learned.job_id, runs))
    assert writes["list_for_job"] == 2  # both turns read the job first

    assert_twins(ledger, assumed.job_id, learned.job_id, kinds=("HEAD", "S1", "S2"))


def test_a_step_recorded_before_is_replayed_and_the_next_recorded(
    ledger: Ledger, clock: ManualClock, writes: Counter[str]
) -> None:
    job_id = plan(ledger)
    lease = take(ledger, "w1")
    walk(ledger, lease, JobState.HEAD_DONE)
    runs: Counter[str] = Counter()
    first, second = streaming_and_finalizing(job_id, runs)
    JobSteps(ledger, lease).ledger_steps(first)  # S1 commits on its own
    recorded = op_of(ledger, op_key("S1", job_id))
    clock.advance(1.0)

    results = JobSteps(ledger, lease).ledger_steps(first, second)

    assert results == [{"kind": "S1"}, {"kind": "S2"}]
    assert writes["list_for_job"] == 1  # the assumed turn did not take: planned from the truth
    assert op_of(ledger, op_key("S1", job_id)) == recorded  # replayed, not recorded again
    assert op_of(ledger, op_key("S2", job_id)).finished_at == clock.now
    assert op_of(ledger, op_key("S2", job_id)).attempt == 1
    assert job_of(ledger, job_id).state is JobState.FINALIZED


def test_index_and_dedupe_replayed_after_the_job_finished_under_the_same_lease(
    ledger: Ledger,
) -> None:
    """The assumed turn's fenced write fails (a finished job keeps no lease); read, it replays."""
    job_id = plan(ledger)
    lease = take(ledger, "w1")
    walk(ledger, lease, JobState.FINALIZED)
    content = StoredContent("ab" * 32, 10, "artifacts/ab/abab", "application/pdf")
    decided = index_and_dedupe_steps(JobSteps(ledger, lease), content)
    assert job_of(ledger, job_id).state is JobState.DEDUPED

    again = index_and_dedupe_steps(JobSteps(ledger, lease), content)

    assert again == decided == {"outcome": "DEDUPED", "duplicate_of": None}
    assert job_of(ledger, job_id).state is JobState.DEDUPED
    assert op_of(ledger, op_key("DEDUPE", job_id)).attempt == 1


# --- effects: the last result and the next start in one write ---------------------------


def second_effect(steps: JobSteps, calls: list[str]) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        calls.append("S")
        return {"bytes": 3}

    return steps.effect(
        kind="S",
        opkey=op_key("S", steps.lease.job_id),
        effect_fn=run,
        advance_to=JobState.STREAMING,
        allowed_from={JobState.HEAD_DONE},
    )


def test_an_effect_after_an_effect_records_the_first_and_starts_itself_in_one_write(
    ledger: Ledger, writes: Counter[str]
) -> None:
    job_id = plan(ledger)
    calls: list[str] = []
    with JobSteps(ledger, take(ledger, "w1")) as steps:
        head_effect(steps, calls)
        writes.clear()
        assert second_effect(steps, calls) == {"bytes": 3}
        assert writes == Counter({"record": 1, "advance": 1})  # not a succeed and a start
        assert op_of(ledger, op_key("S", job_id)).status == OP_IN_PROGRESS

    assert calls == [job_id, "S"]
    assert op_of(ledger, head_key(job_id)).status == OP_SUCCEEDED
    assert op_of(ledger, op_key("S", job_id)).status == OP_SUCCEEDED
    assert job_of(ledger, job_id).state is JobState.STREAMING


def test_an_effect_started_in_one_write_leaves_the_rows_of_a_turn_read_first(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, writes: Counter[str]
) -> None:
    short_id, long_id = plan(ledger, 1), plan(ledger, 2)
    short, long = take(ledger, "w1"), take(ledger, "w1")
    with JobSteps(ledger, short) as steps:
        head_effect(steps, [])
        writes.clear()
        second_effect(steps, [])
        assert writes["record"] == 1  # HEAD's result and the second start, in one write
    from_the_truth(monkeypatch)
    with JobSteps(ledger, long) as steps:
        head_effect(steps, [])
        second_effect(steps, [])

    assert {short.job_id, long.job_id} == {short_id, long_id}
    assert_twins(ledger, short.job_id, long.job_id, kinds=("HEAD", "S"))


def test_a_waiting_move_already_made_sends_the_turn_back_to_be_planned_from_the_truth(
    ledger: Ledger, writes: Counter[str]
) -> None:
    """The job already is in HEAD_DONE (a replay): the move does not take; nothing is half-done."""
    job_id = plan(ledger)
    lease = take(ledger, "w1")
    calls: list[str] = []
    with JobSteps(ledger, lease) as steps:
        head_effect(steps, calls)  # waits to move LEASED → HEAD_DONE ...
        walk(ledger, lease, JobState.HEAD_DONE)  # ... which another call of ours already made
        writes.clear()
        assert second_effect(steps, calls) == {"bytes": 3}
        assert (writes["record"], writes["list_for_job"], writes["advance"]) == (2, 1, 1)

    assert calls == [job_id, "S"]
    head = op_of(ledger, head_key(job_id))
    assert (head.status, head.attempt) == (OP_SUCCEEDED, 1)
    second = op_of(ledger, op_key("S", job_id))
    assert (second.status, second.attempt) == (OP_SUCCEEDED, 1)
    assert job_of(ledger, job_id).state is JobState.STREAMING


def test_an_effect_whose_lease_was_lost_meanwhile_records_nothing(
    ledger: Ledger, clock: ManualClock
) -> None:
    job_id = plan(ledger)
    lease = take(ledger, "w1", ttl_s=5.0)
    steps = JobSteps(ledger, lease)
    head_effect(steps, [])
    clock.advance(10.0)
    take(ledger, "w2")  # the lease expired and another worker took the job

    with pytest.raises(LeaseLost):
        second_effect(steps, [])

    assert op_of(ledger, head_key(job_id)).status == OP_IN_PROGRESS  # w2's to take over
    assert op_or_none(ledger, op_key("S", job_id)) is None


def test_an_effect_whose_next_op_is_recorded_already_is_replayed_not_run(
    ledger: Ledger, writes: Counter[str]
) -> None:
    """The one write takes half (HEAD finishes, S exists): it is undone, then S is replayed."""
    job_id = plan(ledger)
    lease = take(ledger, "w1")
    calls: list[str] = []
    run_effect(ledger, lease, kind="S", opkey=op_key("S", job_id), effect_fn=lambda: {"bytes": 3})
    with JobSteps(ledger, lease) as steps:
        head_effect(steps, calls)
        writes.clear()
        assert second_effect(steps, calls) == {"bytes": 3}
        assert (writes["record"], writes["list_for_job"]) == (2, 1)  # tried, rolled back, redone

    assert calls == [job_id]  # S was not run again
    head = op_of(ledger, head_key(job_id))
    assert (head.status, head.attempt) == (OP_SUCCEEDED, 1)
    assert job_of(ledger, job_id).state is JobState.STREAMING


def test_no_effect_starts_after_a_move_that_ended_the_job(ledger: Ledger) -> None:
    job_id = plan(ledger)
    lease = take(ledger, "w1")
    walk(ledger, lease, JobState.INDEXED)
    calls: list[str] = []

    def finishing_then_another() -> None:
        with JobSteps(ledger, lease) as steps:
            steps.effect(
                kind="A", opkey=op_key("A", job_id), effect_fn=lambda: {"a": 1},
                advance_to=JobState.DEDUPED, allowed_from={JobState.INDEXED},
            )  # fmt: skip
            second_effect(steps, calls)  # A's move ends the job and its lease: S may not start

    with pytest.raises(DocstokgError):
        finishing_then_another()

    assert calls == []
    assert job_of(ledger, job_id).state is JobState.DEDUPED
    assert op_of(ledger, op_key("A", job_id)).status == OP_SUCCEEDED
    assert op_or_none(ledger, op_key("S", job_id)) is None


def test_a_next_job_taken_over_part_way_is_claimed_by_a_turn_read_first(
    ledger: Ledger, clock: ManualClock, writes: Counter[str]
) -> None:
    """Its HEAD is recorded already: the one write cannot start it, and nothing half-done stays."""
    older, newer = plan(ledger, 1), plan(ledger, 2)
    dead = take(ledger, "dead", ttl_s=5.0)
    current = take(ledger, "w1")
    assert (dead.job_id, current.job_id) == (older, newer)
    with JobSteps(ledger, dead) as first:
        head_effect(first, [])
    clock.advance(10.0)  # the dead holder's lease expires; w1's does not
    runs: Counter[str] = Counter()
    step = counted_step("S1", newer, JobState.HEAD_DONE, JobState.LEASED, runs)
    writes.clear()

    steps = JobSteps(ledger, current)
    steps.ledger_steps(step, then_claim=NextClaim("w1", TTL, HEAD))

    assert (writes["record"], writes["list_for_job"]) == (2, 1)  # tried in one write, then again
    following = steps.next_job
    assert following is not None
    assert (following.lease.job_id, following.lease.epoch) == (older, 2)
    calls: list[str] = []
    with following:
        assert head_effect(following, calls) == {"status": 200}
    assert calls == []  # replayed: the claim did not pretend to start it
    assert op_of(ledger, head_key(older)).attempt == 1
    assert op_of(ledger, op_key("S1", newer)).status == OP_SUCCEEDED
    assert job_of(ledger, newer).state is JobState.HEAD_DONE


def test_a_new_step_op_never_takes_over_an_op_that_exists(
    ledger: Ledger, clock: ManualClock
) -> None:
    """An abandoned op of the step: the assumed turn's insert leaves it; read, it is restarted."""
    job_id = plan(ledger)
    lease = take(ledger, "w1")
    walk(ledger, lease, JobState.HEAD_DONE)
    key = op_key("S1", job_id)
    with ledger.unit_of_work() as uow:
        assert uow.ops.start(lease, op_key=key, op_type="S1", now=uow.now())
        uow.commit()
    clock.advance(100.0)  # the lease expired and a cleanup abandoned the op ...
    with ledger.unit_of_work() as uow:
        assert uow.ops.abandon_stale(now=uow.now(), threshold_s=60.0, error="stale") == 1
        assert uow.jobs.renew(lease, ttl_s=TTL, now=uow.now()) is not None  # ... then renewed
        uow.commit()
    runs: Counter[str] = Counter()

    JobSteps(ledger, lease).ledger_steps(counted_step("S1", job_id, JobState.STREAMING,
                                                      JobState.HEAD_DONE, runs))  # fmt: skip

    op = op_of(ledger, key)
    assert (op.status, op.attempt, op.error, op.duration_s) == (OP_SUCCEEDED, 2, None, 0.0)
    assert op.started_at == clock.now


def test_record_refuses_one_op_twice_and_writes_only_starts_on_both_backends(
    ledger: Ledger,
) -> None:
    job_id = plan(ledger)
    lease = take(ledger, "w1")
    first, second = op_key("A", job_id), op_key("B", job_id)
    with ledger.unit_of_work() as uow:
        twice = [OpWrite.start(lease, first, "A"), OpWrite.start(lease, first, "A")]
        assert uow.ops.record(twice, now=uow.now()) is False
        both = [OpWrite.start(lease, first, "A"), OpWrite.start(lease, second, "B")]
        assert uow.ops.record(both, now=uow.now()) is True  # no result in any row
        uow.commit()
    assert op_of(ledger, first).status == op_of(ledger, second).status == OP_IN_PROGRESS
    assert op_of(ledger, first).finished_at is None


def test_a_recorded_step_whose_write_would_now_fail_is_still_replayed(ledger: Ledger) -> None:
    """An assumed turn runs the write before it knows; its error must not hide the replay."""
    job_id = plan(ledger)
    lease = take(ledger, "w1")
    walk(ledger, lease, JobState.HEAD_DONE)
    calls: list[int] = []

    def write_once(uow: UnitOfWork, now: float) -> dict[str, Any]:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("this write must not be needed twice")
        return {"once": True}

    step = LedgerStep("ONCE", op_key("ONCE", job_id), write_once, JobState.STREAMING,
                      frozenset({JobState.HEAD_DONE}))  # fmt: skip
    assert JobSteps(ledger, lease).ledger_steps(step) == [{"once": True}]

    assert JobSteps(ledger, lease).ledger_steps(step) == [{"once": True}]  # replayed
    assert job_of(ledger, job_id).state is JobState.STREAMING


# --- what a hostile review found: each must hold through the public API ------------------


def test_the_same_op_asked_twice_of_one_holder_is_run_once_and_replayed(ledger: Ledger) -> None:
    job_id = plan(ledger)
    steps = JobSteps(ledger, take(ledger, "w1"))
    calls: list[int] = []

    def count() -> dict[str, Any]:
        calls.append(1)
        return {"n": len(calls)}

    key = op_key("HEAD", job_id)
    assert steps.effect(kind="HEAD", opkey=key, effect_fn=count) == {"n": 1}
    assert steps.effect(kind="HEAD", opkey=key, effect_fn=count) == {"n": 1}  # replayed
    steps.flush()
    assert calls == [1]
    assert op_of(ledger, key).result_json == '{"n":1}'


def test_a_failed_effect_asked_again_after_a_takeover_is_refused_before_it_runs(
    ledger: Ledger, clock: ManualClock
) -> None:
    job_id = plan(ledger)
    steps = JobSteps(ledger, take(ledger, "w1", ttl_s=5.0))
    key = op_key("HEAD", job_id)
    runs: list[str] = []

    def hiccup() -> dict[str, Any]:
        runs.append("first")
        raise OSError("disk hiccup")

    with pytest.raises(OSError, match="disk hiccup"):
        steps.effect(kind="HEAD", opkey=key, effect_fn=hiccup)
    clock.advance(10.0)
    take(ledger, "w2")  # the lease expired and another worker took the job

    def again() -> dict[str, Any]:
        runs.append("again")
        return {}

    with pytest.raises(LeaseLost):
        steps.effect(kind="HEAD", opkey=key, effect_fn=again)
    assert runs == ["first"]


def test_a_failed_effect_asked_again_under_the_same_lease_runs_again_and_is_recorded(
    ledger: Ledger,
) -> None:
    job_id = plan(ledger)
    key = op_key("HEAD", job_id)
    with JobSteps(ledger, take(ledger, "w1")) as steps:
        with pytest.raises(OSError, match="disk hiccup"):
            steps.effect(kind="HEAD", opkey=key, effect_fn=_raise_oserror)
        assert head_effect(steps, []) == {"status": 200}
    op = op_of(ledger, key)
    assert (op.status, op.attempt) == (OP_SUCCEEDED, 2)
    assert job_of(ledger, job_id).state is JobState.HEAD_DONE


def _raise_oserror() -> dict[str, Any]:
    raise OSError("disk hiccup")


def test_a_waiting_result_another_holder_recorded_meanwhile_is_a_lost_lease(
    ledger: Ledger, clock: ManualClock
) -> None:
    job_id = plan(ledger)
    key = op_key("PROBE", job_id)
    steps = JobSteps(ledger, take(ledger, "w1", ttl_s=5.0))
    steps.effect(kind="PROBE", opkey=key, effect_fn=lambda: {"by": "w1"})
    clock.advance(10.0)
    run_effect(ledger, take(ledger, "w2"), kind="PROBE", opkey=key, effect_fn=lambda: {"by": "w2"})

    with pytest.raises(LeaseLost):
        steps.flush()
    assert op_of(ledger, key).result_json == '{"by":"w2"}'


def test_a_replay_after_the_lease_was_lost_is_refused_though_it_was_read_before(
    ledger: Ledger, clock: ManualClock
) -> None:
    job_id = plan(ledger)
    first = take(ledger, "w1", ttl_s=5.0)
    key = op_key("HEAD", job_id)
    run_effect(ledger, first, kind="HEAD", opkey=key, effect_fn=lambda: {"h": 1})
    clock.advance(10.0)
    steps = JobSteps(ledger, take(ledger, "w2", ttl_s=5.0))
    assert steps.effect(kind="HEAD", opkey=key, effect_fn=lambda: {"h": 2}) == {"h": 1}
    clock.advance(10.0)
    take(ledger, "w3")

    with pytest.raises(LeaseLost):
        steps.effect(kind="HEAD", opkey=key, effect_fn=lambda: {"h": 3})


def test_a_reopened_step_is_run_again_not_replayed_from_memory(ledger: Ledger) -> None:
    job_id = plan(ledger)
    lease = take(ledger, "w1")
    key = op_key("STREAM", job_id)
    run_effect(ledger, lease, kind="STREAM", opkey=key, effect_fn=lambda: {"part": "v1"})
    steps = JobSteps(ledger, lease)
    assert steps.effect(kind="STREAM", opkey=key, effect_fn=lambda: {"part": "v2"}) == {
        "part": "v1"
    }
    assert redo_effect(ledger, lease, opkey=key, reason="the staged file vanished")

    assert steps.effect(kind="STREAM", opkey=key, effect_fn=lambda: {"part": "v3"}) == {
        "part": "v3"
    }
    steps.flush()
    assert op_of(ledger, key).result_json == '{"part":"v3"}'


@pytest.mark.parametrize("target", ["FAILED", "LEASED"])
def test_no_step_moves_its_job_to_failed_or_leased(ledger: Ledger, target: str) -> None:
    """A failure goes through fail_job (an attempt, the lease ended, a backoff); LEASED, a claim."""
    job_id = plan(ledger)
    lease = take(ledger, "w1")
    with pytest.raises(InvalidTransition, match="fail_job"):
        run_effect(ledger, lease, kind="X", opkey=op_key("X", job_id), effect_fn=lambda: {},
                   advance_to=target)  # fmt: skip
    with pytest.raises(InvalidTransition, match="fail_job"):
        JobSteps(ledger, lease).ledger_steps(
            LedgerStep(
                "Y",
                op_key("Y", job_id),
                note,
                lambda _: JobState(target),
                frozenset({JobState.LEASED}),
            )
        )
    assert job_of(ledger, job_id).state is JobState.LEASED
