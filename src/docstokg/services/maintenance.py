"""Cleaning up after crashes: stale leases, abandoned ops, debris on disk.

None of it is needed for correctness (expired leases are claimable and stale
ops are taken over anyway); it keeps the ledger's picture honest for
operators and the staging folder from filling up.  It changes nothing but
expired leases, ops no live holder owns, and files no live lease owns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from docstokg.ledger import Ledger
from docstokg.staging import CHECKPOINT_SUFFIX, PART_SUFFIX, checkpoint_for, part_for, part_job_ids


@dataclass(slots=True)
class ReconcileReport:
    """What one reconciliation pass did."""

    parts_deleted: list[Path] = field(default_factory=list)
    parts_kept_live: list[Path] = field(default_factory=list)
    parts_kept_recent: list[Path] = field(default_factory=list)
    jobs_requeued: list[str] = field(default_factory=list)


def _leased_now(ledger: Ledger, job_ids: tuple[str, ...]) -> bool:
    with ledger.unit_of_work(read_only=True) as uow:
        return bool(uow.jobs.live_leases(list(job_ids), now=uow.now()))


def cleanup_stale_leases(ledger: Ledger, now: float | None = None) -> int:
    """Clear every expired lease (the job's state is kept); returns how many."""
    with ledger.unit_of_work() as uow:
        cleared = uow.jobs.expire_stale_leases(now=uow.now() if now is None else now)
        uow.commit()
    return cleared


def cleanup_stale_ops(
    ledger: Ledger, now: float | None = None, abandoned_threshold_s: float = 600
) -> int:
    """Mark ABANDONED the IN_PROGRESS ops older than the threshold that no live holder owns.

    The next holder of their job takes them over and runs them again.
    """
    with ledger.unit_of_work() as uow:
        abandoned = uow.ops.abandon_stale(
            now=uow.now() if now is None else now,
            threshold_s=abandoned_threshold_s,
            error="abandoned: no live lease holder (cleanup_stale_ops)",
        )
        uow.commit()
    return abandoned


def _delete_orphan_checkpoints(staging_root: Path, max_age_s: float) -> None:
    """Delete old checkpoints whose part is gone (a crash between the two unlinks)."""
    if not staging_root.is_dir():
        return
    for checkpoint in staging_root.glob(f"*{PART_SUFFIX}{CHECKPOINT_SUFFIX}"):
        part = part_for(checkpoint)
        try:
            old = time.time() - checkpoint.lstat().st_mtime > max_age_s
        except FileNotFoundError:
            continue
        if old and not part.exists():
            checkpoint.unlink(missing_ok=True)


def reconcile_jobs(
    ledger: Ledger,
    staging_root: Path,
    max_age_s: float = 3600,
    *,
    artifacts_root: Path | None = None,
    dry_run: bool = False,
) -> ReconcileReport:
    """Delete stale ``.part`` files and requeue finalized jobs whose file vanished.

    A part (``<job_id>.<epoch>.part``, or ``<job_id>.part``) older than
    ``max_age_s`` is deleted unless its job holds a live lease.  A FINALIZED
    or INDEXED job whose ``final_path`` (absolute, or relative to
    ``artifacts_root``, default the staging folder's parent) no longer exists
    goes back to FAILED with its ops ABANDONED, so the next holder fetches it
    again.  Disk is read outside any transaction.  ``dry_run`` reports what
    would be deleted and requeued, changing nothing.
    """
    staging_root = Path(staging_root)
    base = Path(artifacts_root) if artifacts_root is not None else staging_root.parent
    parts = sorted(staging_root.glob(f"*{PART_SUFFIX}")) if staging_root.is_dir() else []

    with ledger.unit_of_work(read_only=True) as uow:
        now = uow.now()
        owners = {part: part_job_ids(part.name) for part in parts}
        live = uow.jobs.live_leases(sorted({i for ids in owners.values() for i in ids}), now=now)
        finalized = uow.jobs.finalized_files(now=now)

    report = ReconcileReport()
    for part in parts:
        job_ids = owners[part]
        if any(job_id in live for job_id in job_ids):
            report.parts_kept_live.append(part)
            continue
        try:
            # A file's age is measured by the clock that stamped it: this host's.
            age = time.time() - part.stat().st_mtime
        except FileNotFoundError:
            continue  # its worker finished it meanwhile
        if age <= max_age_s:
            report.parts_kept_recent.append(part)
        elif _leased_now(ledger, job_ids):  # granted since the first look: keep it
            report.parts_kept_live.append(part)
        else:
            if not dry_run:
                part.unlink(missing_ok=True)
                checkpoint_for(part).unlink(missing_ok=True)
            report.parts_deleted.append(part)
    if not dry_run:
        _delete_orphan_checkpoints(staging_root, max_age_s)

    missing = [job_id for job_id, final_path in finalized if not (base / final_path).exists()]
    if dry_run:
        report.jobs_requeued.extend(missing)
        return report
    if missing:
        with ledger.unit_of_work() as uow:
            requeued = uow.jobs.requeue(missing, error="final file missing (reconcile)", now=now)
            uow.ops.abandon_for_jobs(requeued, error="final file missing; redo (reconcile)")
            uow.commit()
        report.jobs_requeued.extend(requeued)
    return report
