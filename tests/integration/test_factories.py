from docstokg import Ledger
from tests.factories import JobFactory, OpFactory, bound_to


def test_factories_write_rows_that_repositories_read(ledger: Ledger) -> None:
    with ledger.unit_of_work() as uow, bound_to(uow.session):
        op = OpFactory(op_type="STREAM")
        job_id = op.job_id
        key = op.op_key
        uow.commit()
    with ledger.unit_of_work(read_only=True) as uow:
        record = uow.ops.get(key)
        job = uow.jobs.get(job_id)
    assert record is not None
    assert record.op_type == "STREAM"
    assert job is not None
    assert record.job_id == job.job_id


def test_factory_jobs_are_distinct(ledger: Ledger) -> None:
    with ledger.unit_of_work() as uow, bound_to(uow.session):
        jobs = JobFactory.create_batch(3)
        keys = {job.idempotency_key for job in jobs}
        uow.commit()
    assert len(keys) == 3
