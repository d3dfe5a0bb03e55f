"""The persistence layer: models, repositories, unit of work, migrations."""

from docstokg.ledger.ledger import Ledger
from docstokg.ledger.records import JobRecord, JobSpec, Lease, OpRecord, PlannedJob, StoredFile
from docstokg.ledger.unit_of_work import UnitOfWork

__all__ = [
    "JobRecord",
    "JobSpec",
    "Lease",
    "Ledger",
    "OpRecord",
    "PlannedJob",
    "StoredFile",
    "UnitOfWork",
]
