"""OpRepository on both backends."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import delete

from docstokg import JobSpec, Ledger, op_key
from docstokg.errors import JobNotFound
from docstokg.ledger.models import ArtifactJob
from tests.conftest import ManualClock


def _planned_job(ledger: Ledger) -> str:
    with ledger.unit_of_work() as uow:
        job_id = uow.jobs.plan(JobSpec("W1", "pdf", "https://example.org/1"), now=uow.now()).job_id
        uow.commit()
    return job_id


def test_add_get_finish(ledger: Ledger, clock: ManualClock) -> None:
    job_id = _planned_job(ledger)
    key = op_key("HEAD", job_id)
    with ledger.unit_of_work() as uow:
        assert uow.ops.add(op_key=key, job_id=job_id, op_type="HEAD", now=uow.now()) is True
        uow.commit()
    started = clock.now
    with ledger.unit_of_work(read_only=True) as uow:
        op = uow.ops.get(key)
    assert op is not None
    assert (op.job_id, op.op_type, op.started_at, op.finished_at) == (job_id, "HEAD", started, None)

    clock.advance(2.5)
    result = json.dumps({"status": 200, "length": 1024})
    with ledger.unit_of_work() as uow:
        assert uow.ops.finish(key, result_code="OK", result_json=result, now=uow.now()) is True
        uow.commit()
    with ledger.unit_of_work(read_only=True) as uow:
        done = uow.ops.get(key)
    assert done is not None
    assert done.finished_at == started + 2.5
    assert done.result_code == "OK"
    assert done.result_json is not None
    assert json.loads(done.result_json) == {"status": 200, "length": 1024}


def test_add_twice_keeps_the_first_row(ledger: Ledger, clock: ManualClock) -> None:
    job_id = _planned_job(ledger)
    key = op_key("STREAM", job_id)
    with ledger.unit_of_work() as uow:
        uow.ops.add(op_key=key, job_id=job_id, op_type="STREAM", now=uow.now())
        uow.commit()
    first_start = clock.now
    clock.advance(10)
    with ledger.unit_of_work() as uow:
        assert uow.ops.add(op_key=key, job_id=job_id, op_type="STREAM", now=uow.now()) is False
        uow.commit()
    with ledger.unit_of_work(read_only=True) as uow:
        op = uow.ops.get(key)
    assert op is not None
    assert op.started_at == first_start


def test_finish_records_a_result_once(ledger: Ledger) -> None:
    job_id = _planned_job(ledger)
    key = op_key("INDEX", job_id)
    with ledger.unit_of_work() as uow:
        uow.ops.add(op_key=key, job_id=job_id, op_type="INDEX", now=uow.now())
        assert uow.ops.finish(key, result_code="OK", result_json='{"a":1}', now=uow.now())
        assert not uow.ops.finish(key, result_code="OK", result_json='{"a":2}', now=uow.now())
        assert not uow.ops.finish("unknown", result_code="OK", result_json=None, now=uow.now())
        op = uow.ops.get(key)
        uow.commit()
    assert op is not None
    assert op.result_json == '{"a":1}'


def test_add_for_unknown_job_raises_job_not_found(ledger: Ledger) -> None:
    with ledger.unit_of_work() as uow, pytest.raises(JobNotFound, match="no-such-job"):
        uow.ops.add(op_key="k", job_id="no-such-job", op_type="HEAD", now=uow.now())


def test_ops_are_listed_per_job_and_deleted_with_their_job(
    ledger: Ledger, clock: ManualClock
) -> None:
    job_id = _planned_job(ledger)
    kinds = ["HEAD", "STREAM", "FINALIZE"]
    with ledger.unit_of_work() as uow:
        for kind in kinds:
            uow.ops.add(op_key=op_key(kind, job_id), job_id=job_id, op_type=kind, now=uow.now())
            clock.advance(1)
        uow.commit()
    with ledger.unit_of_work(read_only=True) as uow:
        assert [op.op_type for op in uow.ops.list_for_job(job_id)] == kinds
    with ledger.unit_of_work() as uow:
        uow.session.execute(delete(ArtifactJob).where(ArtifactJob.job_id == job_id))
        uow.commit()
    with ledger.unit_of_work(read_only=True) as uow:
        assert uow.ops.list_for_job(job_id) == []
        assert uow.ops.get(op_key("HEAD", job_id)) is None
