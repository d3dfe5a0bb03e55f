"""Job states as the v3 ledger names them.

The transition table and the terminal/success sets grow here with the job
lifecycle; the ledger only needs the full list of names for its CHECK constraint.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where a job stands.  Values are the strings stored in ``artifact_jobs.state``."""

    PLANNED = "PLANNED"
    LEASED = "LEASED"
    HEAD_DONE = "HEAD_DONE"
    RESUME_OK = "RESUME_OK"
    STREAMING = "STREAMING"
    FINALIZED = "FINALIZED"
    INDEXED = "INDEXED"
    DEDUPED = "DEDUPED"
    FAILED = "FAILED"
    SKIPPED_DUPLICATE = "SKIPPED_DUPLICATE"
