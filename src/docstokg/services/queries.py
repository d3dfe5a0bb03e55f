"""Read-only questions a runner or an operator asks about jobs.

Each is asked again through a passing database error (a read is always safe to repeat).
"""

from __future__ import annotations

from collections.abc import Collection

from docstokg.ledger import JobRecord, Ledger


def get_job(ledger: Ledger, job_id: str) -> JobRecord | None:
    """The job as it stands now, or None."""

    def read() -> JobRecord | None:
        with ledger.unit_of_work(read_only=True) as uow:
            return uow.jobs.get(job_id)

    return ledger.retrying(read)


def jobs_among(ledger: Ledger, job_ids: Collection[str]) -> list[JobRecord]:
    """The jobs with these ids that exist, in one snapshot."""

    def read() -> list[JobRecord]:
        with ledger.unit_of_work(read_only=True) as uow:
            return uow.jobs.get_many(job_ids)

    return ledger.retrying(read)


def unfinished_among(ledger: Ledger, job_ids: Collection[str]) -> set[str]:
    """Those of these jobs that have not ended (ended: stored, duplicate, out of attempts)."""

    def read() -> set[str]:
        with ledger.unit_of_work(read_only=True) as uow:
            return uow.jobs.unfinished_among(job_ids)

    return ledger.retrying(read)


def count_unfinished(ledger: Ledger, job_ids: Collection[str]) -> int:
    """How many of these jobs have not ended yet (ended: stored, duplicate, or out of attempts)."""

    def read() -> int:
        with ledger.unit_of_work(read_only=True) as uow:
            return uow.jobs.count_unfinished(job_ids)

    return ledger.retrying(read)
