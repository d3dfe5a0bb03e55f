"""The documented behaviour of each lifecycle service, on SQLite and PostgreSQL.

Time moves only through the ``clock`` fixture; a worker "dies" by raising
:class:`WorkerDied`, a ``BaseException`` the ledger does not intercept.
"""

from __future__ import annotations

import math
import os
import time
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import ClauseElement, Connection, func, select

from docstokg import (
    InvalidTransition,
    JobSpec,
    JobState,
    Lease,
    LeaseLost,
    Ledger,
    OpRecord,
    advance_state,
    cleanup_stale_leases,
    cleanup_stale_ops,
    get_effect_result,
    job_key,
    lease_next_job,
    op_key,
    plan_job_if_absent,
    plan_jobs,
    reconcile_jobs,
    record_job_result,
    release_lease,
    renew_lease,
    run_effect,
)
from docstokg.errors import ConfigurationError
from docstokg.keys import job_id_for
from docstokg.ledger import statements
from docstokg.ledger.models import jobs_table
from docstokg.services import dedupe_job, index_job
from docstokg.services.content import StoredContent
from tests.conftest import ManualClock
from tests.dbtools import execute_sql, scratch_connection
from tests.lifecycle import (
    PATH_FROM_LEASED,
    TTL,
    WorkerDied,
    job_of,
    op_of,
    plan,
    take,
    triple,
    walk,
)

NON_TERMINAL_HELD_STATES = list(PATH_FROM_LEASED)
SHA = "cd" * 32


# --- helpers ----------------------------------------------------------------------------


def ops_of(ledger: Ledger, job_id: str) -> list[OpRecord]:
    with ledger.unit_of_work(read_only=True) as uow:
        return list(uow.ops.list_for_job(job_id))


def job_count(ledger: Ledger) -> int:
    with ledger.unit_of_work(read_only=True) as uow:
        return sum(uow.jobs.count_by_state().values())


def counting(result: dict[str, Any], calls: list[int]) -> Callable[[], dict[str, Any]]:
    """An effect that records each time it runs in ``calls``."""

    def effect() -> dict[str, Any]:
        calls.append(len(calls) + 1)
        return result

    return effect


def dies() -> dict[str, Any]:
    raise WorkerDied


def start_and_die(ledger: Ledger, lease: Lease, key: str) -> None:
    """The op is written IN_PROGRESS, then its worker is killed."""
    with pytest.raises(WorkerDied):
        run_effect(ledger, lease, kind="STREAM", opkey=key, effect_fn=dies)
    assert op_of(ledger, key).status == "IN_PROGRESS"


# --- planning ---------------------------------------------------------------------------


def test_plan_job_if_absent_returns_the_same_id_for_the_same_triple(
    ledger: Ledger, clock: ManualClock
) -> None:
    first = plan(ledger, 1)
    clock.advance(60)
    assert plan(ledger, 1) == first
    assert plan(ledger, 2) != first
    other_url = plan_job_if_absent(
        ledger, work_id="W1", artifact_id="pdf", canonical_url="https://mirror.example.org/1.pdf"
    )
    assert other_url not in {first, plan(ledger, 2)}
    assert job_count(ledger) == 3
    job = job_of(ledger, first)
    assert (job.work_id, job.artifact_id, job.canonical_url) == triple(1)
    assert job.state is JobState.PLANNED
    assert job.created_at == clock.now - 60  # the repeat changed nothing
    assert job.idempotency_key == job_key(*triple(1))


def test_plan_jobs_takes_specs_tuples_and_mappings_and_counts_new_rows(ledger: Ledger) -> None:
    w0, a0, u0 = triple(0)
    rows: list[Any] = [
        JobSpec(w0, a0, u0),
        triple(1),
        {"work_id": "W2", "artifact_id": "pdf", "canonical_url": "https://example.org/2.pdf"},
        triple(1),  # a repeat within the same call
    ]
    assert plan_jobs(ledger, rows) == 3
    assert plan_jobs(ledger, rows) == 0
    assert plan_jobs(ledger, [triple(2), triple(3), JobSpec(*triple(4))]) == 2
    assert plan_jobs(ledger, []) == 0
    assert job_count(ledger) == 5
    # The ids are the ones plan_job_if_absent knows, whatever form the row had.
    for n in range(5):
        job_id = plan(ledger, n)
        assert job_id == job_id_for(job_key(*triple(n)))
        assert job_of(ledger, job_id).state is JobState.PLANNED
    assert job_count(ledger) == 5


@pytest.mark.parametrize("missing", ["work_id", "artifact_id", "canonical_url"])
def test_plan_jobs_names_the_key_a_mapping_lacks(ledger: Ledger, missing: str) -> None:
    row = {"work_id": "W1", "artifact_id": "pdf", "canonical_url": "https://example.org/1.pdf"}
    del row[missing]
    with pytest.raises(ConfigurationError, match=missing):
        plan_jobs(ledger, [row])
    assert issubclass(ConfigurationError, ValueError)


# --- leases -----------------------------------------------------------------------------


def test_lease_next_job_is_fifo_by_creation_and_leases_planned_jobs(
    ledger: Ledger, clock: ManualClock
) -> None:
    # Planned in descending job_id order, so FIFO by creation is not id order.
    numbers = sorted(range(6), key=lambda n: job_id_for(job_key(*triple(n))), reverse=True)
    created = []
    for n in numbers:
        created.append(plan(ledger, n))
        clock.advance(1)
    assert created == sorted(created, reverse=True)

    granted = [take(ledger, f"worker-{n}") for n in range(len(created))]
    assert [lease.job_id for lease in granted] == created
    assert lease_next_job(ledger, owner="worker-x", ttl_s=TTL) is None
    for n, lease in zip(numbers, granted, strict=True):
        assert lease.state is JobState.LEASED
        assert lease.epoch == 1
        assert lease.lease_until == clock.now + TTL
        assert (lease.work_id, lease.artifact_id, lease.canonical_url) == triple(n)
        job = job_of(ledger, lease.job_id)
        assert (job.state, job.lease_owner, job.lease_epoch, job.lease_until) == (
            JobState.LEASED,
            lease.owner,
            1,
            lease.lease_until,
        )


def test_lease_next_job_returns_none_when_nothing_is_claimable(
    ledger: Ledger, clock: ManualClock
) -> None:
    assert lease_next_job(ledger, owner="worker-a", ttl_s=TTL) is None  # empty ledger
    job_id = plan(ledger)
    lease = take(ledger, "worker-a")
    assert lease_next_job(ledger, owner="worker-b", ttl_s=TTL) is None  # held
    walk(ledger, lease, JobState.INDEXED)
    assert advance_state(ledger, lease, to_state=JobState.DEDUPED, allowed_from=[JobState.INDEXED])
    assert not release_lease(ledger, lease)  # finishing the job ended its lease
    assert job_of(ledger, job_id).lease_owner is None
    clock.advance(10 * TTL)
    assert lease_next_job(ledger, owner="worker-b", ttl_s=TTL) is None  # finished
    assert job_of(ledger, job_id).state is JobState.DEDUPED


def test_each_grant_increments_the_epoch(ledger: Ledger, clock: ManualClock) -> None:
    job_id = plan(ledger)
    epochs = []
    lease = take(ledger, "worker-a")
    epochs.append(lease.epoch)
    assert release_lease(ledger, lease)
    lease = take(ledger, "worker-b")
    epochs.append(lease.epoch)
    clock.advance(TTL + 1)  # expired, not released
    lease = take(ledger, "worker-c")
    epochs.append(lease.epoch)
    assert epochs == [1, 2, 3]
    assert lease.job_id == job_id
    assert job_of(ledger, job_id).lease_epoch == 3


def test_two_owners_never_hold_the_same_job(ledger: Ledger) -> None:
    assert plan_jobs(ledger, [triple(n) for n in range(40)]) == 40

    def drain(owner: str) -> list[Lease]:
        leases = []
        while (lease := lease_next_job(ledger, owner=owner, ttl_s=TTL)) is not None:
            leases.append(lease)
        return leases

    with ThreadPoolExecutor(max_workers=4) as pool:
        per_owner = list(pool.map(drain, [f"worker-{n}" for n in range(4)]))
    granted = [lease for leases in per_owner for lease in leases]
    assert len(granted) == 40
    assert len({lease.job_id for lease in granted}) == 40  # no job granted twice
    for lease in granted:
        job = job_of(ledger, lease.job_id)
        assert (job.lease_owner, job.lease_epoch) == (lease.owner, 1)


@pytest.mark.parametrize(
    ("owner", "ttl_s"),
    [("worker-a", 0.0), ("worker-a", -5.0), ("worker-a", math.nan), ("", TTL)],
)
def test_lease_refuses_an_empty_owner_or_a_ttl_that_is_not_positive(
    ledger: Ledger, owner: str, ttl_s: float
) -> None:
    job_id = plan(ledger)
    with pytest.raises(ConfigurationError):
        lease_next_job(ledger, owner=owner, ttl_s=ttl_s)
    job = job_of(ledger, job_id)
    assert (job.state, job.lease_owner, job.lease_epoch) == (JobState.PLANNED, None, 0)
    if owner:  # renewing with such a TTL is refused too, and changes nothing
        lease = take(ledger, owner)
        with pytest.raises(ConfigurationError):
            renew_lease(ledger, lease, ttl_s=ttl_s)
        assert job_of(ledger, job_id).lease_until == lease.lease_until


def test_renew_lease_returns_a_lease_that_ends_later(ledger: Ledger, clock: ManualClock) -> None:
    job_id = plan(ledger)
    lease = take(ledger, "worker-a")
    clock.advance(20)
    renewed = renew_lease(ledger, lease, ttl_s=60)
    assert renewed.lease_until == clock.now + 60
    assert renewed.lease_until > lease.lease_until
    assert (renewed.job_id, renewed.owner, renewed.epoch, renewed.state) == (
        lease.job_id,
        lease.owner,
        lease.epoch,
        lease.state,
    )
    assert job_of(ledger, job_id).lease_until == renewed.lease_until

    # Expired but taken by nobody: still renewable (no one can have written since).
    clock.advance(61)
    revived = renew_lease(ledger, renewed, ttl_s=TTL)
    assert revived.lease_until == clock.now + TTL
    assert advance_state(
        ledger, revived, to_state=JobState.HEAD_DONE, allowed_from=[JobState.LEASED]
    )
    # Cleared by a cleanup: lost.
    clock.advance(TTL + 1)
    assert cleanup_stale_leases(ledger) == 1
    with pytest.raises(LeaseLost):
        renew_lease(ledger, revived, ttl_s=TTL)

    # A finished job's lease is not renewed: its holder's heartbeat raced the
    # last commit, so the lease comes back as it was and the job keeps no lease.
    finished = take(ledger, "worker-b")
    assert (finished.job_id, finished.state) == (job_id, JobState.HEAD_DONE)
    for origin, target in [
        (JobState.HEAD_DONE, JobState.STREAMING),
        (JobState.STREAMING, JobState.FINALIZED),
        (JobState.FINALIZED, JobState.INDEXED),
        (JobState.INDEXED, JobState.DEDUPED),
    ]:
        assert advance_state(ledger, finished, to_state=target, allowed_from=[origin])
    assert renew_lease(ledger, finished, ttl_s=TTL) == finished
    assert job_of(ledger, job_id).lease_until is None


def test_release_lease_lets_someone_else_lease_the_job_at_once(ledger: Ledger) -> None:
    job_id = plan(ledger)
    first = take(ledger, "worker-a")
    walk(ledger, first, JobState.HEAD_DONE)
    assert release_lease(ledger, first) is True
    released = job_of(ledger, job_id)
    assert (released.state, released.lease_owner, released.lease_until) == (
        JobState.HEAD_DONE,
        None,
        None,
    )
    second = take(ledger, "worker-b")  # no clock movement needed
    assert (second.job_id, second.state, second.epoch) == (
        job_id,
        JobState.HEAD_DONE,
        first.epoch + 1,
    )
    assert release_lease(ledger, first) is False  # fenced
    with pytest.raises(LeaseLost):
        advance_state(ledger, first, to_state=JobState.STREAMING, allowed_from=[JobState.HEAD_DONE])
    assert job_of(ledger, job_id).lease_owner == "worker-b"


# --- transitions ------------------------------------------------------------------------


def test_advance_state_moves_and_reports_replays(ledger: Ledger, clock: ManualClock) -> None:
    job_id = plan(ledger)
    lease = take(ledger, "worker-a")
    clock.advance(3)
    assert advance_state(ledger, lease, to_state=JobState.HEAD_DONE, allowed_from=[JobState.LEASED])
    job = job_of(ledger, job_id)
    assert (job.state, job.updated_at) == (JobState.HEAD_DONE, clock.now)
    assert advance_state(
        ledger,
        lease,
        to_state=JobState.STREAMING,
        allowed_from=[JobState.HEAD_DONE, JobState.RESUME_OK],
    )
    clock.advance(3)
    # Replays after a crash: the job already is at or past the target.
    assert not advance_state(
        ledger, lease, to_state=JobState.STREAMING, allowed_from=[JobState.HEAD_DONE]
    )
    assert not advance_state(
        ledger, lease, to_state=JobState.HEAD_DONE, allowed_from=[JobState.LEASED]
    )
    assert not advance_state(
        ledger, lease, to_state=JobState.RESUME_OK, allowed_from=[JobState.HEAD_DONE]
    )
    job = job_of(ledger, job_id)
    assert (job.state, job.updated_at) == (JobState.STREAMING, clock.now - 3)


def test_advance_state_refuses_moves_the_table_or_the_job_does_not_allow(
    ledger: Ledger,
) -> None:
    assert issubclass(InvalidTransition, RuntimeError)
    job_id = plan(ledger)
    lease = take(ledger, "worker-a")
    before = job_of(ledger, job_id)
    # Jumps that are not in the transition table.
    for to_state, origin in [
        (JobState.FINALIZED, JobState.LEASED),
        (JobState.DEDUPED, JobState.STREAMING),
        (JobState.LEASED, JobState.HEAD_DONE),
        (JobState.FAILED, JobState.DEDUPED),
        (JobState.HEAD_DONE, JobState.PLANNED),
    ]:
        with pytest.raises(InvalidTransition):
            advance_state(ledger, lease, to_state=to_state, allowed_from=[origin])
    # A move the table has, but the job is not in the state it starts from.
    with pytest.raises(RuntimeError):
        advance_state(ledger, lease, to_state=JobState.STREAMING, allowed_from=[JobState.HEAD_DONE])
    assert job_of(ledger, job_id) == before
    # Neither a replay (the job is not past FINALIZED) nor a move from its state.
    walk(ledger, lease, JobState.HEAD_DONE)
    with pytest.raises(InvalidTransition):
        advance_state(ledger, lease, to_state=JobState.FINALIZED, allowed_from=[JobState.STREAMING])
    assert job_of(ledger, job_id).state is JobState.HEAD_DONE


@pytest.mark.parametrize("origin", NON_TERMINAL_HELD_STATES)
def test_failed_may_be_entered_from_any_non_terminal_state(
    ledger: Ledger, origin: JobState
) -> None:
    job_id = plan(ledger)
    lease = take(ledger, "worker-a")
    walk(ledger, lease, origin)
    assert advance_state(ledger, lease, to_state=JobState.FAILED, allowed_from=[origin]) is True
    assert job_of(ledger, job_id).state is JobState.FAILED


# --- effects ----------------------------------------------------------------------------


def test_run_effect_runs_once_then_replays(ledger: Ledger, clock: ManualClock) -> None:
    job_id = plan(ledger)
    lease = take(ledger, "worker-a")
    key = op_key("HEAD", job_id)
    assert get_effect_result(ledger, key) is None
    calls: list[int] = []
    result = {"status": 200, "etag": "abc", "sizes": [1, 2, 3], "nested": {"ok": True}}

    first = run_effect(ledger, lease, kind="HEAD", opkey=key, effect_fn=counting(result, calls))
    assert first == result
    assert calls == [1]
    other = counting({"other": 1}, calls)
    assert run_effect(ledger, lease, kind="HEAD", opkey=key, effect_fn=other) == result
    assert calls == [1]  # replayed without calling
    assert get_effect_result(ledger, key) == result
    assert get_effect_result(ledger, op_key("HEAD", job_id, attempt=2)) is None
    op = op_of(ledger, key)
    assert (op.status, op.op_type, op.job_id, op.attempt, op.lease_epoch) == (
        "SUCCEEDED",
        "HEAD",
        job_id,
        1,
        lease.epoch,
    )

    # Recorded once for good: the next holder replays it too.
    clock.advance(TTL + 1)
    successor = take(ledger, "worker-b")
    assert run_effect(ledger, successor, kind="HEAD", opkey=key, effect_fn=other) == result
    assert calls == [1]


def test_any_mapping_is_a_valid_result(ledger: Ledger) -> None:
    plan_job_if_absent(ledger, work_id="W", artifact_id="A", canonical_url="https://e.org/a")
    lease = lease_next_job(ledger, owner="w", ttl_s=TTL)
    assert lease is not None
    result = run_effect(
        ledger,
        lease,
        kind="HEAD",
        opkey=op_key("HEAD", lease.job_id),
        effect_fn=lambda: types.MappingProxyType({"status": 200}),
        advance_to=JobState.HEAD_DONE,
        allowed_from=[JobState.LEASED],
    )
    assert result == {"status": 200}
    job = job_of(ledger, lease.job_id)
    assert job.state is JobState.HEAD_DONE  # the result and its transition, one commit


def test_a_late_holder_still_records_its_result_after_a_cleanup_gave_up_on_it(
    ledger: Ledger, clock: ManualClock
) -> None:
    plan_job_if_absent(ledger, work_id="W", artifact_id="A", canonical_url="https://e.org/a")
    lease = lease_next_job(ledger, owner="slow", ttl_s=TTL)
    assert lease is not None
    key = op_key("STREAM", lease.job_id)

    def slow_stream() -> dict[str, object]:
        # The holder misses its renewals; a cleanup abandons the op meanwhile...
        clock.advance(TTL + 600)
        assert cleanup_stale_ops(ledger, abandoned_threshold_s=600) == 1
        # ...but nobody took the job, so the holder may renew and carry on.
        renew_lease(ledger, lease, ttl_s=TTL)
        return {"bytes": 10}

    assert run_effect(ledger, lease, kind="STREAM", opkey=key, effect_fn=slow_stream) == {
        "bytes": 10
    }
    assert get_effect_result(ledger, key) == {"bytes": 10}


# --- maintenance ------------------------------------------------------------------------


def test_cleanup_stale_leases_clears_only_expired_leases_and_keeps_states(
    ledger: Ledger, clock: ManualClock
) -> None:
    for n in range(4):
        plan(ledger, n)
    expiring = take(ledger, "worker-a", ttl_s=10)
    walk(ledger, expiring, JobState.STREAMING)
    also_expiring = take(ledger, "worker-b", ttl_s=10)
    live = take(ledger, "worker-c", ttl_s=100)
    clock.advance(11)

    assert cleanup_stale_leases(ledger) == 2
    for lease, state in [(expiring, JobState.STREAMING), (also_expiring, JobState.LEASED)]:
        job = job_of(ledger, lease.job_id)
        assert (job.state, job.lease_owner, job.lease_until) == (state, None, None)
        assert job.lease_epoch == lease.epoch
    kept = job_of(ledger, live.job_id)
    assert (kept.lease_owner, kept.lease_until) == ("worker-c", live.lease_until)
    assert cleanup_stale_leases(ledger) == 0
    # ``now`` given explicitly.
    assert cleanup_stale_leases(ledger, now=live.lease_until + 1) == 1
    assert job_of(ledger, live.job_id).lease_owner is None


def test_cleanup_stale_ops_abandons_only_ops_no_live_holder_owns(
    ledger: Ledger, clock: ManualClock
) -> None:
    for n in range(3):
        plan(ledger, n)
    dead = take(ledger, "worker-a")
    alive = take(ledger, "worker-b")
    young = take(ledger, "worker-c", ttl_s=1_000)
    dead_key, alive_key, young_key = (
        op_key("STREAM", lease.job_id) for lease in (dead, alive, young)
    )
    start_and_die(ledger, dead, dead_key)
    start_and_die(ledger, alive, alive_key)  # its holder lives on and keeps renewing
    alive = renew_lease(ledger, alive, ttl_s=1_000)
    clock.advance(650)
    start_and_die(ledger, young, young_key)
    assert release_lease(ledger, young)
    clock.advance(50)

    assert cleanup_stale_ops(ledger) == 1  # default threshold: 600 s
    abandoned = op_of(ledger, dead_key)
    assert abandoned.status == "ABANDONED"
    assert abandoned.error is not None
    assert op_of(ledger, alive_key).status == "IN_PROGRESS"  # held by a live lease
    assert op_of(ledger, young_key).status == "IN_PROGRESS"  # younger than the threshold

    # A smaller threshold, with ``now`` given: the young op goes, the held one stays.
    assert cleanup_stale_ops(ledger, now=clock.now, abandoned_threshold_s=10) == 1
    assert op_of(ledger, young_key).status == "ABANDONED"
    assert op_of(ledger, alive_key).status == "IN_PROGRESS"

    # The next holder of the dead worker's job takes its abandoned op over.
    successor = next(
        lease
        for lease in iter(lambda: lease_next_job(ledger, owner="worker-d", ttl_s=TTL), None)
        if lease.job_id == dead.job_id
    )
    calls: list[int] = []
    assert run_effect(
        ledger, successor, kind="STREAM", opkey=dead_key, effect_fn=counting({"bytes": 9}, calls)
    ) == {"bytes": 9}
    assert calls == [1]
    taken_over = op_of(ledger, dead_key)
    assert (taken_over.status, taken_over.attempt, taken_over.lease_epoch) == (
        "SUCCEEDED",
        2,
        successor.epoch,
    )


def _finalize(ledger: Ledger, lease: Lease, final_path: str, calls: list[int]) -> str:
    """Run the job's effects, record its file and leave it FINALIZED; returns its op key."""
    key = op_key("STREAM", lease.job_id)
    run_effect(ledger, lease, kind="STREAM", opkey=key, effect_fn=counting({"bytes": 7}, calls))
    walk(ledger, lease, JobState.FINALIZED)
    with ledger.unit_of_work() as uow:
        assert uow.jobs.record_result(
            lease, sha256="ab" * 32, final_path=final_path, size_bytes=7, now=uow.now()
        )
        uow.commit()
    return key


def test_reconcile_jobs_deletes_orphan_parts_and_requeues_jobs_whose_file_vanished(
    ledger: Ledger, clock: ManualClock, tmp_path: Path
) -> None:
    for n in range(7):
        plan(ledger, n)
    leases = [take(ledger, f"worker-{n}") for n in range(7)]
    gone, indexed_gone, present, busy, part_live, part_old, part_young = leases

    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    calls: list[int] = []
    op_keys = {}
    for lease in (gone, indexed_gone, present, busy):
        path = artifacts / f"{lease.job_id}.pdf"
        path.write_bytes(b"%PDF-1.7")
        op_keys[lease.job_id] = _finalize(ledger, lease, f"artifacts/{lease.job_id}.pdf", calls)
    assert advance_state(
        ledger, indexed_gone, to_state=JobState.INDEXED, allowed_from=[JobState.FINALIZED]
    )
    for lease in (gone, indexed_gone, present, part_old, part_young):
        assert release_lease(ledger, lease)
    (artifacts / f"{gone.job_id}.pdf").unlink()
    (artifacts / f"{indexed_gone.job_id}.pdf").unlink()
    (artifacts / f"{busy.job_id}.pdf").unlink()  # but its holder is still at work

    staging = tmp_path / ".staging"
    staging.mkdir()
    parts = {
        lease.job_id: staging / f"{lease.job_id}.part"
        for lease in (part_live, part_old, part_young)
    }
    ages = {part_live.job_id: 7_200.0, part_old.job_id: 7_200.0, part_young.job_id: 60.0}
    for job_id, part in parts.items():
        part.write_bytes(b"partial")
        stamped = time.time() - ages[job_id]  # files carry the host's clock
        os.utime(part, (stamped, stamped))
    unrelated = staging / "notes.txt"
    unrelated.write_text("not a part file")
    os.utime(unrelated, (time.time() - 7_200, time.time() - 7_200))

    report = reconcile_jobs(ledger, staging, max_age_s=3_600)

    assert report.parts_deleted == [parts[part_old.job_id]]
    assert report.parts_kept_live == [parts[part_live.job_id]]
    assert report.parts_kept_recent == [parts[part_young.job_id]]
    assert not parts[part_old.job_id].exists()
    assert parts[part_live.job_id].exists()
    assert parts[part_young.job_id].exists()
    assert unrelated.exists()

    assert sorted(report.jobs_requeued) == sorted([gone.job_id, indexed_gone.job_id])
    for lease in (gone, indexed_gone):
        requeued = job_of(ledger, lease.job_id)
        assert requeued.state is JobState.FAILED
        assert requeued.last_error is not None
        assert [op.status for op in ops_of(ledger, lease.job_id)] == ["ABANDONED"]
        assert get_effect_result(ledger, op_keys[lease.job_id]) is None
    for lease in (present, busy):
        left_alone = job_of(ledger, lease.job_id)
        assert (left_alone.state, left_alone.final_path) == (
            JobState.FINALIZED,
            f"artifacts/{lease.job_id}.pdf",
        )
        assert get_effect_result(ledger, op_keys[lease.job_id]) == {"bytes": 7}

    # The requeued job is fetched again by the next worker.
    again = next(
        lease
        for lease in iter(lambda: lease_next_job(ledger, owner="worker-z", ttl_s=TTL), None)
        if lease.job_id == gone.job_id
    )
    assert again.state is JobState.LEASED
    assert len(calls) == 4  # one STREAM per finalized job
    run_effect(
        ledger,
        again,
        kind="STREAM",
        opkey=op_keys[gone.job_id],
        effect_fn=counting({"bytes": 7}, calls),
    )
    assert len(calls) == 5  # run again, not replayed
    # A second pass finds nothing more to do.
    second = reconcile_jobs(ledger, staging, max_age_s=3_600)
    assert (second.parts_deleted, second.jobs_requeued) == ([], [])


def test_a_recorded_final_file_that_vanished_is_fetched_again(
    ledger: Ledger, clock: ManualClock, tmp_path: Path
) -> None:
    plan_job_if_absent(ledger, work_id="W", artifact_id="A", canonical_url="https://e.org/a")
    lease = lease_next_job(ledger, owner="w", ttl_s=TTL)
    assert lease is not None
    for before, after in [
        (JobState.LEASED, JobState.HEAD_DONE),
        (JobState.HEAD_DONE, JobState.STREAMING),
        (JobState.STREAMING, JobState.FINALIZED),
    ]:
        assert advance_state(ledger, lease, to_state=after, allowed_from=[before])
    (tmp_path / "artifacts").mkdir()
    stored = tmp_path / "artifacts" / "ab.pdf"
    stored.write_bytes(b"%PDF")
    record_job_result(ledger, lease, sha256="ab" * 32, final_path="artifacts/ab.pdf", size_bytes=4)
    assert release_lease(ledger, lease)

    assert reconcile_jobs(ledger, tmp_path / ".staging").jobs_requeued == []
    stored.unlink()
    assert reconcile_jobs(ledger, tmp_path / ".staging").jobs_requeued == [lease.job_id]
    job = job_of(ledger, lease.job_id)
    assert (job.state, job.final_path, job.lease_epoch) == (JobState.FAILED, None, lease.epoch + 1)
    # The last holder is fenced out for good, even though nobody took the job yet.
    with pytest.raises(LeaseLost):
        renew_lease(ledger, lease, ttl_s=TTL)
    again = lease_next_job(ledger, owner="w2", ttl_s=TTL)
    assert again is not None
    assert (again.job_id, again.state) == (lease.job_id, JobState.LEASED)


def _finalized(ledger: Ledger, n: int, owner: str) -> Lease:
    """Plan job ``n``, take it and walk it to FINALIZED (its STREAM op done)."""
    plan(ledger, n)
    lease = take(ledger, owner)
    run_effect(ledger, lease, kind="STREAM", opkey=op_key("STREAM", lease.job_id),
               effect_fn=lambda: {"bytes": 7})  # fmt: skip
    walk(ledger, lease, JobState.FINALIZED)
    return lease


def test_reconcile_gives_an_exhausted_job_whose_file_vanished_one_attempt_back(
    ledger: Ledger, db_url: str, tmp_path: Path
) -> None:
    """A lost file is not the job's failure: it must be fetched again, whatever its budget.

    The ledger never finishes a job on a spent budget itself, so the row is
    set up behind its back (as a ledger edited by hand, or written by an
    older version, would have it).
    """
    lease = _finalized(ledger, 0, "worker-a")
    stored = tmp_path / "artifacts" / f"{lease.job_id}.pdf"
    stored.parent.mkdir()
    stored.write_bytes(b"%PDF-1.7")
    content = StoredContent(SHA, 8, f"artifacts/{lease.job_id}.pdf", "application/pdf")
    index_job(ledger, lease, content)
    assert release_lease(ledger, lease)
    execute_sql(
        db_url, f"UPDATE artifact_jobs SET attempts = max_attempts WHERE job_id = '{lease.job_id}'"
    )
    stored.unlink()

    report = reconcile_jobs(ledger, tmp_path / ".staging")

    assert report.jobs_requeued == [lease.job_id]
    requeued = job_of(ledger, lease.job_id)
    assert requeued.state is JobState.FAILED
    assert requeued.attempts == requeued.max_attempts - 1
    assert not requeued.exhausted
    again = take(ledger, "worker-b")  # claimable at once: the next worker fetches it again
    assert (again.job_id, again.state) == (lease.job_id, JobState.LEASED)


# --- index and dedupe -----------------------------------------------------------------


def test_a_duplicate_stored_under_another_path_points_at_the_first_copy(ledger: Ledger) -> None:
    """DEDUPE: the duplicate's final_path becomes the stored job's, whatever its own was.

    In a run both paths are the same content-addressed one; a caller of the
    services (or a ledger whose first copy was stored under an older layout)
    can hand DEDUPE another path, and the job must then name the copy that
    is kept, not a file nobody vouches for.
    """
    first = _finalized(ledger, 1, "worker-a")
    first_content = StoredContent(SHA, 7, f"artifacts/{SHA[:2]}/{SHA}", None)
    index_job(ledger, first, first_content)
    assert dedupe_job(ledger, first, first_content) == {
        "outcome": JobState.DEDUPED.value,
        "duplicate_of": None,
    }

    second = _finalized(ledger, 2, "worker-b")
    own_copy = StoredContent(SHA, 7, "legacy/W2.pdf", None)
    index_job(ledger, second, own_copy)
    assert job_of(ledger, second.job_id).final_path == "legacy/W2.pdf"

    assert dedupe_job(ledger, second, own_copy) == {
        "outcome": JobState.SKIPPED_DUPLICATE.value,
        "duplicate_of": first.job_id,
    }
    duplicate = job_of(ledger, second.job_id)
    assert duplicate.state is JobState.SKIPPED_DUPLICATE
    assert duplicate.final_path == first_content.final_path
    assert job_of(ledger, first.job_id).final_path == first_content.final_path


# --- indexes ----------------------------------------------------------------------------


def _explain(connection: Connection, statement: ClauseElement, params: dict[str, Any]) -> str:
    """The planner's plan for ``statement`` with ``params``, as one string."""
    dialect = connection.dialect
    compiled: Any = statement.compile(dialect=dialect)
    values = {**compiled.params, **params}
    order = compiled.positiontup
    arguments: Any = tuple(values[name] for name in order) if order else values
    prefix = "EXPLAIN QUERY PLAN " if dialect.name == "sqlite" else "EXPLAIN "
    rows = connection.exec_driver_sql(prefix + str(compiled), arguments).all()
    return "\n".join(" ".join(str(cell) for cell in row) for row in rows)


def test_claim_and_status_queries_use_an_index(ledger: Ledger, clock: ManualClock) -> None:
    assert plan_jobs(ledger, [triple(n) for n in range(3_000)]) == 3_000
    url = ledger.url.render_as_string(hide_password=False)
    execute_sql(url, "UPDATE artifact_jobs SET state = 'DEDUPED' WHERE work_id LIKE 'W1%'")
    execute_sql(url, "UPDATE artifact_jobs SET state = 'FAILED' WHERE work_id LIKE 'W2_'")
    execute_sql(url, "ANALYZE")

    claim_entry: Any = statements.CLAIM[ledger.dialect]
    # CLAIM may hold the Core statement itself or a wrapper that compiles it once.
    claim: ClauseElement = getattr(claim_entry, "statement", claim_entry)
    by_state = select(jobs_table.c.state, func.count()).group_by(jobs_table.c.state)
    in_state = select(func.count()).where(jobs_table.c.state == JobState.FAILED.value)
    with scratch_connection(url) as connection:
        claim_plan = _explain(connection, claim, {"owner": "w", "ttl_s": TTL, "now": clock.now})
        in_state_plan = _explain(connection, in_state, {})
        by_state_plan = _explain(connection, by_state, {})

    assert "ix_artifact_jobs_claim" in claim_plan, claim_plan
    assert "ix_artifact_jobs_state_updated" in in_state_plan, in_state_plan
    if ledger.dialect == "sqlite":
        # The per-state tally reads the state index alone, not the table.
        assert "COVERING INDEX ix_artifact_jobs_state_updated" in by_state_plan, by_state_plan
        assert "COVERING INDEX ix_artifact_jobs_state_updated" in in_state_plan, in_state_plan
    else:
        # No enable_seqscan = off: the planner picks the indexes on its own.  (A
        # tally of every state reads the whole table, for which a sequential
        # scan is the right plan on PostgreSQL, so it is not asserted here.)
        assert "Index" in in_state_plan, in_state_plan
        assert "Seq Scan" not in claim_plan, claim_plan
    # The claim still works on this table (and takes the oldest unfinished job).
    lease = take(ledger, "worker-a")
    assert job_of(ledger, lease.job_id).state is JobState.LEASED
    with ledger.unit_of_work(read_only=True) as uow:
        counts = uow.jobs.count_by_state()
    assert counts[JobState.FAILED] == 10
    assert sum(counts.values()) == 3_000
