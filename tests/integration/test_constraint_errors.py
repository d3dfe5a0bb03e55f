"""A broken constraint leaves the ledger as the domain error its name stands for.

The unit of work maps driver errors at the ledger's boundary: a constraint
the schema names (PostgreSQL says which; SQLite names CHECKs, lists a unique
key's columns, and names no foreign key) becomes a :mod:`docstokg.errors`
type whose message says what happened and what to do, with the name in
``constraint``.  Each write below breaks one constraint on purpose, through
the ORM session of a unit of work, as a buggy caller or a hand edit would.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import CheckConstraint, ForeignKeyConstraint, PrimaryKeyConstraint, UniqueConstraint

from docstokg import Ledger
from docstokg.errors import (
    ConstraintViolated,
    ContentAlreadyStored,
    DuplicateJob,
    DuplicateOp,
    UnknownJobReference,
    ValueNotAllowed,
)
from docstokg.ledger.engine import KNOWN_CONSTRAINTS
from docstokg.ledger.models import ArtifactOp, Base
from docstokg.ledger.unit_of_work import UnitOfWork
from docstokg.states import JobState
from tests.factories import JobFactory, OpFactory, bound_to

SHA = "ab" * 32


def _two_owners_of_one_content(uow: UnitOfWork) -> None:
    JobFactory(state=JobState.DEDUPED.value, sha256=SHA)
    JobFactory(state=JobState.DEDUPED.value, sha256=SHA)


def _one_triple_twice(uow: UnitOfWork) -> None:
    first = JobFactory()
    # Another key and job_id for the same manifest row: only the triple collides.
    JobFactory(
        work_id=first.work_id,
        artifact_id=first.artifact_id,
        canonical_url=first.canonical_url,
        idempotency_key="another-key",
    )


def _an_op_of_no_job(uow: UnitOfWork) -> None:
    uow.session.add(
        ArtifactOp(op_key="op-of-nobody", job_id="no-such-job", op_type="HEAD", started_at=1.0)
    )
    uow.session.flush()


def _one_op_key_twice(uow: UnitOfWork) -> None:
    op = OpFactory()
    uow.session.expunge(op)  # the database, not the session's identity map, is to refuse it
    uow.session.add(ArtifactOp(op_key=op.op_key, job_id=op.job_id, op_type="HEAD", started_at=2.0))
    uow.session.flush()


def _an_unknown_state(uow: UnitOfWork) -> None:
    JobFactory(state="VERIFIED")


CASES: dict[str, tuple[Callable[[UnitOfWork], None], type[ConstraintViolated], str, str]] = {
    "content": (
        _two_owners_of_one_content,
        ContentAlreadyStored,
        "uq_artifact_jobs_stored_content",
        "SKIPPED_DUPLICATE",
    ),
    "triple": (
        _one_triple_twice,
        DuplicateJob,
        "uq_artifact_jobs_work_id_artifact_id_canonical_url",
        "plan_jobs()",
    ),
    "foreign-key": (
        _an_op_of_no_job,
        UnknownJobReference,
        "fk_artifact_ops_job_id_artifact_jobs",
        "plan the job before recording its ops",
    ),
    "op-key": (_one_op_key_twice, DuplicateOp, "pk_artifact_ops", "run_effect()"),
    "check": (_an_unknown_state, ValueNotAllowed, "ck_artifact_jobs_state", "upgrade docstokg"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_named_constraint_becomes_its_domain_error(ledger: Ledger, case: str) -> None:
    write, error, constraint, remedy = CASES[case]

    with pytest.raises(error) as caught, ledger.unit_of_work() as uow, bound_to(uow.session):
        write(uow)

    assert caught.value.constraint == constraint
    assert constraint in str(caught.value)
    assert remedy in str(caught.value)


def test_every_named_constraint_of_the_models_has_a_domain_error() -> None:
    named = {
        str(constraint.name)
        for table in Base.metadata.sorted_tables
        for constraint in table.constraints
        if isinstance(
            constraint,
            PrimaryKeyConstraint | UniqueConstraint | ForeignKeyConstraint | CheckConstraint,
        )
    } | {
        str(index.name)
        for table in Base.metadata.sorted_tables
        for index in table.indexes
        if index.unique
    }

    assert named == KNOWN_CONSTRAINTS.keys()
