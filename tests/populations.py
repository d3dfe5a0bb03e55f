"""A known ledger population for the operator commands (``docstokg job ...``) and their services.

Every number an operator report prints is fixed here, relative to a ``now``
the caller passes (a ManualClock's time in integration tests, the ledger's
own clock in CLI tests), so a test asserts exact values, not "more than zero".
Rows are written with the factory-boy factories, inside one unit of work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from docstokg import Ledger
from docstokg.states import JobState
from tests.factories import JobFactory, OpFactory, bound_to

ERROR_404_A = "HTTP 404 Not Found for http://x/1 (permanent: not retried)"
ERROR_404_B = "HTTP 404 Not Found for http://x/2 (permanent: not retried)"
ERROR_503_OUT = "HTTP 503 Service Unavailable for http://x/4 (attempt 5 of 5)"
ERROR_503_RETRY = "HTTP 503 Service Unavailable for http://x/5 (attempt 2 of 5)"
ERROR_TIMEOUT = "ReadTimeout: timed out reading http://x/6"

# name: state, created / updated (seconds before now), attempts, max_attempts,
# lease (seconds left, owner, epoch) or None, last_error.
JOBS: dict[str, tuple[JobState, float, float, int, int, tuple[float, str, int] | None, str | None]]
JOBS = {
    "planned_old": (JobState.PLANNED, 8000, 8000, 0, 5, None, None),
    "planned_new": (JobState.PLANNED, 10, 10, 0, 5, None, None),
    "leased": (JobState.LEASED, 300, 20, 0, 5, (30, "hostA:11:run1:w0", 3), None),
    "head_done": (JobState.HEAD_DONE, 8000, 900, 0, 5, (-15, "hostB:22:run2:w1", 2), None),
    "resume_ok": (JobState.RESUME_OK, 8000, 1000, 0, 5, (-500, "hostB:22:run2:w2", 1), None),
    "streaming": (JobState.STREAMING, 8000, 30, 0, 5, (90, "hostA:11:run1:w1", 5), None),
    "deduped_recent": (JobState.DEDUPED, 8000, 100, 2, 5, None, None),
    "deduped_hour": (JobState.DEDUPED, 8000, 1000, 0, 5, None, None),
    "deduped_old": (JobState.DEDUPED, 8000, 5000, 0, 5, None, None),
    "skipped": (JobState.SKIPPED_DUPLICATE, 8000, 50, 0, 5, None, None),
    "f404_a": (JobState.FAILED, 200, 150, 5, 5, None, ERROR_404_A),
    "f404_b": (JobState.FAILED, 8000, 6000, 5, 5, None, ERROR_404_B),
    "f404_c": (JobState.FAILED, 8000, 6000, 1, 1, None, ERROR_404_B),
    "f503_out": (JobState.FAILED, 8000, 7000, 5, 5, None, ERROR_503_OUT),
    "f503_retry": (JobState.FAILED, 8000, 7000, 2, 5, None, ERROR_503_RETRY),
    "timeout_retry": (JobState.FAILED, 100, 60, 1, 5, None, ERROR_TIMEOUT),
}

# job name, kind, status, duration (None: not finished), started (seconds before now), epoch
OPS: list[tuple[str, str, str, float | None, float, int]] = [
    # HEAD durations, sorted: 0.01 0.02 0.03 0.04 0.05 0.06 0.07 0.08 0.2 0.5
    ("deduped_recent", "HEAD", "SUCCEEDED", 0.05, 400, 0),
    ("deduped_hour", "HEAD", "SUCCEEDED", 0.01, 1100, 0),
    ("deduped_old", "HEAD", "SUCCEEDED", 0.02, 5100, 0),
    ("skipped", "HEAD", "SUCCEEDED", 0.5, 120, 0),
    ("f404_b", "HEAD", "FAILED", 0.03, 6100, 0),
    ("f503_out", "HEAD", "FAILED", 0.04, 7100, 0),
    ("f503_retry", "HEAD", "FAILED", 0.2, 7100, 0),
    ("leased", "HEAD", "SUCCEEDED", 0.06, 25, 3),
    ("streaming", "HEAD", "SUCCEEDED", 0.07, 1200, 4),
    ("head_done", "HEAD", "SUCCEEDED", 0.08, 1300, 2),
    # STREAM durations, sorted: 1.0 2.0 7.5
    ("deduped_recent", "STREAM", "SUCCEEDED", 2.0, 390, 0),
    ("deduped_hour", "STREAM", "SUCCEEDED", 7.5, 1090, 0),
    ("deduped_old", "STREAM", "SUCCEEDED", 1.0, 5050, 0),
    ("deduped_old", "FINALIZE", "SUCCEEDED", 0.004, 5040, 0),
    # IN_PROGRESS: stale unless a live lease of the same epoch holds it, or it is recent
    ("head_done", "STREAM", "IN_PROGRESS", None, 1000, 2),  # lease expired: stale
    ("leased", "STREAM", "IN_PROGRESS", None, 1000, 3),  # live holder: kept
    ("streaming", "STREAM", "IN_PROGRESS", None, 1000, 4),  # holder lost it (epoch 5): stale
    ("resume_ok", "STREAM", "IN_PROGRESS", None, 10, 1),  # recent: kept
    # given up on earlier
    ("deduped_old", "STREAM", "ABANDONED", None, 5060, 0),
    ("f503_out", "STREAM", "ABANDONED", None, 7050, 0),
]

# What the reports must say about this population.
COUNTS = {
    JobState.PLANNED: 2,
    JobState.LEASED: 1,
    JobState.HEAD_DONE: 1,
    JobState.RESUME_OK: 1,
    JobState.STREAMING: 1,
    JobState.FINALIZED: 0,
    JobState.INDEXED: 0,
    JobState.DEDUPED: 3,
    JobState.FAILED: 6,
    JobState.SKIPPED_DUPLICATE: 1,
}
TOTAL = 16
EXHAUSTED = 4  # f404_a, f404_b, f404_c, f503_out
# created in the last 600 s: planned_new, leased, f404_a (exhausted), timeout_retry
WINDOW_S = 600.0
WINDOW_COUNTS = {**dict.fromkeys(JobState, 0), JobState.PLANNED: 1, JobState.LEASED: 1,
                 JobState.FAILED: 2}  # fmt: skip
WINDOW_EXHAUSTED = 1
FINISHED_IN_HOUR = 3  # deduped_recent, deduped_hour, skipped (deduped_old ended 5000 s ago)
# Ops that ran more than once (a retry or a takeover), by (job, kind): their attempt.
OP_ATTEMPTS = {("f503_retry", "HEAD"): 2, ("deduped_hour", "STREAM"): 3, ("streaming", "STREAM"): 2}
# Retries are counted from the ops: jobs with a step that ran again, and the extra runs.
RETRIED_JOBS = 3
RETRY_ATTEMPTS = 1 + 2 + 1
# Runs of a step that did not succeed: FAILED ops now, plus every run again.
# HEAD: f404_b, f503_out, f503_retry FAILED, and f503_retry's second run; STREAM: 2 + 1.
STEP_FAILURES = {"HEAD": 3 + 1, "STREAM": 2 + 1}
# (reason, jobs, of which out of attempts), most frequent first
FAILURES = [("http_404", 3, 3), ("http_503", 2, 1), ("timeout", 1, 0)]
# kind: (runs, p50, p95), by nearest rank (0-based rank ceil(q * n) - 1 of the sorted values)
DURATIONS = {"FINALIZE": (1, 0.004, 0.004), "HEAD": (10, 0.05, 0.5), "STREAM": (3, 2.0, 7.5)}
ABANDONED_OPS = 2
LIVE_LEASES = 2
EXPIRED_LEASES = 2
STALE_OPS = 2  # older than 600 s with no live holder of their epoch
ABANDONED_THRESHOLD_S = 600.0
# job vacuum --older-than 3000 s: ended (success or out of attempts) before then:
# deduped_old (4 ops), f404_b (1), f404_c (0), f503_out (2)
VACUUM_OLDER_THAN_S = 3000.0
VACUUM_OPS_DELETED = 7
TOTAL_OPS = len(OPS)


@dataclass
class Population:
    """The ids of what :func:`populate` wrote."""

    now: float
    job_ids: dict[str, str] = field(default_factory=dict)
    op_keys: dict[str, list[str]] = field(default_factory=dict)

    def names(self, job_id: str) -> str:
        return next(name for name, known in self.job_ids.items() if known == job_id)


def populate(ledger: Ledger, now: float) -> Population:
    """Write :data:`JOBS` and :data:`OPS` relative to ``now``, in one committed unit of work."""
    population = Population(now)
    with ledger.unit_of_work() as uow, bound_to(uow.session):
        jobs: dict[str, Any] = {}
        for name, (state, created, updated, attempts, max_attempts, lease, error) in JOBS.items():
            fields: dict[str, Any] = {
                "work_id": f"W-{name}",
                "state": state.value,
                "created_at": now - created,
                "updated_at": now - updated,
                "attempts": attempts,
                "max_attempts": max_attempts,
                "last_error": error,
            }
            if lease is not None:
                seconds_left, owner, epoch = lease
                fields.update(lease_until=now + seconds_left, lease_owner=owner, lease_epoch=epoch)
            if name == "f503_retry":
                fields["next_attempt_at"] = now + 60
            jobs[name] = JobFactory(**fields)
            population.job_ids[name] = jobs[name].job_id
        for job_name, kind, status, duration, started, epoch in OPS:
            start = now - started
            op = OpFactory(
                job=jobs[job_name],
                op_type=kind,
                status=status,
                started_at=start,
                finished_at=None if duration is None else start + duration,
                duration_s=duration,
                lease_epoch=epoch,
                attempt=OP_ATTEMPTS.get((job_name, kind), 1),
                result_json='{"ok": true}' if status == "SUCCEEDED" else None,
                error="HTTP 404 Not Found" if status == "FAILED" else None,
            )
            population.op_keys.setdefault(job_name, []).append(op.op_key)
        uow.commit()
    return population
