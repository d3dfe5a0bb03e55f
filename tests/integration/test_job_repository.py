"""JobRepository on both backends."""

from __future__ import annotations

import pytest

from docstokg import JobSpec, JobState, Ledger, job_key
from docstokg.keys import job_id_for
from tests.conftest import ManualClock
from tests.factories import JobFactory, bound_to

SPEC = JobSpec("W1", "pdf", "https://example.org/w1.pdf")


def test_plan_creates_one_row_and_returns_the_same_id_on_repeat(
    ledger: Ledger, clock: ManualClock
) -> None:
    with ledger.unit_of_work() as uow:
        first = uow.jobs.plan(SPEC, now=uow.now())
        uow.commit()
    clock.advance(60)
    with ledger.unit_of_work() as uow:
        again = uow.jobs.plan(SPEC, now=uow.now())
        uow.commit()
    assert first.created is True
    assert again.created is False
    assert again.job_id == first.job_id
    with ledger.unit_of_work(read_only=True) as uow:
        counts = uow.jobs.count_by_state()
        job = uow.jobs.get(first.job_id)
    assert sum(counts.values()) == 1
    assert job is not None
    assert job.created_at == job.updated_at == clock.now - 60  # the repeat changed nothing


def test_planned_job_has_the_documented_fields(ledger: Ledger, clock: ManualClock) -> None:
    with ledger.unit_of_work() as uow:
        planned = uow.jobs.plan(SPEC, now=uow.now())
        uow.commit()
    with ledger.unit_of_work(read_only=True) as uow:
        by_id = uow.jobs.get(planned.job_id)
        by_key = uow.jobs.get_by_key(job_key(SPEC.work_id, SPEC.artifact_id, SPEC.canonical_url))
    assert by_id is not None
    assert by_id == by_key
    assert (by_id.work_id, by_id.artifact_id, by_id.canonical_url) == (
        SPEC.work_id,
        SPEC.artifact_id,
        SPEC.canonical_url,
    )
    assert by_id.state is JobState.PLANNED
    assert by_id.lease_owner is None
    assert by_id.lease_until is None
    assert by_id.created_at == clock.now


def test_get_unknown_job_returns_none(ledger: Ledger) -> None:
    with ledger.unit_of_work(read_only=True) as uow:
        assert uow.jobs.get("no-such-job") is None
        assert uow.jobs.get_by_key("0" * 64) is None


def test_plan_finds_a_row_whose_key_an_older_format_computed(ledger: Ledger) -> None:
    # A job adopted from v3 carries the key the hand-rolled ledger computed.
    with ledger.unit_of_work() as uow, bound_to(uow.session):
        legacy = JobFactory(
            work_id=SPEC.work_id,
            artifact_id=SPEC.artifact_id,
            canonical_url=SPEC.canonical_url,
            idempotency_key="legacy-key-format",
        )
        legacy_id = legacy.job_id
        uow.commit()
    with ledger.unit_of_work() as uow:
        planned = uow.jobs.plan(SPEC, now=uow.now())
        uow.commit()
    assert planned == planned.__class__(job_id=legacy_id, created=False)


@pytest.mark.parametrize("batch_size", [7, 2_000])
def test_plan_many_counts_only_new_rows(ledger: Ledger, batch_size: int) -> None:
    specs = [JobSpec(f"W{n}", "pdf", f"https://example.org/{n}.pdf") for n in range(50)]
    with ledger.unit_of_work() as uow:
        assert uow.jobs.plan_many(specs[:20], now=uow.now(), batch_size=batch_size) == 20
        uow.commit()
    with_repeats = specs + specs[10:30]  # repeats of stored rows and within the input
    with ledger.unit_of_work() as uow:
        assert uow.jobs.plan_many(with_repeats, now=uow.now(), batch_size=batch_size) == 30
        uow.commit()
    with ledger.unit_of_work() as uow:
        assert uow.jobs.plan_many(specs, now=uow.now(), batch_size=batch_size) == 0
        assert uow.jobs.count_by_state()[JobState.PLANNED] == 50


def test_plan_many_and_plan_agree_on_job_ids(ledger: Ledger) -> None:
    specs = [JobSpec(f"W{n}", "pdf", f"https://example.org/{n}.pdf") for n in range(5)]
    with ledger.unit_of_work() as uow:
        uow.jobs.plan_many(specs, now=uow.now())
        uow.commit()
    with ledger.unit_of_work() as uow:
        ids = [uow.jobs.plan(spec, now=uow.now()) for spec in specs]
    assert all(not planned.created for planned in ids)
    assert [planned.job_id for planned in ids] == [
        job_id_for(job_key(spec.work_id, spec.artifact_id, spec.canonical_url)) for spec in specs
    ]
    with ledger.unit_of_work(read_only=True) as uow:
        listed = uow.jobs.list_by_state(JobState.PLANNED)
    assert {job.job_id for job in listed} == {planned.job_id for planned in ids}


def test_count_by_state_reports_every_state(ledger: Ledger) -> None:
    with ledger.unit_of_work() as uow, bound_to(uow.session):
        JobFactory.create_batch(3, state=JobState.FAILED.value)
        JobFactory.create_batch(2, state=JobState.DEDUPED.value)
        JobFactory(state=JobState.LEASED.value)
        uow.commit()
    with ledger.unit_of_work(read_only=True) as uow:
        counts = uow.jobs.count_by_state()
    assert set(counts) == set(JobState)
    assert counts[JobState.FAILED] == 3
    assert counts[JobState.DEDUPED] == 2
    assert counts[JobState.LEASED] == 1
    assert counts[JobState.PLANNED] == 0
    assert sum(counts.values()) == 6


def test_list_by_state_is_oldest_first_and_pages(ledger: Ledger) -> None:
    with ledger.unit_of_work() as uow, bound_to(uow.session):
        created = [
            JobFactory(state=JobState.FAILED.value, created_at=1_000.0 + n).job_id
            for n in (5, 1, 3, 2, 4)
        ]
        JobFactory(state=JobState.PLANNED.value, created_at=1.0)
        uow.commit()
    order = [created[i] for i in (1, 3, 2, 4, 0)]
    with ledger.unit_of_work(read_only=True) as uow:
        first_page = uow.jobs.list_by_state(JobState.FAILED, limit=3)
        second_page = uow.jobs.list_by_state(JobState.FAILED, limit=3, offset=3)
    assert [job.job_id for job in first_page] == order[:3]
    assert [job.job_id for job in second_page] == order[3:]
    assert all(job.state is JobState.FAILED for job in first_page + second_page)


def test_state_outside_the_check_constraint_is_refused(ledger: Ledger) -> None:
    from sqlalchemy.exc import IntegrityError

    with ledger.unit_of_work() as uow, bound_to(uow.session), pytest.raises(IntegrityError):
        JobFactory(state="DONE")
