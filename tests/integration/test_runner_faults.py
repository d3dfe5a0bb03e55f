"""DownloadRun against a misbehaving origin: interruptions, short bodies, faults, limits.

Each misbehaviour is scripted on the loopback :class:`ArtifactServer`; a run
is stopped mid-download deterministically by the server's pause point (the
test waits for the pause and for the bytes before it to be in the part,
requests the stop, then releases the body), never by sleeping.  Results are
checked in the run's summary, in the ledger and in the server's counters.
Tests that take a database run on both backends.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from docstokg import JobRecord, JobState, Ledger
from docstokg.config import IdempotencyConfig
from docstokg.ledger.models import OP_SUCCEEDED
from docstokg.manifest import Manifest
from docstokg.run.pipeline import JobOutcome, Outcome
from docstokg.run.runner import JobReport, RunSummary
from docstokg.services import get_job
from docstokg.testing.server import Artifact, ArtifactServer, Fault, generated_body, strong_etag
from tests.runner_kit import (
    BytesReached,
    StopAfterBytes,
    StopOnOutcome,
    WatchOutcomes,
    artifact_files,
    assert_stored,
    job_record,
    make_config,
    make_run,
    ops_by_type,
    part_files,
    run_download,
    run_interrupted,
    write_manifest,
)

BIG = 1_000_000
PAUSE_AT = 300_000
# How long a stalled read waits: the stop must be requested within it to find
# the read still waiting, so not too short for a loaded machine.
READ_TIMEOUT_S = 2.0


def stored_once(summary: RunSummary, out: Path, body: bytes, *, attempts: int) -> JobReport:
    """The run's one job ended DEDUPED after ``attempts`` failed attempts, holding ``body``."""
    assert summary.exit_code == 0
    (report,) = summary.jobs
    assert report.state == JobState.DEDUPED.value
    assert report.attempts == attempts
    assert_stored(out, report, body)
    return report


def head_result(db_url: str, job_id: str) -> dict[str, object]:
    """The recorded result of the job's one HEAD op."""
    (head,) = ops_by_type(db_url, job_id)["HEAD"]
    result = json.loads(str(head.result_json))
    assert isinstance(result, dict)
    return result


def stream_result(db_url: str, job_id: str) -> dict[str, object]:
    (stream,) = ops_by_type(db_url, job_id)["STREAM"]
    assert stream.status == OP_SUCCEEDED
    result = json.loads(str(stream.result_json))
    assert isinstance(result, dict)
    return result


# -- interrupted, then run again ----------------------------------------------------------


def test_an_interrupted_download_resumes_with_a_range_request(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    body = generated_body("resume", BIG)
    url = server.add("/big", Artifact(body=body, pause_after=PAUSE_AT))
    manifest = write_manifest(tmp_path / "m.jsonl", [("W1", "pdf", url)])
    out = tmp_path / "out"

    written = BytesReached(PAUSE_AT)
    run = make_run(manifest, out, make_config(), db_url=empty_db_url, reporter=written)
    stopped = run_interrupted(run, server, "/big", written=written)

    assert stopped.interrupted is True
    assert stopped.exit_code == 130
    (report,) = stopped.jobs
    assert report.ended is False
    assert report.state == JobState.HEAD_DONE.value
    assert stopped.counts["unfinished"] == 1
    (part,) = part_files(out)
    have = part.stat().st_size
    assert 0 < have < len(body)
    assert part.read_bytes() == body[:have]
    assert artifact_files(out) == []
    held = job_record(empty_db_url, report.job_id)
    assert held.lease_owner is None  # handed back at once, not left to expire
    assert held.attempts == 0  # an interruption is not a failure

    rerun = run_download(manifest, out, make_config(), db_url=empty_db_url)

    assert rerun.exit_code == 0
    (report,) = rerun.jobs
    assert report.state == JobState.DEDUPED.value
    assert_stored(out, report, body)
    assert part_files(out) == []
    stats = server.stats("/big")
    assert stats.range_headers[-1] == f"bytes={have}-"
    assert stats.if_range_headers[-1] == strong_etag(body)
    assert (stats.full_gets, stats.range_gets) == (1, 1)
    assert stats.head_requests == 1  # the recorded HEAD was replayed, not asked again
    assert rerun.bytes_fetched == len(body) - have
    assert stream_result(empty_db_url, report.job_id)["resumed_from"] == have
    ops = ops_by_type(empty_db_url, report.job_id)
    assert [op.status for op in ops["FINALIZE"]] == [OP_SUCCEEDED]
    assert ops["STREAM"][0].attempt == 2  # the interrupted try, then the resumed one
    assert job_record(empty_db_url, report.job_id).state is JobState.DEDUPED


def test_a_download_stopped_after_its_last_byte_is_finished_without_fetching_again(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    """The part is whole: the resume asks for the bytes after it, gets 416, and keeps it."""
    body = generated_body("whole", 200_000)
    url = server.add("/whole", Artifact(body=body))
    manifest = write_manifest(tmp_path / "m.jsonl", [("W1", "pdf", url)])
    out = tmp_path / "out"
    stopper = StopAfterBytes(len(body))
    run = make_run(manifest, out, make_config(), db_url=empty_db_url, workers=1, reporter=stopper)
    stopper.stop = run.request_stop

    stopped = run.run()

    assert stopped.exit_code == 130
    assert stopped.jobs[0].ended is False
    (part,) = part_files(out)
    assert part.read_bytes() == body

    rerun = run_download(manifest, out, make_config(), db_url=empty_db_url)

    assert rerun.exit_code == 0
    (report,) = rerun.jobs
    assert report.state == JobState.DEDUPED.value
    assert_stored(out, report, body)
    assert part_files(out) == []
    assert rerun.bytes_fetched == 0
    stats = server.stats("/whole")
    assert stats.range_headers == (f"bytes={len(body)}-",)
    assert stats.body_bytes_sent == len(body)  # the 416 sent no body bytes
    assert stream_result(empty_db_url, report.job_id)["resumed_from"] == len(body)


def stop_while_stalled(
    manifest: Manifest, out: Path, config: IdempotencyConfig, *, db_url: str | None,
    server: ArtifactServer, path: str,
) -> RunSummary:  # fmt: skip
    """Stop the run while its one worker waits in a read that the paused server never answers.

    The stop is seen between chunks, and no chunk comes: the read waits out its
    timeout (short in these tests) with the run already stopping.
    """
    reporter = BytesReached(PAUSE_AT)
    run = make_run(manifest, out, config, db_url=db_url, workers=1, reporter=reporter)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(run.run)
        try:
            assert reporter.reached.wait(timeout=30), (
                f"the download of {path} never reached its pause"
            )
            run.request_stop()
            return future.result(timeout=60)
        finally:
            server.release(path)


def test_a_stop_during_a_stalled_read_hands_the_job_back_without_using_an_attempt(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    body = generated_body("stalled", BIG)
    url = server.add("/stalled", Artifact(body=body, pause_after=PAUSE_AT))
    manifest = write_manifest(tmp_path / "m.jsonl", [("W1", "pdf", url)])
    out = tmp_path / "out"
    config = make_config().model_copy(update={"read_timeout_s": READ_TIMEOUT_S})

    stopped = stop_while_stalled(
        manifest, out, config, db_url=empty_db_url, server=server, path="/stalled"
    )

    assert stopped.exit_code == 130
    (report,) = stopped.jobs
    assert report.state == JobState.HEAD_DONE.value
    held = job_record(empty_db_url, report.job_id)
    assert (held.attempts, held.lease_owner, held.next_attempt_at) == (0, None, None)
    (part,) = part_files(out)
    assert part.read_bytes() == body[:PAUSE_AT]  # kept for the next run to resume


def test_without_the_ledger_a_stop_during_a_stalled_read_on_the_last_attempt_is_no_failure(
    server: ArtifactServer, tmp_path: Path
) -> None:
    body = generated_body("stalled-plain", BIG)
    url = server.add("/stalled", Artifact(body=body, pause_after=PAUSE_AT))
    manifest = write_manifest(tmp_path / "m.jsonl", [("W1", "pdf", url)])
    plain = make_config(enabled=False, max_attempts=1)
    config = plain.model_copy(update={"read_timeout_s": READ_TIMEOUT_S})

    stopped = stop_while_stalled(
        manifest, tmp_path / "out", config, db_url=None, server=server, path="/stalled"
    )

    assert stopped.exit_code == 130
    assert stopped.counts == {"stored": 0, "duplicates": 0, "failed": 0, "unfinished": 1}


def test_a_worker_whose_lease_ran_out_unrenewed_stops_writing_and_the_run_resumes_the_job(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By then another worker may own the job: not one more chunk goes into the part."""
    clock = {"now": 1000.0}
    monkeypatch.setattr("docstokg.run.heartbeat._monotonic", lambda: clock["now"])
    body = generated_body("ran-out", BIG)
    url = server.add("/ran-out", Artifact(body=body, pause_after=PAUSE_AT))
    manifest = write_manifest(tmp_path / "m.jsonl", [("W1", "pdf", url)])
    out = tmp_path / "out"
    # A long TTL: the keeper's first renewal (ttl/3) comes after the test is over.
    config = make_config(lease_ttl_s=60.0)
    written = BytesReached(PAUSE_AT)
    run = make_run(manifest, out, config, db_url=empty_db_url, workers=1, reporter=written)

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(run.run)
        try:
            assert server.wait_paused("/ran-out", timeout=30), "the download never paused"
            # Every byte before the pause is in the part: the worker waits for the next chunk.
            assert written.reached.wait(timeout=30), "the bytes before the pause never arrived"
            clock["now"] += 61.0  # a whole TTL without a renewal, by the keeper's clock
        finally:
            server.release("/ran-out")
        summary = future.result(timeout=60)

    report = stored_once(summary, out, body, attempts=0)  # stopping for it is no failure
    stats = server.stats("/ran-out")
    assert stats.full_gets == 1
    (resumed,) = stats.range_headers  # the worker stopped, handed the job back, took it again
    # The first chunk it read after its lease ran out was not written: the part
    # held exactly the bytes sent before the pause.
    assert resumed == f"bytes={PAUSE_AT}-"
    assert job_record(empty_db_url, report.job_id).lease_epoch == 2


def test_content_changed_while_interrupted_is_fetched_whole_not_spliced(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    old = generated_body("old", BIG)
    new = generated_body("new", BIG)  # same length, other bytes, so another ETag
    url = server.add("/doc", Artifact(body=old, pause_after=PAUSE_AT))
    manifest = write_manifest(tmp_path / "m.jsonl", [("W1", "pdf", url)])
    out = tmp_path / "out"
    written = BytesReached(PAUSE_AT)
    run = make_run(manifest, out, make_config(), db_url=empty_db_url, reporter=written)
    stopped = run_interrupted(run, server, "/doc", written=written)
    assert stopped.exit_code == 130
    (part,) = part_files(out)
    have = part.stat().st_size
    server.add("/doc", Artifact(body=new))

    rerun = run_download(manifest, out, make_config(), db_url=empty_db_url)

    assert rerun.exit_code == 0
    (report,) = rerun.jobs
    assert_stored(out, report, new)
    stats = server.stats("/doc")
    assert stats.range_headers == (f"bytes={have}-",)
    assert stats.if_range_headers == (strong_etag(old),)  # the old validator: refused
    assert (stats.full_gets, stats.range_gets) == (2, 0)
    assert rerun.bytes_fetched == len(new)


@pytest.mark.parametrize("ranges_at_first", [False, True], ids=["never", "dropped-later"])
def test_without_range_support_an_interrupted_download_starts_over(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str, ranges_at_first: bool
) -> None:
    """No Range, or a server that answers one with a whole 200: the part is rewritten, not grown."""
    body = generated_body("no-ranges", BIG)
    url = server.add("/big", Artifact(body=body, ranges=ranges_at_first, pause_after=PAUSE_AT))
    manifest = write_manifest(tmp_path / "m.jsonl", [("W1", "pdf", url)])
    out = tmp_path / "out"
    written = BytesReached(PAUSE_AT)
    run = make_run(manifest, out, make_config(), db_url=empty_db_url, reporter=written)
    stopped = run_interrupted(run, server, "/big", written=written)
    assert stopped.exit_code == 130
    (part,) = part_files(out)
    have = part.stat().st_size
    assert 0 < have < len(body)
    if ranges_at_first:  # the recorded HEAD promised ranges; the server stops honouring them
        server.add("/big", Artifact(body=body, ranges=False))

    rerun = run_download(manifest, out, make_config(), db_url=empty_db_url)

    assert rerun.exit_code == 0
    (report,) = rerun.jobs
    assert report.state == JobState.DEDUPED.value
    assert_stored(out, report, body)
    assert part_files(out) == []
    stats = server.stats("/big")
    assert stats.range_gets == 0  # no 206 was ever served
    assert stats.full_gets == 2
    expected_ranges = (f"bytes={have}-",) if ranges_at_first else ()
    assert stats.range_headers == expected_ranges
    assert rerun.bytes_fetched == len(body)
    assert stream_result(empty_db_url, report.job_id)["resumed_from"] == 0


def test_without_the_ledger_an_interrupted_download_also_resumes(
    server: ArtifactServer, tmp_path: Path
) -> None:
    body = generated_body("plain-resume", BIG)
    url = server.add("/big", Artifact(body=body, pause_after=PAUSE_AT))
    manifest = write_manifest(tmp_path / "m.jsonl", [("W1", "pdf", url)])
    out = tmp_path / "out"
    config = make_config(enabled=False)

    written = BytesReached(PAUSE_AT)
    run = make_run(manifest, out, config, db_url=None, reporter=written)
    stopped = run_interrupted(run, server, "/big", written=written)

    assert stopped.exit_code == 130
    assert [job.ended for job in stopped.jobs] == [False]
    (part,) = part_files(out)
    have = part.stat().st_size
    assert 0 < have < len(body)

    rerun = run_download(manifest, out, config, db_url=None)

    assert rerun.exit_code == 0
    assert_stored(out, rerun.jobs[0], body)
    assert server.stats("/big").range_headers == (f"bytes={have}-",)
    assert rerun.bytes_fetched == len(body) - have
    assert part_files(out) == []


# -- short bodies ---------------------------------------------------------------------------


def test_a_short_body_fails_with_attempts_left_and_the_next_run_resumes_it(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    body = generated_body("short", 500_000)
    cut = 200_000
    url = server.add("/short", Artifact(body=body, truncate_at=cut))
    manifest = write_manifest(tmp_path / "m.jsonl", [("W1", "pdf", url)])
    out = tmp_path / "out"
    # One worker, stopped as soon as the job comes back to be retried: run 1 is one attempt.
    reporter = StopOnOutcome(Outcome.RETRY)
    run = make_run(manifest, out, make_config(), db_url=empty_db_url, workers=1, reporter=reporter)
    reporter.stop = run.request_stop

    first = run.run()

    assert [outcome.outcome for outcome in reporter.outcomes] == [Outcome.RETRY]
    (report,) = first.jobs
    assert report.state == JobState.FAILED.value
    assert report.ended is False
    assert report.label == "FAILED (will retry)"
    assert report.attempts == 1
    assert report.error is not None
    assert f"{cut:,}" in report.error
    assert f"{len(body):,}" in report.error
    assert first.exit_code == 130  # stopped with work left
    job = job_record(empty_db_url, report.job_id)
    assert (job.attempts, job.max_attempts, job.exhausted) == (1, 5, False)
    assert job.next_attempt_at is not None
    (part,) = part_files(out)
    assert part.read_bytes() == body[:cut]

    server.add("/short", Artifact(body=body))  # the origin behaves again
    second = run_download(manifest, out, make_config(), db_url=empty_db_url)

    assert second.exit_code == 0
    (report,) = second.jobs
    assert report.state == JobState.DEDUPED.value
    assert report.attempts == 1
    assert_stored(out, report, body)
    assert part_files(out) == []
    stats = server.stats("/short")
    assert stats.range_headers == (f"bytes={cut}-",)
    assert stats.if_range_headers == (strong_etag(body),)
    assert stats.range_gets == 1
    assert second.bytes_fetched == len(body) - cut


def test_a_body_cut_short_every_time_still_completes_by_successive_ranges(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    body = generated_body("drip", 500_000)
    cut = 200_000  # of each response: three responses deliver the whole body
    url = server.add("/drip", Artifact(body=body, truncate_at=cut))
    manifest = write_manifest(tmp_path / "m.jsonl", [("W1", "pdf", url)])
    out = tmp_path / "out"

    summary = run_download(manifest, out, make_config(), db_url=empty_db_url)

    stored_once(summary, out, body, attempts=2)
    stats = server.stats("/drip")
    assert stats.range_headers == (f"bytes={cut}-", f"bytes={2 * cut}-")
    assert stats.body_bytes_sent == len(body)  # not a byte fetched twice
    assert summary.bytes_fetched == len(body)


# -- transient statuses ---------------------------------------------------------------------


def test_429_with_retry_after_is_retried_in_the_same_run_after_the_wait(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    body = generated_body("busy", 30_000)
    url = server.add("/busy", Artifact(body=body, faults=[Fault(429, {"Retry-After": "1"})]))
    manifest = write_manifest(tmp_path / "m.jsonl", [("W1", "pdf", url)])
    out = tmp_path / "out"
    # Retry-After is capped at backoff_max_s, so the cap must allow the 1 s asked for.
    config = make_config(backoff_max_s=5.0)
    seen: list[JobRecord | None] = []

    with Ledger.connect(empty_db_url) as observer:

        def look(outcome: JobOutcome) -> None:
            if outcome.outcome is Outcome.RETRY:  # read before anyone can retry it
                seen.append(get_job(observer, outcome.target.job_id))

        summary = run_download(
            manifest, out, config, db_url=empty_db_url, reporter=WatchOutcomes(look)
        )

    report = stored_once(summary, out, body, attempts=1)
    (failed,) = seen
    assert failed is not None
    assert failed.state is JobState.FAILED
    assert failed.next_attempt_at is not None
    assert 1.0 <= failed.next_attempt_at - failed.updated_at <= 5.0
    assert summary.elapsed_s >= 1.0
    job = job_record(empty_db_url, report.job_id)
    assert job.last_error is not None
    assert "429" in job.last_error
    stats = server.stats("/busy")
    assert stats.faults_served == 1
    assert stats.head_requests == 2


def test_503_once_is_retried_in_the_same_run(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    body = generated_body("flaky", 30_000)
    url = server.add("/flaky", Artifact(body=body, faults=[Fault(503)]))
    manifest = write_manifest(tmp_path / "m.jsonl", [("W1", "pdf", url)])
    out = tmp_path / "out"

    summary = run_download(manifest, out, make_config(), db_url=empty_db_url)

    report = stored_once(summary, out, body, attempts=1)
    job = job_record(empty_db_url, report.job_id)
    assert job.last_error is not None
    assert "503" in job.last_error
    (head,) = ops_by_type(empty_db_url, report.job_id)["HEAD"]
    assert (head.status, head.attempt) == (OP_SUCCEEDED, 2)
    assert server.stats("/flaky").faults_served == 1


def test_a_retry_follows_the_manifest_url_again_not_the_redirect_target_head_saw(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    """HEAD's result is replayed on the retry; the short-lived target it was sent to is not."""
    body = generated_body("signed", 40_000)
    url = server.add(
        "/dl",
        Artifact(
            body=b"",
            redirect_to="/signed-2",  # where the manifest URL points once the faults are used
            faults=[Fault(302, {"Location": "/signed-1"}), Fault(503)],  # HEAD, then the GET
        ),
    )
    server.add("/signed-1", Artifact(body=body))
    server.add("/signed-2", Artifact(body=body))
    manifest = write_manifest(tmp_path / "m.jsonl", [("W1", "pdf", url)])
    out = tmp_path / "out"

    summary = run_download(manifest, out, make_config(), db_url=empty_db_url)

    report = stored_once(summary, out, body, attempts=1)
    recorded = head_result(empty_db_url, report.job_id)
    assert (recorded["url"], recorded["final_url"]) == (url, server.url("/signed-1"))
    assert server.stats("/dl").head_requests == 1  # replayed, not asked again
    assert server.stats("/signed-1").get_requests == 0
    assert server.stats("/signed-2").full_gets == 1


def test_a_refused_head_falls_back_to_get(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    body = generated_body("no-head", 30_000)
    url = server.add("/nohead", Artifact(body=body, head_status=405, content_type="text/csv"))
    manifest = write_manifest(tmp_path / "m.jsonl", [("W1", "csv", url)])
    out = tmp_path / "out"

    summary = run_download(manifest, out, make_config(), db_url=empty_db_url)

    report = stored_once(summary, out, body, attempts=0)
    probe = head_result(empty_db_url, report.job_id)
    assert probe["method"] == "GET"
    assert probe["length"] == len(body)
    assert job_record(empty_db_url, report.job_id).content_type == "text/csv"
    stats = server.stats("/nohead")
    assert stats.head_requests == 1
    assert stats.get_requests == 2  # the unread probe, then the download


# -- permanent failures ---------------------------------------------------------------------


def test_a_redirect_loop_fails_at_once(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    server.add("/loop/a", Artifact(body=b"", redirect_to=server.url("/loop/b")))
    url = server.add("/loop/b", Artifact(body=b"", redirect_to=server.url("/loop/a")))
    manifest = write_manifest(tmp_path / "m.jsonl", [("W1", "pdf", url)])
    out = tmp_path / "out"

    summary = run_download(manifest, out, make_config(max_attempts=4), db_url=empty_db_url)

    assert summary.exit_code == 1
    (report,) = summary.jobs
    assert report.state == JobState.FAILED.value
    assert report.ended is True
    assert report.attempts == 4  # every attempt used up by the one permanent failure
    assert report.error is not None
    assert "redirects" in report.error
    job = job_record(empty_db_url, report.job_id)
    assert job.exhausted
    assert job.next_attempt_at is None
    total = server.total()
    assert total.get_requests == 0
    assert total.head_requests == 6  # one HEAD and its five redirects, never tried again
    assert artifact_files(out) == []


def test_a_404_fails_for_good_while_the_other_jobs_succeed(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    bodies = [generated_body(f"fine-{n}", 20_000 + n) for n in range(2)]
    fine = [server.add(f"/fine/{n}", Artifact(body=body)) for n, body in enumerate(bodies)]
    missing = server.url("/missing.pdf")
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        [("W1", "pdf", fine[0]), ("W2", "pdf", missing), ("W3", "pdf", fine[1])],
    )
    out = tmp_path / "out"

    summary = run_download(manifest, out, make_config(), db_url=empty_db_url, workers=3)

    assert summary.exit_code == 1
    assert summary.counts == {"stored": 2, "duplicates": 0, "failed": 1, "unfinished": 0}
    ok_first, lost, ok_second = summary.jobs
    assert_stored(out, ok_first, bodies[0])
    assert_stored(out, ok_second, bodies[1])
    assert (ok_first.state, ok_second.state) == (JobState.DEDUPED.value,) * 2
    assert lost.state == JobState.FAILED.value
    assert lost.ended is True
    assert lost.error is not None
    assert "404" in lost.error
    job = job_record(empty_db_url, lost.job_id)
    assert job.exhausted
    assert job.last_error == lost.error
    stats = server.stats("/missing.pdf")
    assert (stats.head_requests, stats.get_requests) == (1, 0)  # never asked again


def test_a_body_over_max_bytes_fails_for_good_and_stores_nothing(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    body = generated_body("huge", 50_000)
    url = server.add("/huge", Artifact(body=body))
    manifest = write_manifest(tmp_path / "m.jsonl", [("W1", "pdf", url)])
    out = tmp_path / "out"

    summary = run_download(manifest, out, make_config(max_bytes=10_000), db_url=empty_db_url)

    assert summary.exit_code == 1
    (report,) = summary.jobs
    assert report.state == JobState.FAILED.value
    assert report.ended is True
    assert report.attempts == 5
    assert report.error is not None
    assert "max_bytes" in report.error
    assert job_record(empty_db_url, report.job_id).exhausted
    assert part_files(out) == []
    assert artifact_files(out) == []
    assert server.stats("/huge").get_requests == 0


def test_a_body_that_grew_past_max_bytes_while_interrupted_leaves_no_part(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    """The recorded HEAD is replayed, so the limit is only found on the resumed GET."""
    body = generated_body("grows", 400_000)
    pause = 100_000
    url = server.add("/grows", Artifact(body=body, pause_after=pause))
    manifest = write_manifest(tmp_path / "m.jsonl", [("W1", "pdf", url)])
    out = tmp_path / "out"
    config = make_config(max_bytes=BIG)
    written = BytesReached(pause)
    run = make_run(manifest, out, config, db_url=empty_db_url, reporter=written)
    stopped = run_interrupted(run, server, "/grows", written=written)
    assert stopped.exit_code == 130
    assert len(part_files(out)) == 1
    server.add("/grows", Artifact(body=generated_body("grown", 2 * BIG)))  # a new ETag

    rerun = run_download(manifest, out, config, db_url=empty_db_url)

    assert rerun.exit_code == 1
    (report,) = rerun.jobs
    assert report.state == JobState.FAILED.value
    assert report.ended is True
    assert report.error is not None
    assert "max_bytes" in report.error
    assert part_files(out) == []
    assert artifact_files(out) == []
    stats = server.stats("/grows")
    assert stats.head_requests == 1
    assert len(stats.if_range_headers) == 1  # it tried to resume, and got the new body
    assert stats.range_gets == 0
