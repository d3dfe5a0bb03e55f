"""What an operator on call asks, and the repairs they make: behind ``docstokg job``.

Each function opens its own units of work and returns plain dataclasses (the
CLI prints them as tables or JSON; the metrics read the same numbers).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from docstokg.errors import ConfigurationError, JobNotFound, UnknownManifest
from docstokg.ledger import JobRecord, Ledger, OpRecord, UnitOfWork
from docstokg.ledger.reports import DurationSummary, FailureGroup
from docstokg.services.maintenance import (
    cleanup_stale_leases,
    cleanup_stale_ops,
    reconcile_jobs,
)
from docstokg.states import JobState

DEFAULT_STATS_WINDOW_S = 3600.0
TOP_FAILURES = 10


@dataclass(frozen=True)
class StatusReport:
    window_s: float | None
    counts: dict[JobState, int]
    exhausted: int  # FAILED with no attempt left (within counts[FAILED])

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class LeaseView:
    job_id: str
    owner: str | None
    state: JobState
    seconds_left: float  # negative once expired
    epoch: int
    work_id: str
    artifact_id: str


@dataclass(frozen=True)
class LeasesReport:
    total: int
    live: int
    expired: int
    leases: list[LeaseView]


@dataclass(frozen=True, slots=True)
class FailureReason:
    reason: str  # a stable class, e.g. "http_404", "timeout"
    count: int
    exhausted: int  # of which have no attempt left
    example: str | None


@dataclass(frozen=True)
class StatsReport:
    window_s: float
    counts: dict[JobState, int]
    exhausted: int
    finished_in_window: int
    retried_jobs: int
    retry_attempts: int
    failures: list[FailureReason]
    durations: list[DurationSummary]
    abandoned_ops: int
    database_bytes: int

    @property
    def finished_per_minute(self) -> float:
        return self.finished_in_window / (self.window_s / 60.0)


@dataclass(frozen=True)
class CleanupReport:
    dry_run: bool
    expired_leases: int
    stale_ops: int
    stale_parts: list[Path] = field(default_factory=list)
    jobs_requeued: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RetryReport:
    refilled: list[str]
    skipped: dict[str, str]  # job_id -> why it was not given a new budget


@dataclass(frozen=True)
class VacuumReport:
    cutoff: float
    ops_deleted: int
    bytes_before: int
    bytes_after: int

    @property
    def bytes_reclaimed(self) -> int:
        return max(0, self.bytes_before - self.bytes_after)


def job_status(
    ledger: Ledger, *, window_s: float | None = None, manifest: str | None = None
) -> StatusReport:
    """Jobs by state, optionally only those created in the last ``window_s`` seconds.

    With ``manifest``, only the jobs of that manifest (by its name in the ledger).
    """
    with ledger.unit_of_work(read_only=True) as uow:
        _check_manifest(uow, manifest)
        since = None if window_s is None else uow.now() - window_s
        counts = uow.reports.state_counts(created_since=since, manifest=manifest)
        exhausted = uow.reports.exhausted_count(created_since=since, manifest=manifest)
    return StatusReport(window_s, counts, exhausted)


def job_leases(ledger: Ledger, *, limit: int = 100) -> LeasesReport:
    """Every lease a job carries (live or expired), soonest expiry first."""
    with ledger.unit_of_work(read_only=True) as uow:
        now = uow.now()
        total, rows = uow.reports.leases(limit=limit)
        live = uow.reports.live_lease_count(now=now)
    views = [
        LeaseView(row.job_id, row.owner, row.state, row.lease_until - now, row.epoch,
                  row.work_id, row.artifact_id)
        for row in rows
    ]  # fmt: skip
    return LeasesReport(total=total, live=live, expired=total - live, leases=views)


def job_stats(
    ledger: Ledger,
    *,
    window_s: float = DEFAULT_STATS_WINDOW_S,
    top: int = TOP_FAILURES,
    manifest: str | None = None,
) -> StatsReport:
    """One summary: states, throughput over the window, retries, failures, op durations.

    With ``manifest``, the jobs' figures (states, throughput, failures) cover
    that manifest's jobs only; the steps' figures (retries, durations,
    abandoned ops) and the size cover the whole ledger.
    """
    if not window_s > 0:
        raise ConfigurationError(f"--window-s must be a positive number of seconds, got {window_s}")
    with ledger.unit_of_work(read_only=True) as uow:
        reports = uow.reports
        _check_manifest(uow, manifest)
        since = uow.now() - window_s
        counts = reports.state_counts(manifest=manifest)
        exhausted = reports.exhausted_count(manifest=manifest)
        finished = reports.finished_since(since, manifest=manifest)
        retried_jobs, retry_attempts = reports.retries()
        groups = reports.failure_groups(manifest=manifest)
        durations = reports.durations()
        abandoned = reports.abandoned_ops()
        size = reports.database_bytes()
    return StatsReport(
        window_s=window_s,
        counts=counts,
        exhausted=exhausted,
        finished_in_window=finished,
        retried_jobs=retried_jobs,
        retry_attempts=retry_attempts,
        failures=_top_reasons(groups, top),
        durations=durations,
        abandoned_ops=abandoned,
        database_bytes=size,
    )


def _check_manifest(uow: UnitOfWork, manifest: str | None) -> None:
    """Refuse a manifest name the ledger does not know, naming those it knows."""
    if manifest is None:
        return
    known = uow.reports.manifests()
    if manifest not in known:
        raise UnknownManifest(manifest, known)


@dataclass(frozen=True, slots=True)
class JobTimeline:
    """A job, the manifests it belongs to, and its ops in the order they started."""

    job: JobRecord
    manifests: list[str]
    ops: list[OpRecord]


def job_timeline(ledger: Ledger, job_id: str) -> JobTimeline:
    """The job, its manifests and its ops in the order they started."""
    with ledger.unit_of_work(read_only=True) as uow:
        job = uow.jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return JobTimeline(job, uow.jobs.manifests_of(job_id), list(uow.ops.list_for_job(job_id)))


def job_cleanup(
    ledger: Ledger,
    *,
    dry_run: bool,
    staging: Path | None = None,
    artifacts_root: Path | None = None,
    stale_file_age_s: float = 3600.0,
    abandoned_threshold_s: float = 600.0,
) -> CleanupReport:
    """Clear expired leases, abandon stale ops, delete stale ``.part`` files (or count them).

    ``artifacts_root`` is the run's output folder, which final paths are
    relative to (default: the staging folder's parent, as in OUT/.staging).
    """
    if dry_run:
        with ledger.unit_of_work(read_only=True) as uow:
            now = uow.now()
            leases = uow.jobs.count_expired_leases(now=now)
            ops = uow.ops.count_stale(now=now, threshold_s=abandoned_threshold_s)
        parts: list[Path] = []
        requeued: list[str] = []
        if staging is not None:
            report = reconcile_jobs(
                ledger, staging, stale_file_age_s, artifacts_root=artifacts_root, dry_run=True
            )
            parts, requeued = report.parts_deleted, report.jobs_requeued
        return CleanupReport(True, leases, ops, parts, requeued)
    leases = cleanup_stale_leases(ledger)
    ops = cleanup_stale_ops(ledger, abandoned_threshold_s=abandoned_threshold_s)
    if staging is None:
        return CleanupReport(False, leases, ops)
    report = reconcile_jobs(ledger, staging, stale_file_age_s, artifacts_root=artifacts_root)
    return CleanupReport(False, leases, ops, report.parts_deleted, report.jobs_requeued)


def retry_jobs(ledger: Ledger, job_ids: Collection[str] | None) -> RetryReport:
    """A fresh attempt budget for exhausted FAILED jobs: ``job_ids``, or all of them (None)."""
    with ledger.unit_of_work() as uow:
        refilled = uow.jobs.refill_attempts(job_ids, now=uow.now())
        skipped: dict[str, str] = {}
        if job_ids is not None:
            done = set(refilled)
            found = {job.job_id: job for job in uow.jobs.get_many(set(job_ids) - done)}
            for job_id in job_ids:
                if job_id in done:
                    continue
                job = found.get(job_id)
                skipped[job_id] = (
                    "no such job"
                    if job is None
                    else f"{job.state.value}, not an exhausted FAILED job"
                    if not job.exhausted
                    else "changed meanwhile"
                )
        uow.commit()
    return RetryReport(refilled, skipped)


def vacuum_ops(ledger: Ledger, *, older_than_s: float) -> VacuumReport:
    """Delete the ops of jobs that ended more than ``older_than_s`` ago, then compact.

    The jobs themselves stay (their state, result and last error); only the
    step-by-step history goes.  A job retried later simply runs its steps again.
    """
    if not older_than_s > 0:
        raise ConfigurationError(f"--older-than must be a positive duration, got {older_than_s}s")
    with ledger.unit_of_work(read_only=True) as uow:
        before = uow.reports.database_bytes()
        cutoff = uow.now() - older_than_s
    with ledger.unit_of_work() as uow:
        deleted = uow.ops.delete_for_jobs_ended_before(cutoff)
        uow.commit()
    ledger.compact()
    with ledger.unit_of_work(read_only=True) as uow:
        after = uow.reports.database_bytes()
    return VacuumReport(cutoff, deleted, before, after)


_HTTP_STATUS = re.compile(r"\bHTTP (\d{3})\b")
_REASONS = (
    ("too_many_redirects", re.compile(r"redirect", re.IGNORECASE)),
    ("too_large", re.compile(r"max_bytes|too large", re.IGNORECASE)),
    ("short_body", re.compile(r"server sent \S+ of", re.IGNORECASE)),
    ("timeout", re.compile(r"time(d)? ?out", re.IGNORECASE)),
    ("connection", re.compile(r"connect|connection|refused|reset", re.IGNORECASE)),
    ("staging_lost", re.compile(r"vanished|final file missing", re.IGNORECASE)),
    ("bad_url", re.compile(r"scheme|invalid url", re.IGNORECASE)),
    ("disk", re.compile(r"OSError|No space|Errno", re.IGNORECASE)),
)


def failure_reason(error: str | None) -> str:
    """A short, stable class for an error text (metrics labels, stats rows): ``http_404``..."""
    if not error:
        return "unknown"
    status = _HTTP_STATUS.search(error)
    if status is not None:
        return f"http_{status.group(1)}"
    for reason, pattern in _REASONS:
        if pattern.search(error):
            return reason
    return "other"


def _top_reasons(groups: Collection[FailureGroup], top: int) -> list[FailureReason]:
    counts: Counter[str] = Counter()
    exhausted: Counter[str] = Counter()
    examples: dict[str, str | None] = {}
    for group in groups:
        reason = failure_reason(group.error)
        counts[reason] += group.count
        if group.exhausted:
            exhausted[reason] += group.count
        examples.setdefault(reason, group.error)
    return [
        FailureReason(reason, count, exhausted[reason], examples.get(reason))
        # Most frequent first; ties by name, so the output is the same on every run.
        for reason, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
    ]
