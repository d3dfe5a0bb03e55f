"""Lifecycle-service behaviours that a mutation test (bench/mutants.py) found unguarded.

Each test here failed against one mutant the rest of the suite let through:
reconcile giving an exhausted job back no attempt, and DEDUPE leaving a
duplicate pointing at its own path instead of the stored copy.
"""

from __future__ import annotations

from pathlib import Path

from docstokg import JobState, Lease, Ledger, reconcile_jobs, release_lease, run_effect
from docstokg.keys import op_key
from docstokg.services import dedupe_job, index_job
from docstokg.services.content import StoredContent
from tests.dbtools import execute_sql
from tests.lifecycle import job_of, plan, take, walk

SHA = "cd" * 32


def _finalized(ledger: Ledger, n: int, owner: str) -> Lease:
    """Plan job ``n``, take it and walk it to FINALIZED (its STREAM op done)."""
    plan(ledger, n)
    lease = take(ledger, owner)
    run_effect(ledger, lease, kind="STREAM", opkey=op_key("STREAM", lease.job_id),
               effect_fn=lambda: {"bytes": 7})  # fmt: skip
    walk(ledger, lease, JobState.FINALIZED)
    return lease


def test_reconcile_gives_an_exhausted_job_whose_file_vanished_one_attempt_back(
    ledger: Ledger, db_url: str, tmp_path: Path
) -> None:
    """A lost file is not the job's failure: it must be fetched again, whatever its budget.

    The ledger never finishes a job on a spent budget itself, so the row is
    set up behind its back (as a ledger edited by hand, or written by an
    older version, would have it).
    """
    lease = _finalized(ledger, 0, "worker-a")
    stored = tmp_path / "artifacts" / f"{lease.job_id}.pdf"
    stored.parent.mkdir()
    stored.write_bytes(b"%PDF-1.7")
    content = StoredContent(SHA, 8, f"artifacts/{lease.job_id}.pdf", "application/pdf")
    index_job(ledger, lease, content)
    assert release_lease(ledger, lease)
    execute_sql(
        db_url, f"UPDATE artifact_jobs SET attempts = max_attempts WHERE job_id = '{lease.job_id}'"
    )
    stored.unlink()

    report = reconcile_jobs(ledger, tmp_path / ".staging")

    assert report.jobs_requeued == [lease.job_id]
    requeued = job_of(ledger, lease.job_id)
    assert requeued.state is JobState.FAILED
    assert requeued.attempts == requeued.max_attempts - 1
    assert not requeued.exhausted
    again = take(ledger, "worker-b")  # claimable at once: the next worker fetches it again
    assert (again.job_id, again.state) == (lease.job_id, JobState.LEASED)


def test_a_duplicate_stored_under_another_path_points_at_the_first_copy(ledger: Ledger) -> None:
    """DEDUPE: the duplicate's final_path becomes the stored job's, whatever its own was.

    In a run both paths are the same content-addressed one; a caller of the
    services (or a ledger whose first copy was stored under an older layout)
    can hand DEDUPE another path, and the job must then name the copy that
    is kept, not a file nobody vouches for.
    """
    first = _finalized(ledger, 1, "worker-a")
    first_content = StoredContent(SHA, 7, f"artifacts/{SHA[:2]}/{SHA}", None)
    index_job(ledger, first, first_content)
    assert dedupe_job(ledger, first, first_content) == {
        "outcome": JobState.DEDUPED.value,
        "duplicate_of": None,
    }

    second = _finalized(ledger, 2, "worker-b")
    own_copy = StoredContent(SHA, 7, "legacy/W2.pdf", None)
    index_job(ledger, second, own_copy)
    assert job_of(ledger, second.job_id).final_path == "legacy/W2.pdf"

    assert dedupe_job(ledger, second, own_copy) == {
        "outcome": JobState.SKIPPED_DUPLICATE.value,
        "duplicate_of": first.job_id,
    }
    duplicate = job_of(ledger, second.job_id)
    assert duplicate.state is JobState.SKIPPED_DUPLICATE
    assert duplicate.final_path == first_content.final_path
    assert job_of(ledger, first.job_id).final_path == first_content.final_path
