"""docstokg: a crash-safe, idempotent job ledger for bulk artifact downloads."""

from docstokg.errors import EffectResultTooLarge, InvalidTransition, LeaseLost
from docstokg.keys import job_key, op_key
from docstokg.ledger import JobRecord, JobSpec, Lease, Ledger, OpRecord, PlannedJob, UnitOfWork
from docstokg.services import (
    ReconcileReport,
    advance_state,
    cleanup_stale_leases,
    cleanup_stale_ops,
    fail_job,
    get_effect_result,
    lease_next_job,
    plan_job_if_absent,
    plan_jobs,
    reconcile_jobs,
    record_job_result,
    release_lease,
    renew_lease,
    run_effect,
)
from docstokg.states import JobState

__all__ = [
    "EffectResultTooLarge",
    "InvalidTransition",
    "JobRecord",
    "JobSpec",
    "JobState",
    "Lease",
    "LeaseLost",
    "Ledger",
    "OpRecord",
    "PlannedJob",
    "ReconcileReport",
    "UnitOfWork",
    "advance_state",
    "cleanup_stale_leases",
    "cleanup_stale_ops",
    "fail_job",
    "get_effect_result",
    "job_key",
    "lease_next_job",
    "op_key",
    "plan_job_if_absent",
    "plan_jobs",
    "reconcile_jobs",
    "record_job_result",
    "release_lease",
    "renew_lease",
    "run_effect",
]
