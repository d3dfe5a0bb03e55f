"""The last two steps of a job, which only write to the ledger: INDEX and DEDUPE.

Each runs as a :func:`run_ledger_step`: its op, its write and its move commit
in one transaction, so they are exactly-once outright.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from docstokg.errors import ConstraintViolated, LeaseLost
from docstokg.keys import op_key
from docstokg.ledger import Lease, Ledger, UnitOfWork
from docstokg.services.effect_results import EffectResult
from docstokg.services.job_steps import JobSteps, LedgerStep, NextClaim
from docstokg.states import JobState, origins

INDEX = "INDEX"
DEDUPE = "DEDUPE"

#: A ledger step's write: inside the step's unit of work, at the database's ``now``.
LedgerWrite = Callable[[UnitOfWork, float], Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class StoredContent:
    """What FINALIZE put on disk for a job."""

    sha256: str
    size_bytes: int
    final_path: str
    content_type: str | None


def index_job(ledger: Ledger, lease: Lease, content: StoredContent) -> EffectResult:
    """INDEX: record the job's sha256, size, final_path and content type; FINALIZED → INDEXED."""
    with JobSteps(ledger, lease) as steps:
        return index_step(steps, content)


def dedupe_job(ledger: Ledger, lease: Lease, content: StoredContent) -> EffectResult:
    """DEDUPE: DEDUPED if this job is the first to store its content, else SKIPPED_DUPLICATE."""
    with JobSteps(ledger, lease) as steps:
        return dedupe_step(steps, content)


def index_step(steps: JobSteps, content: StoredContent) -> EffectResult:
    """INDEX as the next of ``steps``: its op, the job's result and its move in one commit."""
    [indexed] = steps.ledger_steps(_index(steps.lease, content))
    return indexed


def dedupe_step(steps: JobSteps, content: StoredContent) -> EffectResult:
    """DEDUPE as the next of ``steps``: DEDUPED if the job is the first to store its content."""
    [decided] = deciding(lambda: steps.ledger_steps(_dedupe(steps.lease, content)))
    return decided


def index_and_dedupe_steps(
    steps: JobSteps, content: StoredContent, *, then_claim: NextClaim | None = None
) -> EffectResult:
    """INDEX then DEDUPE as the next of ``steps``, in one unit of work; DEDUPE's result.

    Neither leaves the database, so nothing is gained by a commit between
    them: the job goes from FINALIZED to its end (with the last effect's
    waiting result) in one transaction, or stays where it was.  With
    ``then_claim`` that transaction also claims the worker's next job
    (``steps.next_job``).
    """
    index, dedupe = _index(steps.lease, content), _dedupe(steps.lease, content)
    _, decided = deciding(lambda: steps.ledger_steps(index, dedupe, then_claim=then_claim))
    return decided


def _index(lease: Lease, content: StoredContent) -> LedgerStep:
    """INDEX: the job's sha256, size, final_path and content type; FINALIZED → INDEXED."""
    return LedgerStep.of(INDEX, op_key(INDEX, lease.job_id), index_write(lease, content),
                         JobState.INDEXED)  # fmt: skip


def _dedupe(lease: Lease, content: StoredContent) -> LedgerStep:
    """DEDUPE: DEDUPED if the job is the first to store its content, else SKIPPED_DUPLICATE."""
    return LedgerStep.of(DEDUPE, op_key(DEDUPE, lease.job_id), dedupe_write(lease, content),
                         dedupe_outcome, origins(DEDUPE_OUTCOMES))  # fmt: skip


#: The states DEDUPE chooses between.
DEDUPE_OUTCOMES = frozenset({JobState.DEDUPED, JobState.SKIPPED_DUPLICATE})


def index_write(lease: Lease, content: StoredContent) -> LedgerWrite:
    """INDEX's write: the job's sha256, size, final_path and content type, fenced by ``lease``."""

    def write(uow: UnitOfWork, now: float) -> EffectResult:
        recorded = uow.jobs.record_result(
            lease,
            sha256=content.sha256,
            final_path=content.final_path,
            size_bytes=content.size_bytes,
            content_type=content.content_type,
            now=now,
        )
        if not recorded:
            raise LeaseLost(lease.job_id, lease.owner, lease.epoch, "indexing the job")
        return {
            "sha256": content.sha256,
            "size_bytes": content.size_bytes,
            "final_path": content.final_path,
            "content_type": content.content_type,
        }

    return write


def dedupe_write(lease: Lease, content: StoredContent) -> LedgerWrite:
    """DEDUPE's write: is another job's copy of this content stored already?

    A duplicate points at the stored job's file (the same content-addressed
    path, so no bytes are kept twice) and names that job in its result.
    """

    def write(uow: UnitOfWork, now: float) -> EffectResult:
        owner = uow.jobs.stored_copy(content.sha256, excluding=lease.job_id)
        if owner is None:
            return {"outcome": JobState.DEDUPED.value, "duplicate_of": None}
        owner_id, owner_path = owner
        if owner_path is not None and owner_path != content.final_path:
            uow.jobs.record_result(
                lease,
                sha256=content.sha256,
                final_path=owner_path,
                size_bytes=content.size_bytes,
                content_type=content.content_type,
                now=now,
            )
        return {"outcome": JobState.SKIPPED_DUPLICATE.value, "duplicate_of": owner_id}

    return write


def dedupe_outcome(result: Mapping[str, Any]) -> JobState:
    """The state DEDUPE's result chose."""
    return JobState(result["outcome"])


def deciding(run: Callable[[], list[EffectResult]]) -> list[EffectResult]:
    """Run ledger steps that include DEDUPE, deciding again if another job won the content.

    Two jobs deciding at once on PostgreSQL can both see no owner; the unique
    partial index lets only one commit as DEDUPED, and the other's unit of
    work fails as a whole; run again, it finds the owner.  (SQLite's single
    writer serialises them in the first place.)
    """
    try:
        return run()
    except ConstraintViolated:
        return run()
