"""DownloadRun end to end, in-process: a real loopback server, a real ledger, real files.

Every test builds a manifest file, runs :class:`DownloadRun` against the
:class:`ArtifactServer` and checks three independent witnesses: the run's
summary, the ledger's rows (read through a Ledger of its own) and what the
server saw on the wire.  Tests that take a database run on SQLite and on
PostgreSQL.  The scripted misbehaviours of a server (faults, short bodies,
refused ranges, redirect loops, too-large bodies) live in
``test_runner_faults.py``; this file holds the normal paths, repeated runs,
duplicates, shared leases, and unusual jobs (an id adopted from v3, a bug
that breaks one job and not the run).
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from time import monotonic

import pytest

from docstokg import JobState, LeaseLost, Ledger, lease_next_job, release_lease, renew_lease
from docstokg.ledger.models import OP_SUCCEEDED
from docstokg.run.pipeline import Outcome
from docstokg.run.steps import PIPELINE, STREAM, JobContext, StepResult
from docstokg.services import plan_job_if_absent
from docstokg.testing.server import Artifact, ArtifactServer, generated_body
from tests.factories import JobFactory, bound_to
from tests.runner_kit import (
    SignalBegin,
    StopOnOutcome,
    artifact_files,
    assert_stored,
    job_record,
    make_config,
    make_run,
    ops_by_type,
    part_files,
    run_download,
    write_manifest,
)

# -- one download, and doing it again -------------------------------------------------


def test_one_download_is_stored_indexed_and_recorded(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    body = generated_body("one", 200_000)
    url = server.add("/doc.pdf", Artifact(body=body, content_type="application/pdf"))
    manifest = write_manifest(tmp_path / "m.jsonl", [("W1", "pdf", url)])
    out = tmp_path / "out"

    summary = run_download(manifest, out, make_config(), db_url=empty_db_url)

    assert summary.exit_code == 0
    assert summary.ledger is True
    assert summary.counts == {"stored": 1, "duplicates": 0, "failed": 0, "unfinished": 0}
    (report,) = summary.jobs
    assert report.state == JobState.DEDUPED.value
    assert report.ended is True
    assert report.attempts == 0
    assert report.error is None
    assert_stored(out, report, body)
    assert summary.bytes_fetched == len(body)
    assert part_files(out) == []
    assert artifact_files(out) == [out / str(report.final_path)]

    job = job_record(empty_db_url, report.job_id)
    assert job.state is JobState.DEDUPED
    assert job.sha256 == hashlib.sha256(body).hexdigest()
    assert job.size_bytes == len(body)
    assert job.final_path == report.final_path
    assert job.content_type == "application/pdf"
    assert job.lease_owner is None  # finishing ends the lease
    assert job.last_error is None

    ops = ops_by_type(empty_db_url, report.job_id)
    assert sorted(ops) == sorted(["HEAD", "STREAM", "FINALIZE", "INDEX", "DEDUPE"])
    for kind, recorded in ops.items():
        assert len(recorded) == 1, kind
        assert recorded[0].status == OP_SUCCEEDED, kind
        assert recorded[0].attempt == 1, kind

    stats = server.stats("/doc.pdf")
    assert (stats.head_requests, stats.get_requests, stats.full_gets) == (1, 1, 1)


def test_a_repeat_run_with_the_ledger_fetches_nothing(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    bodies = {f"/r/{n}": generated_body(f"repeat-{n}", 50_000 + n) for n in range(3)}
    rows = [
        (f"W{n}", "pdf", server.add(path, Artifact(body=body)))
        for n, (path, body) in enumerate(bodies.items())
    ]
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    out = tmp_path / "out"
    first = run_download(manifest, out, make_config(), db_url=empty_db_url)
    assert first.exit_code == 0
    before = server.total()

    second = run_download(manifest, out, make_config(), db_url=empty_db_url)

    after = server.total()
    assert after.get_requests == before.get_requests
    assert after.head_requests == before.head_requests
    assert after.body_bytes_sent == before.body_bytes_sent
    assert second.exit_code == 0
    assert second.bytes_fetched == 0
    assert [job.state for job in second.jobs] == [JobState.DEDUPED.value] * 3
    assert [(j.job_id, j.sha256, j.final_path) for j in second.jobs] == [
        (j.job_id, j.sha256, j.final_path) for j in first.jobs
    ]
    for report, body in zip(second.jobs, bodies.values(), strict=True):
        assert_stored(out, report, body)


def test_without_the_ledger_files_land_in_the_same_layout_and_nothing_is_remembered(
    server: ArtifactServer, tmp_path: Path
) -> None:
    bodies = {f"/p/{n}": generated_body(f"plain-{n}", 40_000 + n) for n in range(3)}
    rows = [
        (f"W{n}", "pdf", server.add(path, Artifact(body=body)))
        for n, (path, body) in enumerate(bodies.items())
    ]
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    out = tmp_path / "out"
    config = make_config(enabled=False)

    first = run_download(manifest, out, config, db_url=None)
    after_first = server.total()
    second = run_download(manifest, out, config, db_url=None)
    after_second = server.total()

    for summary in (first, second):
        assert summary.ledger is False
        assert summary.db_url is None
        assert summary.exit_code == 0
        assert [job.state for job in summary.jobs] == [JobState.DEDUPED.value] * 3
        for report, body in zip(summary.jobs, bodies.values(), strict=True):
            assert_stored(out, report, body)
    # Nothing remembered: the second run fetches every artifact again.
    assert after_first.get_requests == 3
    assert after_second.get_requests == 6
    assert after_second.head_requests == 6
    assert second.bytes_fetched == sum(len(body) for body in bodies.values())
    assert len(artifact_files(out)) == 3
    assert part_files(out) == []
    assert not (out / "manifest.sqlite3").exists()
    database_files = [
        path for path in tmp_path.rglob("*") if path.suffix in {".sqlite3", ".db", ".sqlite"}
    ]
    assert database_files == []


# -- the manifest -----------------------------------------------------------------------


def test_malformed_rows_are_skipped_and_reported_with_their_lines(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    good = generated_body("good", 10_000)
    url = server.add("/good", Artifact(body=good))
    other = generated_body("other", 12_000)
    other_url = server.add("/other", Artifact(body=other))
    lines = [
        json.dumps({"work_id": "W1", "artifact_id": "pdf", "url": url}),  # 1
        "{not json",  # 2
        json.dumps({"work_id": "W2", "artifact_id": "pdf"}),  # 3: no url
        json.dumps({"work_id": "W3", "artifact_id": "pdf", "url": "ftp://x.org/a"}),  # 4
        "[1, 2]",  # 5
        json.dumps({"work_id": "W4", "artifact_id": "pdf", "url": other_url}),  # 6
        json.dumps({"work_id": "W1", "artifact_id": "pdf", "url": url}),  # 7: a repeat
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest = write_manifest(path, None)
    out = tmp_path / "out"

    summary = run_download(manifest, out, make_config(), db_url=empty_db_url)

    assert [problem.line for problem in summary.skipped_rows] == [2, 3, 4, 5]
    reasons = [problem.reason for problem in summary.skipped_rows]
    assert "invalid JSON" in reasons[0]
    assert "url" in reasons[1]
    assert "ftp" in reasons[2]
    assert "not a JSON object" in reasons[3]
    assert summary.duplicate_rows == 1
    assert [(job.work_id, job.state) for job in summary.jobs] == [
        ("W1", JobState.DEDUPED.value),
        ("W4", JobState.DEDUPED.value),
    ]
    assert_stored(out, summary.jobs[0], good)
    assert_stored(out, summary.jobs[1], other)
    assert summary.exit_code == 1  # skipped rows are work the run did not do
    skipped = summary.to_json()["skipped_rows"]
    assert isinstance(skipped, list)
    assert [entry["line"] for entry in skipped] == [2, 3, 4, 5]


# -- duplicates -------------------------------------------------------------------------


def test_identical_content_at_two_urls_is_stored_once(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    body = generated_body("same", 120_000)
    first_url = server.add("/mirror/a", Artifact(body=body))
    second_url = server.add("/mirror/b", Artifact(body=body))
    manifest = write_manifest(
        tmp_path / "m.jsonl", [("W1", "pdf", first_url), ("W2", "pdf", second_url)]
    )
    out = tmp_path / "out"

    summary = run_download(manifest, out, make_config(), db_url=empty_db_url, workers=2)

    assert summary.exit_code == 0
    assert sorted(job.state for job in summary.jobs) == [
        JobState.DEDUPED.value,
        JobState.SKIPPED_DUPLICATE.value,
    ]
    assert summary.counts["stored"] == 1
    assert summary.counts["duplicates"] == 1
    for report in summary.jobs:
        assert_stored(out, report, body)
    assert len({job.final_path for job in summary.jobs}) == 1
    assert artifact_files(out) == [out / str(summary.jobs[0].final_path)]
    assert part_files(out) == []
    records = [job_record(empty_db_url, report.job_id) for report in summary.jobs]
    assert {record.sha256 for record in records} == {hashlib.sha256(body).hexdigest()}
    assert {record.final_path for record in records} == {summary.jobs[0].final_path}


def test_duplicates_decided_under_concurrency_keep_exactly_one_owner(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    body = generated_body("crowd", 30_000)
    rows = [(f"W{n}", "pdf", server.add(f"/crowd/{n}", Artifact(body=body))) for n in range(20)]
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    out = tmp_path / "out"

    summary = run_download(manifest, out, make_config(), db_url=empty_db_url, workers=8)

    assert summary.exit_code == 0
    states = [job.state for job in summary.jobs]
    assert states.count(JobState.DEDUPED.value) == 1
    assert states.count(JobState.SKIPPED_DUPLICATE.value) == 19
    sha = hashlib.sha256(body).hexdigest()
    assert {job.sha256 for job in summary.jobs} == {sha}
    assert {job.final_path for job in summary.jobs} == {f"artifacts/{sha[:2]}/{sha}"}
    assert artifact_files(out) == [out / "artifacts" / sha[:2] / sha]
    assert part_files(out) == []
    assert server.total().get_requests == 20  # each job fetched its own URL once
    owner = next(job for job in summary.jobs if job.state == JobState.DEDUPED.value)
    with Ledger.connect(empty_db_url) as ledger:
        for report in summary.jobs:
            if report.job_id == owner.job_id:
                continue
            with ledger.unit_of_work(read_only=True) as uow:
                ops = uow.ops.list_for_job(report.job_id)
            dedupe = [op for op in ops if op.op_type == "DEDUPE"]
            assert len(dedupe) == 1
            assert dedupe[0].status == OP_SUCCEEDED
            assert json.loads(str(dedupe[0].result_json)) == {
                "outcome": JobState.SKIPPED_DUPLICATE.value,
                "duplicate_of": owner.job_id,
            }


# -- leases held by others --------------------------------------------------------------


def test_a_job_leased_elsewhere_is_waited_for_and_taken_over_when_its_lease_expires(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    body = generated_body("ghost", 20_000)
    url = server.add("/ghost", Artifact(body=body))
    manifest = write_manifest(tmp_path / "m.jsonl", [("W1", "pdf", url)])
    (row,) = manifest.rows
    with Ledger.connect(empty_db_url) as ledger:
        ledger.upgrade()
        job_id = plan_job_if_absent(
            ledger, work_id=row.work_id, artifact_id=row.artifact_id, canonical_url=row.url
        )
        ghost = lease_next_job(ledger, owner="ghost", ttl_s=1.0)
        assert ghost is not None
        assert ghost.job_id == job_id

        started = monotonic()
        summary = run_download(
            manifest, tmp_path / "out", make_config(lease_ttl_s=0.4), db_url=empty_db_url
        )
        waited = monotonic() - started

        assert summary.exit_code == 0
        (report,) = summary.jobs
        assert report.job_id == job_id
        assert report.state == JobState.DEDUPED.value
        assert_stored(tmp_path / "out", report, body)
        job = job_record(empty_db_url, job_id)
        assert job.lease_epoch > ghost.epoch
        ops = ops_by_type(empty_db_url, job_id)
        (head,) = ops["HEAD"]
        # Nothing was fetched while the ghost's lease was live ...
        assert head.started_at >= ghost.lease_until
        assert head.lease_epoch > ghost.epoch
        assert waited >= 0.5
        # ... and the ghost, had it come back, could write nothing.
        assert release_lease(ledger, ghost) is False
        with pytest.raises(LeaseLost):
            renew_lease(ledger, ghost, ttl_s=1.0)
    assert server.stats("/ghost").get_requests == 1


def test_two_runs_on_one_ledger_share_the_work_and_fetch_everything_once(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    """Run B starts while run A holds a job mid-download: B waits for it instead of fetching it."""
    bodies = {f"/shared/{n}": generated_body(f"shared-{n}", 40_000 + n) for n in range(6)}
    rows = [
        (f"W{n}", "pdf", server.add(path, Artifact(body=body)))
        for n, (path, body) in enumerate(bodies.items())
    ]
    slow = generated_body("shared-slow", 300_000)
    rows.append(("W-slow", "pdf", server.add("/slow", Artifact(body=slow, pause_after=100_000))))
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    out = tmp_path / "out"
    run_a = make_run(manifest, out, make_config(), db_url=empty_db_url, workers=2)
    watch_b = SignalBegin()
    run_b = make_run(manifest, out, make_config(), db_url=empty_db_url, workers=3, reporter=watch_b)

    with ThreadPoolExecutor(max_workers=2) as pool:
        future_a = pool.submit(run_a.run)
        try:
            assert server.wait_paused("/slow", timeout=30)  # A holds /slow, mid-body
            future_b = pool.submit(run_b.run)
            assert watch_b.begun.wait(timeout=30)  # B has planned, and finds /slow leased
        finally:
            server.release("/slow")
        summary_a = future_a.result(timeout=60)
        summary_b = future_b.result(timeout=60)

    assert watch_b.done_at_begin is not None
    assert watch_b.done_at_begin < 7  # /slow was still A's when B planned
    for summary in (summary_a, summary_b):
        assert summary.exit_code == 0
        assert [job.state for job in summary.jobs] == [JobState.DEDUPED.value] * 7
    for report, body in zip(summary_b.jobs, [*bodies.values(), slow], strict=True):
        assert_stored(out, report, body)
    total = server.total()
    assert total.get_requests == 7  # every artifact fetched once, by one run or the other
    assert server.stats("/slow").get_requests == 1
    assert summary_a.bytes_fetched + summary_b.bytes_fetched == sum(
        map(len, bodies.values())
    ) + len(slow)
    assert part_files(out) == []


# -- the next job, claimed as the last one ends ---------------------------------------


def test_a_stop_hands_back_the_job_claimed_ahead_and_a_rerun_fetches_it_once(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    """One worker claims its next job in the commit that ends the current one.

    Stopped right after the first job, the run must give that next job back
    (no lease left on any job) without having sent a request for it.
    """
    bodies = {f"/j{n}": generated_body(f"ahead-{n}", 40_000) for n in range(3)}
    rows = [(f"W{n}", "pdf", server.add(path, Artifact(body=body)))
            for n, (path, body) in enumerate(bodies.items())]  # fmt: skip
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    out = tmp_path / "out"
    reporter = StopOnOutcome(Outcome.STORED)
    run = make_run(manifest, out, make_config(), db_url=empty_db_url, workers=1, reporter=reporter)
    reporter.stop = run.request_stop

    first = run.run()

    assert [outcome.outcome for outcome in reporter.outcomes] == [Outcome.STORED]
    assert first.exit_code == 130
    requested = [path for path in bodies if server.stats(path).head_requests]
    assert len(requested) == 1  # the stored job's; claims go by (created_at, job_id)
    records = [job_record(empty_db_url, report.job_id) for report in first.jobs]
    assert [record.lease_owner for record in records] == [None, None, None]
    claimed_ahead = [record for record in records if record.lease_epoch == 1 and
                     record.state is JobState.LEASED]  # fmt: skip
    assert len(claimed_ahead) == 1  # granted, and handed back unstarted

    second = run_download(manifest, out, make_config(), db_url=empty_db_url)

    assert second.exit_code == 0
    assert [report.state for report in second.jobs] == [JobState.DEDUPED.value] * 3
    for path, body in bodies.items():
        assert server.stats(path).full_gets == 1
        assert server.stats(path).body_bytes_sent == len(body)


# -- unusual jobs: ids adopted from v3, a bug in one job -------------------------------


def test_a_job_adopted_from_v3_with_a_non_uuid_id_is_downloaded(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    body = generated_body("legacy", 30_000)
    url = server.add("/legacy.pdf", Artifact(body=body))
    with Ledger.connect(empty_db_url) as ledger:
        ledger.upgrade()
        with ledger.unit_of_work() as uow, bound_to(uow.session):
            JobFactory(job_id="legacy-00007", work_id="W7", artifact_id="pdf", canonical_url=url)
            uow.commit()
    manifest = write_manifest(tmp_path / "m.jsonl", [("W7", "pdf", url)])
    out = tmp_path / "out"

    summary = run_download(manifest, out, make_config(), db_url=empty_db_url, workers=2)

    assert summary.exit_code == 0, summary.jobs
    [report] = summary.jobs
    assert report.job_id == "legacy-00007"
    assert report.state == JobState.DEDUPED.value
    assert_stored(out, report, body)


def test_an_unexpected_error_in_one_job_fails_that_job_and_the_run_goes_on(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    bodies = {n: generated_body(f"robust-{n}", 10_000 + n) for n in range(4)}
    urls = {n: server.add(f"/r/{n}", Artifact(body=body)) for n, body in bodies.items()}
    broken = urls[2]
    stream = next(step for step in PIPELINE if step.kind == STREAM)
    assert stream.effect is not None
    streams = stream.effect

    def breaks_on_one(job: JobContext) -> StepResult:  # a bug that only one job meets
        if job.url == broken:
            raise KeyError("a bug in the pipeline")
        return streams(job)

    steps = [replace(step, effect=breaks_on_one) if step is stream else step for step in PIPELINE]
    manifest = write_manifest(tmp_path / "m.jsonl", [(f"W{n}", "pdf", urls[n]) for n in urls])
    config = make_config(max_attempts=2)

    summary = run_download(
        manifest, tmp_path / "out", config, db_url=empty_db_url, workers=2, steps=steps
    )

    states = {report.url: report.state for report in summary.jobs}
    assert states.pop(broken) == JobState.FAILED.value
    assert set(states.values()) == {JobState.DEDUPED.value}
    assert summary.exit_code == 1
    [failed] = [report for report in summary.jobs if report.url == broken]
    record = job_record(empty_db_url, failed.job_id)
    assert record.exhausted
    assert record.last_error is not None
    assert "internal error: KeyError" in record.last_error
    assert record.last_error.endswith("; no attempt left (2 of 2 used)")
    assert record.lease_owner is None  # the lease was given back, not left to expire
