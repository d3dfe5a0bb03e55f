"""factory-boy factories for ledger rows, bound to the session of a unit of work.

Use them inside a unit of work, so the rows they flush are part of the same
transaction that the code under test reads::

    with ledger.unit_of_work() as uow, bound_to(uow.session):
        JobFactory.create_batch(3, state="FAILED")
        uow.commit()
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import factory
from factory.alchemy import SQLAlchemyModelFactory
from sqlalchemy.orm import Session

from docstokg.keys import job_id_for, job_key, op_key
from docstokg.ledger.models import ArtifactJob, ArtifactOp
from docstokg.states import JobState

_session: ContextVar[Session] = ContextVar("factory_session")


@contextmanager
def bound_to(session: Session) -> Iterator[None]:
    token = _session.set(session)
    try:
        yield
    finally:
        _session.reset(token)


def _current_session() -> Session:
    try:
        return _session.get()
    except LookupError:
        raise RuntimeError("factories need `with bound_to(uow.session):`") from None


class JobFactory(SQLAlchemyModelFactory):  # type: ignore[misc]
    class Meta:
        model = ArtifactJob
        sqlalchemy_session_factory = _current_session
        sqlalchemy_session_persistence = "flush"

    job_id = factory.LazyAttribute(lambda job: job_id_for(job.idempotency_key))
    work_id = factory.Sequence(lambda n: f"W{n:06d}")
    artifact_id = "pdf"
    canonical_url = factory.LazyAttribute(
        lambda job: f"https://example.org/{job.work_id}/{job.artifact_id}.pdf"
    )
    state = JobState.PLANNED.value
    created_at = factory.Sequence(lambda n: 1_700_000_000.0 + n)
    updated_at = factory.SelfAttribute("created_at")
    idempotency_key = factory.LazyAttribute(
        lambda job: job_key(job.work_id, job.artifact_id, job.canonical_url)
    )


class OpFactory(SQLAlchemyModelFactory):  # type: ignore[misc]
    class Meta:
        model = ArtifactOp
        sqlalchemy_session_factory = _current_session
        sqlalchemy_session_persistence = "flush"

    class Params:
        job = factory.SubFactory(JobFactory)

    job_id = factory.SelfAttribute("job.job_id")
    op_type = "HEAD"
    op_key = factory.LazyAttributeSequence(lambda op, n: op_key(op.op_type, op.job_id, n=n))
    started_at = factory.Sequence(lambda n: 1_700_000_000.0 + n)
    finished_at = None
    result_code = None
    result_json = None
