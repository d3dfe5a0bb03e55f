"""The services: each one a thin step of one or two units of work.

They are the public API of the ledger (re-exported by :mod:`docstokg`): plan
jobs, lease them, move them along the transition table, run their effects
exactly once per op_key, fail and retry them, and clean up after crashes.
"""

from docstokg.services.content import (
    StoredContent,
    dedupe_job,
    dedupe_step,
    index_and_dedupe_steps,
    index_job,
    index_step,
)
from docstokg.services.effects import (
    DEFAULT_MAX_RESULT_BYTES,
    JobSteps,
    LedgerStep,
    NextClaim,
    claim_and_start,
    get_effect_result,
    redo_effect,
    run_effect,
    run_ledger_step,
)
from docstokg.services.leasing import (
    lease_next_job,
    release_lease,
    release_leases_of,
    renew_lease,
)
from docstokg.services.maintenance import (
    ReconcileReport,
    cleanup_stale_leases,
    cleanup_stale_ops,
    reconcile_jobs,
)
from docstokg.services.planning import (
    add_to_manifest,
    check_manifest_name,
    follow_expected_checksums,
    plan_job_if_absent,
    plan_jobs,
    usable_manifest_name,
)
from docstokg.services.queries import count_unfinished, get_job, jobs_among, unfinished_among
from docstokg.services.transitions import (
    Backoff,
    advance_state,
    fail_job,
    out_of_attempts,
    record_job_result,
)

__all__ = [
    "DEFAULT_MAX_RESULT_BYTES",
    "Backoff",
    "JobSteps",
    "LedgerStep",
    "NextClaim",
    "ReconcileReport",
    "StoredContent",
    "add_to_manifest",
    "advance_state",
    "check_manifest_name",
    "claim_and_start",
    "cleanup_stale_leases",
    "cleanup_stale_ops",
    "count_unfinished",
    "dedupe_job",
    "dedupe_step",
    "fail_job",
    "follow_expected_checksums",
    "get_effect_result",
    "get_job",
    "index_and_dedupe_steps",
    "index_job",
    "index_step",
    "jobs_among",
    "lease_next_job",
    "out_of_attempts",
    "plan_job_if_absent",
    "plan_jobs",
    "reconcile_jobs",
    "record_job_result",
    "redo_effect",
    "release_lease",
    "release_leases_of",
    "renew_lease",
    "run_effect",
    "run_ledger_step",
    "unfinished_among",
    "usable_manifest_name",
]
