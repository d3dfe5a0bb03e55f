"""docstokg: a crash-safe, idempotent job ledger for bulk artifact downloads."""

from docstokg.keys import job_key, op_key
from docstokg.ledger import JobRecord, JobSpec, Ledger, OpRecord, PlannedJob, UnitOfWork
from docstokg.states import JobState

__all__ = [
    "JobRecord",
    "JobSpec",
    "JobState",
    "Ledger",
    "OpRecord",
    "PlannedJob",
    "UnitOfWork",
    "job_key",
    "op_key",
]
