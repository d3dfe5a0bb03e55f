"""Planning: one row per (work_id, artifact_id, canonical_url), whoever asks and how often."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from functools import partial

from docstokg.errors import ConfigurationError
from docstokg.iterables import batched
from docstokg.ledger import JobSpec, Ledger
from docstokg.ledger.repositories import DEFAULT_MAX_ATTEMPTS
from docstokg.states import SUCCESS_STATES

PlanRow = JobSpec | tuple[str, str, str] | Mapping[str, str]

# Rows per transaction: large enough to amortise a commit, small enough that
# SQLite's write lock is never held for long while a big manifest is planned.
PLAN_TRANSACTION_ROWS = 10_000
# Job ids per membership insert: one bound parameter each, far below SQLite's limit.
MEMBERSHIP_TRANSACTION_ROWS = 5_000
MAX_MANIFEST_NAME = 200


def plan_job_if_absent(
    ledger: Ledger, *, work_id: str, artifact_id: str, canonical_url: str
) -> str:
    """The job_id of this artifact's job, planning it if it is new."""
    with ledger.unit_of_work() as uow:
        planned = uow.jobs.plan(JobSpec(work_id, artifact_id, canonical_url), now=uow.now())
        uow.commit()
    return planned.job_id


def plan_jobs(
    ledger: Ledger, rows: Iterable[PlanRow], *, max_attempts: int = DEFAULT_MAX_ATTEMPTS
) -> int:
    """Plan every row not planned yet; returns how many jobs were new.

    New jobs get ``max_attempts`` tries; jobs planned before keep their budget.

    Rows are :class:`JobSpec`, ``(work_id, artifact_id, canonical_url)``
    tuples, or mappings with those keys.  Each batch commits on its own, so an
    interrupted call is simply repeated: rows already planned are skipped.
    """
    created = 0
    specs = (_spec(row) for row in rows)
    for batch in batched(specs, PLAN_TRANSACTION_ROWS):
        # Keyed by the job triple: a batch whose COMMIT was lost is planned again harmlessly.
        created += ledger.retrying(partial(_plan_batch, ledger, batch, max_attempts))
    return created


def _plan_batch(ledger: Ledger, batch: list[JobSpec], max_attempts: int) -> int:
    with ledger.unit_of_work() as uow:
        planned = uow.jobs.plan_many(batch, now=uow.now(), max_attempts=max_attempts)
        uow.commit()
    return planned


def _spec(row: PlanRow) -> JobSpec:
    if isinstance(row, JobSpec):
        return row
    if isinstance(row, Mapping):
        try:
            return JobSpec(
                row["work_id"],
                row["artifact_id"],
                row["canonical_url"],
                row.get("expected_sha256"),
            )
        except KeyError as missing:
            raise ConfigurationError(
                f"plan row {dict(row)!r} lacks {missing}; rows need work_id, artifact_id "
                "and canonical_url"
            ) from None
    if isinstance(row, tuple | list) and len(row) == 3:
        work_id, artifact_id, canonical_url = row
        return JobSpec(work_id, artifact_id, canonical_url)
    raise ConfigurationError(
        f"plan row {row!r} is not a JobSpec, a (work_id, artifact_id, canonical_url) "
        "tuple or a mapping with those keys"
    )


def add_to_manifest(ledger: Ledger, manifest: str, job_ids: Iterable[str]) -> int:
    """Make planned jobs members of ``manifest``; returns how many joined it now.

    A run of a manifest claims only its members, so several manifests share
    one ledger without one run fetching another's artifacts; a job in two
    manifests is claimed by the runs of either, and fetched once.  Keyed by
    (manifest, job): repeating a batch whose COMMIT was lost is harmless.
    """
    check_manifest_name(manifest)
    added = 0
    for batch in batched(job_ids, MEMBERSHIP_TRANSACTION_ROWS):
        added += ledger.retrying(partial(_add_batch, ledger, manifest, batch))
    return added


def _add_batch(ledger: Ledger, manifest: str, batch: list[str]) -> int:
    with ledger.unit_of_work() as uow:
        added = uow.jobs.add_to_manifest(manifest, batch, now=uow.now())
        uow.commit()
    return added


def usable_manifest_name(name: str) -> str:
    """``name`` made one an operator can type back: printable, trimmed, at most 200 characters.

    For names derived from a file's name, which a run must not refuse.
    """
    shown = "".join(char if char.isprintable() else "?" for char in name).strip() or "manifest"
    if len(shown) <= MAX_MANIFEST_NAME:
        return shown
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{shown[: MAX_MANIFEST_NAME - 9]}~{digest}"


def check_manifest_name(name: str) -> None:
    """Refuse a manifest name no operator could type back (empty, control characters, huge)."""
    if not name or len(name) > MAX_MANIFEST_NAME or not name.isprintable() or name != name.strip():
        raise ConfigurationError(
            f"manifest name {name[:80]!r} is not usable: give 1 to {MAX_MANIFEST_NAME} "
            "printable characters, without leading or trailing spaces (--manifest-name)"
        )


def follow_expected_checksums(ledger: Ledger, expected: Mapping[str, str | None]) -> list[str]:
    """Record the checksums a manifest now names for planned jobs; returns jobs to fetch again.

    The manifest is the source of a job's ``expected_sha256``: a corrected
    checksum must not stay frozen at the value first planned.  A job that
    ended FAILED out of attempts gets a fresh budget (the new checksum may
    match), and one already stored with other bytes is requeued, so its next
    fetch is held to the new checksum.  Returns the ids of those two kinds.
    """
    if not expected:
        return []
    with ledger.unit_of_work() as uow:
        now = uow.now()
        uow.jobs.set_expected_sha256(expected, now=now)
        jobs = uow.jobs.get_many(expected)
        refilled = uow.jobs.refill_attempts([job.job_id for job in jobs if job.exhausted], now=now)
        stored_otherwise = [
            job.job_id
            for job in jobs
            if job.state in SUCCESS_STATES
            and job.expected_sha256 is not None
            and job.sha256 != job.expected_sha256
        ]
        requeued = uow.jobs.requeue(
            stored_otherwise, error="the manifest's sha256 changed; fetched again", now=now
        )
        uow.ops.abandon_for_jobs(requeued, error="redo: the manifest's sha256 changed")
        uow.commit()
    return [*refilled, *requeued]
