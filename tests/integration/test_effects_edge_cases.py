"""run_effect at the edges that the defect list does not name."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from docstokg import (
    JobState,
    LeaseLost,
    Ledger,
    advance_state,
    cleanup_stale_ops,
    get_effect_result,
    lease_next_job,
    op_key,
    plan_job_if_absent,
    reconcile_jobs,
    record_job_result,
    release_lease,
    renew_lease,
    run_effect,
)
from tests.conftest import ManualClock

TTL = 30.0


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
    with ledger.unit_of_work(read_only=True) as uow:
        job = uow.jobs.get(lease.job_id)
    assert job is not None
    assert job.state is JobState.HEAD_DONE  # the result and its transition, one commit


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
    with ledger.unit_of_work(read_only=True) as uow:
        job = uow.jobs.get(lease.job_id)
    assert job is not None
    assert (job.state, job.final_path, job.lease_epoch) == (JobState.FAILED, None, lease.epoch + 1)
    # The last holder is fenced out for good, even though nobody took the job yet.
    with pytest.raises(LeaseLost):
        renew_lease(ledger, lease, ttl_s=TTL)
    again = lease_next_job(ledger, owner="w2", ttl_s=TTL)
    assert again is not None
    assert (again.job_id, again.state) == (lease.job_id, JobState.LEASED)
