"""The operators' services behind ``docstokg job ...``, on SQLite and PostgreSQL.

Each test builds the known population of :mod:`tests.populations` with the
factories, at the time of the test's ManualClock, and asserts the exact
numbers each report gives: counts by state (with and without a window),
leases with their seconds left, throughput, retries, failure reasons,
nearest-rank duration percentiles, abandoned ops; and what each repair
(cleanup, retry, vacuum) changes, and what it leaves alone.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from docstokg import JobState, Ledger
from docstokg.errors import ConfigurationError, JobNotFound
from docstokg.metrics import exposition
from docstokg.services.operations import (
    failure_reason,
    job_cleanup,
    job_leases,
    job_stats,
    job_status,
    job_timeline,
    retry_jobs,
    vacuum_ops,
)
from tests import populations as P
from tests.conftest import ManualClock
from tests.dbtools import execute_sql
from tests.factories import JobFactory, OpFactory, bound_to
from tests.lifecycle import job_of


@pytest.fixture
def population(ledger: Ledger, clock: ManualClock) -> P.Population:
    return P.populate(ledger, clock.now)


def snapshot(url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every row of both tables, read behind the ledger's back, in a stable order."""
    return (
        execute_sql(url, "SELECT * FROM artifact_jobs ORDER BY job_id"),
        execute_sql(url, "SELECT * FROM artifact_ops ORDER BY op_key"),
    )


def nearest_rank(values: list[float], quantile: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]


# --- failure_reason ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (P.ERROR_404_A, "http_404"),
        (P.ERROR_503_OUT, "http_503"),
        (P.ERROR_TIMEOUT, "timeout"),
        ("ConnectError: [Errno 111] Connection refused", "connection"),
        ("too many redirects (10) from http://x/7", "too_many_redirects"),
        ("the body is larger than max_bytes (1,000)", "too_large"),
        ("unsupported URL scheme 'ftp'", "bad_url"),
        ("something nobody foresaw", "other"),
        (None, "unknown"),
        ("", "unknown"),
    ],
)
def test_failure_reason_classes(error: str | None, reason: str) -> None:
    assert failure_reason(error) == reason


# --- job status --------------------------------------------------------------------------


def test_status_counts_every_state_and_the_exhausted_failures(
    ledger: Ledger, population: P.Population
) -> None:
    report = job_status(ledger)
    assert report.window_s is None
    assert report.counts == P.COUNTS
    assert list(report.counts) == list(JobState)  # every state, in the path's order
    assert report.total == P.TOTAL
    assert report.exhausted == P.EXHAUSTED


def test_status_window_counts_only_jobs_created_in_it(
    ledger: Ledger, population: P.Population, clock: ManualClock
) -> None:
    report = job_status(ledger, window_s=P.WINDOW_S)
    assert report.window_s == P.WINDOW_S
    assert report.counts == P.WINDOW_COUNTS
    assert report.total == 4
    assert report.exhausted == P.WINDOW_EXHAUSTED

    clock.advance(550)  # planned_new (created 10 s before) is still in; the other three are out
    later = job_status(ledger, window_s=P.WINDOW_S)
    assert later.total == 1
    assert later.counts[JobState.PLANNED] == 1
    assert later.exhausted == 0


def test_status_of_an_empty_ledger_is_all_zeros(ledger: Ledger) -> None:
    report = job_status(ledger)
    assert report.counts == dict.fromkeys(JobState, 0)
    assert (report.total, report.exhausted) == (0, 0)


# --- job leases --------------------------------------------------------------------------


def test_leases_list_live_and_expired_soonest_expiry_first(
    ledger: Ledger, population: P.Population
) -> None:
    report = job_leases(ledger)
    assert (report.total, report.live, report.expired) == (4, 2, 2)
    ids = population.job_ids
    assert [
        (lease.job_id, lease.owner, lease.state, lease.seconds_left, lease.epoch)
        for lease in report.leases
    ] == [
        (ids["resume_ok"], "hostB:22:run2:w2", JobState.RESUME_OK, -500.0, 1),
        (ids["head_done"], "hostB:22:run2:w1", JobState.HEAD_DONE, -15.0, 2),
        (ids["leased"], "hostA:11:run1:w0", JobState.LEASED, 30.0, 3),
        (ids["streaming"], "hostA:11:run1:w1", JobState.STREAMING, 90.0, 5),
    ]
    assert next((lease.work_id, lease.artifact_id) for lease in report.leases) == (
        "W-resume_ok",
        "pdf",
    )


def test_leases_limit_keeps_the_totals(ledger: Ledger, population: P.Population) -> None:
    report = job_leases(ledger, limit=1)
    assert (report.total, report.live, report.expired) == (4, 2, 2)
    assert [lease.job_id for lease in report.leases] == [population.job_ids["resume_ok"]]


def test_a_lease_expires_as_time_passes(
    ledger: Ledger, population: P.Population, clock: ManualClock
) -> None:
    clock.advance(31)  # the 30 s lease is gone, the 90 s one is not
    report = job_leases(ledger)
    assert (report.live, report.expired) == (1, 3)
    left = {lease.job_id: lease.seconds_left for lease in report.leases}
    assert left[population.job_ids["leased"]] == -1.0
    assert left[population.job_ids["streaming"]] == 59.0


# --- job stats ---------------------------------------------------------------------------


def test_stats_summarise_the_population(ledger: Ledger, population: P.Population) -> None:
    report = job_stats(ledger)
    assert report.window_s == 3600.0
    assert report.counts == P.COUNTS
    assert report.exhausted == P.EXHAUSTED
    assert report.finished_in_window == P.FINISHED_IN_HOUR
    assert report.finished_per_minute == pytest.approx(P.FINISHED_IN_HOUR / 60)
    assert (report.retried_jobs, report.retry_attempts) == (P.RETRIED_JOBS, P.RETRY_ATTEMPTS)
    assert [(f.reason, f.count, f.exhausted) for f in report.failures] == P.FAILURES
    examples = {f.reason: f.example for f in report.failures}
    assert examples["http_404"] in {P.ERROR_404_A, P.ERROR_404_B}
    assert examples["http_503"] in {P.ERROR_503_OUT, P.ERROR_503_RETRY}
    assert examples["timeout"] == P.ERROR_TIMEOUT
    assert {d.kind: (d.count, d.p50_s, d.p95_s) for d in report.durations} == P.DURATIONS
    assert [d.kind for d in report.durations] == sorted(P.DURATIONS)
    assert report.abandoned_ops == P.ABANDONED_OPS
    assert report.database_bytes > 0


def test_stats_window_bounds_the_finished_jobs(
    ledger: Ledger, population: P.Population, clock: ManualClock
) -> None:
    # Finished 50 s (skipped), 100 s (deduped_recent), 1000 s and 5000 s ago.
    assert job_stats(ledger, window_s=60).finished_in_window == 1
    assert job_stats(ledger, window_s=60).finished_per_minute == pytest.approx(1.0)
    assert job_stats(ledger, window_s=999).finished_in_window == 2
    assert job_stats(ledger, window_s=6000).finished_in_window == 4
    clock.advance(7200)
    assert job_stats(ledger).finished_in_window == 0


def test_stats_top_limits_the_failure_reasons(ledger: Ledger, population: P.Population) -> None:
    report = job_stats(ledger, top=2)
    assert [f.reason for f in report.failures] == ["http_404", "http_503"]


def test_stats_refuse_a_window_that_is_not_positive(ledger: Ledger) -> None:
    for window_s in (0.0, -1.0):
        with pytest.raises(ConfigurationError, match="--window-s"):
            job_stats(ledger, window_s=window_s)


def test_duration_percentiles_are_nearest_rank_for_any_count(
    ledger: Ledger, clock: ManualClock
) -> None:
    # Sizes around the ranks' rounding points, values out of order and with ties.
    sizes = {"K01": 1, "K02": 2, "K19": 19, "K20": 20, "K21": 21, "K40": 40}
    durations = {
        kind: [round(((n * 37) % 23) * 0.25 + (n % 3) * 0.01, 2) for n in range(size)]
        for kind, size in sizes.items()
    }
    with ledger.unit_of_work() as uow, bound_to(uow.session):
        job = JobFactory()
        for kind, values in durations.items():
            for value in values:
                OpFactory(job=job, op_type=kind, status="SUCCEEDED", duration_s=value)
        OpFactory(job=job, op_type="K01", status="IN_PROGRESS", duration_s=None)  # not timed
        uow.commit()
    report = job_stats(ledger)
    assert {d.kind: (d.count, d.p50_s, d.p95_s) for d in report.durations} == {
        kind: (len(values), nearest_rank(values, 0.50), nearest_rank(values, 0.95))
        for kind, values in durations.items()
    }


def test_stats_of_an_empty_ledger(ledger: Ledger) -> None:
    report = job_stats(ledger)
    assert report.counts == dict.fromkeys(JobState, 0)
    assert report.finished_in_window == 0
    assert (report.retried_jobs, report.retry_attempts) == (0, 0)
    assert report.failures == []
    assert report.durations == []
    assert report.abandoned_ops == 0


# --- job show ----------------------------------------------------------------------------


def test_timeline_lists_the_ops_in_the_order_they_started(
    ledger: Ledger, population: P.Population
) -> None:
    timeline = job_timeline(ledger, population.job_ids["deduped_old"])
    job, ops = timeline.job, timeline.ops
    assert job.job_id == population.job_ids["deduped_old"]
    assert job.state is JobState.DEDUPED
    assert [(op.op_type, op.status, op.duration_s) for op in ops] == [
        ("HEAD", "SUCCEEDED", 0.02),
        ("STREAM", "ABANDONED", None),
        ("STREAM", "SUCCEEDED", 1.0),
        ("FINALIZE", "SUCCEEDED", 0.004),
    ]
    assert [op.started_at for op in ops] == sorted(op.started_at for op in ops)


def test_timeline_of_an_unknown_job(ledger: Ledger, population: P.Population) -> None:
    with pytest.raises(JobNotFound, match="no-such-job"):
        job_timeline(ledger, "no-such-job")


# --- job cleanup -------------------------------------------------------------------------


def _stage(staging: Path, population: P.Population) -> dict[str, Path]:
    """.part files: old and unowned (stale), old but leased (kept), recent (kept)."""
    staging.mkdir(parents=True)
    parts = {}
    two_hours_ago = time.time() - 7200  # a file's age is read from this host's clock
    for name, old in (("head_done", True), ("leased", True), ("planned_new", False)):
        part = staging / f"{population.job_ids[name]}.part"
        part.write_bytes(b"x" * 100)
        if old:
            os.utime(part, (two_hours_ago, two_hours_ago))
        parts[name] = part
    return parts


def test_cleanup_dry_run_counts_what_the_run_does_and_changes_nothing(
    ledger: Ledger, population: P.Population, db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    staging = tmp_path / "out" / ".staging"
    parts = _stage(staging, population)
    with ledger.unit_of_work() as uow, bound_to(uow.session):  # its file vanished: requeued
        lost = JobFactory(
            state=JobState.FINALIZED.value, final_path="artifacts/ab/lost.bin",
            created_at=clock.now - 4000, updated_at=clock.now - 4000,
        ).job_id  # fmt: skip
        uow.commit()
    before = snapshot(db_url)

    dry = job_cleanup(
        ledger, dry_run=True, staging=staging, abandoned_threshold_s=P.ABANDONED_THRESHOLD_S
    )
    assert dry.dry_run is True
    assert (dry.expired_leases, dry.stale_ops) == (P.EXPIRED_LEASES, P.STALE_OPS)
    assert dry.stale_parts == [parts["head_done"]]
    assert dry.jobs_requeued == [lost]
    assert snapshot(db_url) == before
    assert all(part.exists() for part in parts.values())

    done = job_cleanup(
        ledger, dry_run=False, staging=staging, abandoned_threshold_s=P.ABANDONED_THRESHOLD_S
    )
    assert done.dry_run is False
    assert (done.expired_leases, done.stale_ops) == (dry.expired_leases, dry.stale_ops)
    assert done.stale_parts == dry.stale_parts
    assert done.jobs_requeued == dry.jobs_requeued

    assert not parts["head_done"].exists()
    assert parts["leased"].exists()
    assert parts["planned_new"].exists()
    leases = job_leases(ledger)
    assert (leases.total, leases.live, leases.expired) == (2, 2, 0)
    assert job_stats(ledger).abandoned_ops == P.ABANDONED_OPS + P.STALE_OPS
    ids = population.job_ids
    with ledger.unit_of_work(read_only=True) as uow:
        statuses = {
            name: [op.status for op in uow.ops.list_for_job(ids[name]) if op.op_type == "STREAM"]
            for name in ("head_done", "streaming", "leased", "resume_ok")
        }
    assert statuses == {
        "head_done": ["ABANDONED"],
        "streaming": ["ABANDONED"],
        "leased": ["IN_PROGRESS"],
        "resume_ok": ["IN_PROGRESS"],
    }
    head_done = job_of(ledger, ids["head_done"])
    assert head_done.state is JobState.HEAD_DONE  # the state is kept, only the lease goes
    assert head_done.lease_owner is None
    assert job_of(ledger, lost).state is JobState.FAILED

    again = job_cleanup(
        ledger, dry_run=False, staging=staging, abandoned_threshold_s=P.ABANDONED_THRESHOLD_S
    )
    assert (again.expired_leases, again.stale_ops, again.stale_parts, again.jobs_requeued) == (
        0,
        0,
        [],
        [],
    )


def test_cleanup_without_staging_touches_no_file(
    ledger: Ledger, population: P.Population, tmp_path: Path
) -> None:
    parts = _stage(tmp_path / ".staging", population)
    dry = job_cleanup(ledger, dry_run=True, abandoned_threshold_s=P.ABANDONED_THRESHOLD_S)
    done = job_cleanup(ledger, dry_run=False, abandoned_threshold_s=P.ABANDONED_THRESHOLD_S)
    for report in (dry, done):
        assert (report.expired_leases, report.stale_ops) == (P.EXPIRED_LEASES, P.STALE_OPS)
        assert (report.stale_parts, report.jobs_requeued) == ([], [])
    assert all(part.exists() for part in parts.values())


# --- job retry ---------------------------------------------------------------------------


def test_retry_named_jobs_refills_only_exhausted_failures(
    ledger: Ledger, population: P.Population, clock: ManualClock
) -> None:
    ids = population.job_ids
    clock.advance(5)
    report = retry_jobs(
        ledger, [ids["f404_a"], ids["f503_retry"], "no-such-job", ids["deduped_recent"]]
    )
    assert report.refilled == [ids["f404_a"]]
    assert report.skipped == {
        ids["f503_retry"]: "FAILED, not an exhausted FAILED job",
        "no-such-job": "no such job",
        ids["deduped_recent"]: "DEDUPED, not an exhausted FAILED job",
    }
    refilled = job_of(ledger, ids["f404_a"])
    assert refilled.state is JobState.FAILED
    assert (refilled.attempts, refilled.max_attempts) == (0, 5)
    assert refilled.next_attempt_at == clock.now  # claimable at once
    assert refilled.updated_at == clock.now
    assert refilled.last_error == P.ERROR_404_A  # kept for the operator
    untouched = job_of(ledger, ids["f503_retry"])
    assert (untouched.attempts, untouched.next_attempt_at) == (2, population.now + 60)
    assert job_status(ledger).exhausted == P.EXHAUSTED - 1


def test_retry_all_refills_every_exhausted_failure(
    ledger: Ledger, population: P.Population
) -> None:
    ids = population.job_ids
    report = retry_jobs(ledger, None)
    assert sorted(report.refilled) == sorted(
        ids[name] for name in ("f404_a", "f404_b", "f404_c", "f503_out")
    )
    assert report.skipped == {}
    status = job_status(ledger)
    assert status.exhausted == 0
    assert status.counts == P.COUNTS  # still FAILED, now with attempts left
    assert job_of(ledger, ids["f404_c"]).attempts == 0
    assert job_of(ledger, ids["f503_retry"]).attempts == 2
    assert job_of(ledger, ids["timeout_retry"]).attempts == 1
    stats = job_stats(ledger)
    # Retries are counted from the ops: a new budget does not rewrite history.
    assert (stats.retried_jobs, stats.retry_attempts) == (P.RETRIED_JOBS, P.RETRY_ATTEMPTS)
    assert retry_jobs(ledger, None).refilled == []


# --- job vacuum --------------------------------------------------------------------------


def test_vacuum_deletes_only_the_ops_of_jobs_ended_before_the_cutoff(
    ledger: Ledger, population: P.Population, db_url: str, clock: ManualClock
) -> None:
    report = vacuum_ops(ledger, older_than_s=P.VACUUM_OLDER_THAN_S)
    assert report.cutoff == clock.now - P.VACUUM_OLDER_THAN_S
    assert report.ops_deleted == P.VACUUM_OPS_DELETED
    assert report.bytes_before > 0
    assert report.bytes_after > 0
    assert report.bytes_reclaimed == max(0, report.bytes_before - report.bytes_after)
    if ledger.dialect == "sqlite":  # VACUUM rewrote the file without the deleted rows
        assert report.bytes_after <= report.bytes_before

    jobs = dict(execute_sql(db_url, "SELECT job_id, state FROM artifact_jobs"))
    assert len(jobs) == P.TOTAL  # every job is kept
    ops_left = dict(
        execute_sql(db_url, "SELECT job_id, count(*) FROM artifact_ops GROUP BY job_id")
    )
    ids = population.job_ids
    for name in ("deduped_old", "f404_b", "f503_out"):
        assert ops_left.get(ids[name], 0) == 0, name
    expected_kept = {
        name: sum(1 for op in P.OPS if op[0] == name)
        for name in ("deduped_recent", "deduped_hour", "f503_retry", "head_done", "streaming")
    }
    assert {name: ops_left.get(ids[name], 0) for name in expected_kept} == expected_kept
    assert sum(ops_left.values()) == P.TOTAL_OPS - P.VACUUM_OPS_DELETED
    assert job_status(ledger).counts == P.COUNTS
    assert vacuum_ops(ledger, older_than_s=P.VACUUM_OLDER_THAN_S).ops_deleted == 0


def test_vacuum_refuses_a_cutoff_that_is_not_in_the_past(
    ledger: Ledger, population: P.Population, db_url: str
) -> None:
    before = snapshot(db_url)
    for older_than_s in (0.0, -5.0):
        with pytest.raises(ConfigurationError, match="--older-than"):
            vacuum_ops(ledger, older_than_s=older_than_s)
    assert snapshot(db_url) == before


# --- metrics -----------------------------------------------------------------------------


def test_exposition_reports_the_population(ledger: Ledger, population: P.Population) -> None:
    families = {
        family.name: family
        for family in text_string_to_metric_families(exposition(ledger).decode("utf-8"))
    }
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families.values()
        for sample in family.samples
    }
    assert families["docstokg_jobs"].type == "gauge"
    for state, count in P.COUNTS.items():
        assert samples["docstokg_jobs", (("state", state.value),)] == count
    assert samples["docstokg_jobs_exhausted", ()] == P.EXHAUSTED
    assert samples["docstokg_live_leases", ()] == P.LIVE_LEASES
    assert samples["docstokg_abandoned_ops", ()] == P.ABANDONED_OPS
    assert families["docstokg_retries"].type == "counter"
    assert samples["docstokg_retries_total", ()] == P.RETRY_ATTEMPTS
    for reason, count, _ in P.FAILURES:
        assert samples["docstokg_failed_jobs", (("reason", reason),)] == count
    assert families["docstokg_step_failures"].type == "counter"
    assert {
        labels[0][1]: value
        for (name, labels), value in samples.items()
        if name == "docstokg_step_failures_total"
    } == P.STEP_FAILURES
    assert families["docstokg_op_duration_seconds"].type == "histogram"
    for kind, (count, _, _) in P.DURATIONS.items():
        assert samples["docstokg_op_duration_seconds_count", (("kind", kind),)] == count
        assert samples["docstokg_op_duration_seconds_bucket", (("kind", kind), ("le", "+Inf"))] == (
            count
        )
    head = [op[3] for op in P.OPS if op[1] == "HEAD" and op[3] is not None]
    assert samples["docstokg_op_duration_seconds_sum", (("kind", "HEAD"),)] == pytest.approx(
        sum(head)
    )
    for bound in ("0.01", "0.05", "0.1", "0.5"):
        assert samples[
            "docstokg_op_duration_seconds_bucket", (("kind", "HEAD"), ("le", bound))
        ] == sum(1 for value in head if value <= float(bound))


def test_a_run_adds_its_own_failures_counter_by_reason(
    ledger: Ledger, population: P.Population
) -> None:
    from prometheus_client import generate_latest

    from docstokg.metrics import RunCounters, registry_for

    counters = RunCounters()
    counters.failed("HTTP 404 Not Found for http://x/1 (permanent: not retried)")
    counters.failed("HTTP 503 Service Unavailable for http://x/2")
    counters.failed("HTTP 503 Service Unavailable for http://x/2")
    text = generate_latest(registry_for(ledger, counters)).decode()
    assert 'docstokg_failures_total{reason="http_404"} 1.0' in text
    assert 'docstokg_failures_total{reason="http_503"} 2.0' in text
    assert "# TYPE docstokg_failures_total counter" in text
    # The ledger's own metrics are served beside it.
    assert 'docstokg_jobs{state="DEDUPED"}' in text
