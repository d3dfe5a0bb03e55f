"""run_effect at the edges that the defect list does not name."""

from __future__ import annotations

import types

from docstokg import (
    JobState,
    Ledger,
    cleanup_stale_ops,
    get_effect_result,
    lease_next_job,
    op_key,
    plan_job_if_absent,
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
