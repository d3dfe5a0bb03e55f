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
