"""Immutable records that repositories hand out instead of ORM objects.

A record is a snapshot taken inside one unit of work; holding it after the
transaction ended cannot reach back into the database or go stale silently.
"""

from __future__ import annotations

from dataclasses import dataclass

from docstokg.states import JobState


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What a user asks for: fetch ``canonical_url`` as one artifact of one work."""

    work_id: str
    artifact_id: str
    canonical_url: str
    expected_sha256: str | None = None  # what the manifest vouched for, if anything


@dataclass(frozen=True, slots=True)
class JobRecord:
    job_id: str
    work_id: str
    artifact_id: str
    canonical_url: str
    state: JobState
    lease_owner: str | None
    lease_until: float | None
    created_at: float
    updated_at: float
    idempotency_key: str
    lease_epoch: int
    attempts: int
    max_attempts: int
    next_attempt_at: float | None
    last_error: str | None
    sha256: str | None
    final_path: str | None
    size_bytes: int | None
    content_type: str | None
    expected_sha256: str | None

    @property
    def exhausted(self) -> bool:
        """A FAILED job with no attempt left: terminal until an operator retries it."""
        return self.state is JobState.FAILED and self.attempts >= self.max_attempts


@dataclass(frozen=True, slots=True)
class StoredFile:
    """Where the ledger says an ended job's bytes are, and what they must be."""

    job_id: str
    state: str
    sha256: str | None  # None (as the two below) only in a ledger edited by hand
    final_path: str | None
    size_bytes: int | None


@dataclass(frozen=True, slots=True)
class PlannedJob:
    """The outcome of planning one job: its id, and whether this call created it."""

    job_id: str
    created: bool


@dataclass(frozen=True, slots=True)
class OpRecord:
    op_key: str
    job_id: str
    op_type: str
    started_at: float
    finished_at: float | None
    result_code: str | None
    result_json: str | None
    status: str
    attempt: int
    lease_epoch: int
    error: str | None
    duration_s: float | None


@dataclass(frozen=True, slots=True)
class Lease:
    """A worker's claim on one job, and the fencing token every write must show.

    ``epoch`` grows with every grant of the job: a write naming an older epoch
    comes from a holder that lost the job, and is refused.
    """

    job_id: str
    owner: str
    epoch: int
    lease_until: float
    work_id: str
    artifact_id: str
    canonical_url: str
    state: JobState
    expected_sha256: str | None = None  # the download must hash to this, when set


@dataclass(frozen=True, slots=True)
class OpWrite:
    """One op row for :meth:`OpRepository.record`, fenced by ``lease``.

    Made by :meth:`start`, :meth:`finish` or :meth:`done`, which say what the
    row must find: no op (start, done) or the op running under ``lease``
    (finish).
    """

    lease: Lease
    op_key: str
    op_type: str
    result_json: str | None = None
    running: bool = False  # with a result: the op was started earlier and is running

    @classmethod
    def start(cls, lease: Lease, op_key: str, op_type: str) -> OpWrite:
        """A new op, inserted IN_PROGRESS."""
        return cls(lease, op_key, op_type)

    @classmethod
    def finish(cls, lease: Lease, op_key: str, op_type: str, result_json: str) -> OpWrite:
        """The success of an op started earlier under ``lease`` and still running."""
        return cls(lease, op_key, op_type, result_json, running=True)

    @classmethod
    def done(cls, lease: Lease, op_key: str, op_type: str, result_json: str) -> OpWrite:
        """A new op inserted already SUCCEEDED: its whole work is in the same transaction."""
        return cls(lease, op_key, op_type, result_json)
