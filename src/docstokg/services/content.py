"""The last two steps of a job, which only write to the ledger: INDEX and DEDUPE.

Each runs as a :func:`run_ledger_step`: its op, its write and its move commit
in one transaction, so they are exactly-once outright.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from docstokg.errors import LeaseLost
from docstokg.keys import op_key
from docstokg.ledger import Lease, Ledger, UnitOfWork
from docstokg.services.effects import EffectResult, JobSteps
from docstokg.states import JobState

INDEX = "INDEX"
DEDUPE = "DEDUPE"


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
    lease = steps.lease

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

    return steps.ledger_step(
        kind=INDEX,
        opkey=op_key(INDEX, lease.job_id),
        write=write,
        advance_to=JobState.INDEXED,
        allowed_from={JobState.FINALIZED},
    )


def dedupe_step(steps: JobSteps, content: StoredContent) -> EffectResult:
    """DEDUPE as the next of ``steps``: DEDUPED if the job is the first to store its content.

    A duplicate points at the stored job's file (the same content-addressed
    path, so no bytes are kept twice) and names that job in its result.  Two
    jobs deciding at once on PostgreSQL can both see no owner; the unique
    partial index lets only one commit as DEDUPED, and the other decides again
    and finds it.  (SQLite's BEGIN IMMEDIATE serialises them in the first place.)
    """
    lease = steps.lease
    opkey = op_key(DEDUPE, lease.job_id)

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

    def chosen(result: EffectResult) -> JobState:
        return JobState(result["outcome"])

    def decide() -> EffectResult:
        return steps.ledger_step(
            kind=DEDUPE,
            opkey=opkey,
            write=write,
            advance_to=chosen,
            allowed_from={JobState.INDEXED},
        )

    try:
        return decide()
    except IntegrityError:
        # Another job committed as the owner of this content between our look
        # and our move: look again, and this time find it.
        return decide()
