"""The chaos suite's instruments: the server's request log, and the invariant checker.

A chaos round that reports zero violations proves something only if the
checker does see a broken store, a refetch or a leftover part, and only if the
log says truly which client got which bytes; these tests show both, without
starting a run.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import replace
from pathlib import Path

import httpx

from docstokg import JobRecord, JobState
from docstokg.testing.server import Artifact, ArtifactServer, RequestRecord, generated_body
from tests.chaos.harness import (
    Evidence,
    FaultEvent,
    Item,
    RunOutcome,
    agent,
    check_invariants,
)

KiB = 1024


def test_the_request_log_records_method_span_bytes_sent_and_client(
    server: ArtifactServer,
) -> None:
    body = generated_body("/log/a", 100 * KiB)
    url = server.add("/log/a", Artifact(body, truncate_at=10 * KiB))
    headers = {"User-Agent": agent("r7")}
    with httpx.Client(headers=headers) as client:
        client.head(url)
        with client.stream("GET", url, headers={"Range": "bytes=4096-"}) as response:
            received = b"".join(_read_until_closed(response))
        client.get(server.url("/log/missing"))

    head, ranged, missing = server.requests()
    assert (head.method, head.status, head.start, head.stop, head.bytes_sent) == (
        "HEAD", 200, 0, 0, 0,
    )  # fmt: skip
    assert (ranged.method, ranged.status, ranged.start, ranged.stop) == (
        "GET", 206, 4096, 100 * KiB,
    )  # fmt: skip
    assert ranged.bytes_sent == len(received) == 10 * KiB
    assert ranged.cut_short
    assert ranged.user_agent == agent("r7")
    assert ranged.ended_at is not None
    assert ranged.started_at <= ranged.ended_at
    assert (missing.path, missing.status, missing.bytes_sent) == ("/log/missing", 404, 0)
    assert server.stats("/log/a").body_bytes_sent == 10 * KiB
    server.reset_stats()
    assert server.requests() == ()


def _read_until_closed(response: httpx.Response) -> list[bytes]:
    """The bytes of a body the server cut short (the client then sees the connection close)."""
    chunks: list[bytes] = []
    # Fewer bytes than Content-Length (what truncate_at is for) end in this error.
    with contextlib.suppress(httpx.RemoteProtocolError):
        chunks.extend(response.iter_raw())
    return chunks


def _stored_world(tmp_path: Path) -> Evidence:
    """Two artifacts stored right, their jobs DEDUPED, each fetched once: no violation."""
    out = tmp_path / "out"
    items, jobs = [], {}
    for number in range(2):
        body = generated_body(f"/w/{number}", 3 * KiB)
        sha = hashlib.sha256(body).hexdigest()
        item = Item(f"/w/{number}", f"http://h/w/{number}", body, f"W{number}", sha)
        stored = out / item.final_path
        stored.parent.mkdir(parents=True, exist_ok=True)
        stored.write_bytes(body)
        items.append(item)
        jobs[item.job_id] = _job(item)
    requests = [
        RequestRecord(i.path, "GET", 200, 0, len(i.body), len(i.body), 10.0, 11.0, agent("r0"))
        for i in items
    ]
    run = RunOutcome("r0", 0, killed=False, stopped=False, stderr="", stdout="{}")
    return Evidence(
        items=items,
        out=out,
        jobs=jobs,
        stored_at=dict.fromkeys(jobs, 12.0),
        requests=requests,
        events=[],
        runs=[run],
        began=0.0,
    )


def _job(item: Item) -> JobRecord:
    return JobRecord(
        job_id=item.job_id, work_id=item.work_id, artifact_id="bin", canonical_url=item.url,
        state=JobState.DEDUPED, lease_owner=None, lease_until=None, created_at=1.0,
        updated_at=12.0, idempotency_key="k", lease_epoch=1, attempts=1, max_attempts=100,
        next_attempt_at=None, last_error=None, sha256=item.sha256, final_path=item.final_path,
        size_bytes=len(item.body), content_type=None, expected_sha256=None,
    )  # fmt: skip


def test_a_sound_world_has_no_violation(tmp_path: Path) -> None:
    assert check_invariants(_stored_world(tmp_path)) == []


def test_a_stored_file_that_grew_after_the_store_is_a_violation(tmp_path: Path) -> None:
    evidence = _stored_world(tmp_path)
    stored = evidence.out / evidence.items[0].final_path
    with stored.open("ab") as handle:
        handle.write(b"x" * 64)  # what a paused worker appending after the store does
    (violation,) = check_invariants(evidence)
    assert "not the 3,072 bytes its name promises" in violation


def test_an_extra_file_a_leftover_part_and_an_unended_job_are_violations(tmp_path: Path) -> None:
    evidence = _stored_world(tmp_path)
    first = evidence.items[0]
    (evidence.out / "artifacts" / "ab" / "stray").parent.mkdir(parents=True)
    (evidence.out / "artifacts" / "ab" / "stray").write_bytes(b"?")
    (evidence.out / ".staging").mkdir()
    (evidence.out / ".staging" / f"{first.job_id}.part").write_bytes(b"")
    jobs = dict(evidence.jobs)
    jobs[first.job_id] = replace(jobs[first.job_id], state=JobState.STREAMING)
    violations = check_invariants(replace(evidence, jobs=jobs))
    assert len(violations) == 3, violations
    assert "an extra file" in violations[0]
    assert "ended STREAMING" in violations[1]
    assert f".staging/{first.job_id}.part" in violations[2]


def test_a_request_after_the_store_and_any_request_of_the_final_run_are_violations(
    tmp_path: Path,
) -> None:
    evidence = _stored_world(tmp_path)
    first, second = evidence.items
    late = RequestRecord(first.path, "HEAD", 200, 0, 0, 0, 20.0, 20.1, agent("r1"))
    final = RequestRecord(second.path, "GET", 200, 0, 3 * KiB, 3 * KiB, 30.0, 31.0, agent("final"))
    violations = check_invariants(replace(evidence, requests=[*evidence.requests, late, final]))
    assert len(violations) == 2, violations
    assert "HEAD /w/0 by docstokg-chaos/r1 at +20.00 s, 8.00 s after the ledger" in violations[0]
    assert "the final clean run sent GET /w/1" in violations[1]


def test_bytes_sent_past_two_copies_plus_the_faults_that_hit_are_a_violation(
    tmp_path: Path,
) -> None:
    evidence = _stored_world(tmp_path)
    item = evidence.items[0]
    size = len(item.body)
    cut = RequestRecord(item.path, "GET", 200, 0, size, size, 1.0, 2.0, agent("r0"))
    resent = [*evidence.requests, cut, cut]  # three full copies
    assert len(check_invariants(replace(evidence, requests=resent))) == 1
    kill = FaultEvent("kill", at=1.5, until=1.6, run="r0")  # hit the download at 1.0-2.0
    assert check_invariants(replace(evidence, requests=resent, events=[kill])) == []


def test_a_traceback_or_a_failed_exit_of_a_run_no_one_killed_is_a_violation(
    tmp_path: Path,
) -> None:
    evidence = _stored_world(tmp_path)
    crashed = RunOutcome(
        "r1", 1, killed=False, stopped=True, stderr="Traceback (most recent call last):\n  boom",
        stdout="",
    )  # fmt: skip
    killed = RunOutcome("r2", -9, killed=True, stopped=False, stderr="", stdout="")
    violations = check_invariants(replace(evidence, runs=[*evidence.runs, crashed, killed]))
    assert len(violations) == 2, violations
    assert "r1 printed a traceback" in violations[0]
    assert "r1 (it had been SIGSTOPped) exited 1" in violations[1]


def test_a_run_refused_at_start_is_a_violation_unless_a_restart_hit_it_then(
    tmp_path: Path,
) -> None:
    evidence = _stored_world(tmp_path)
    refused = RunOutcome(
        "r1", 1, killed=False, stopped=False, started_at=20.0, stdout="",
        stderr="error: cannot use the ledger database postgresql+psycopg://p@h/db: connection "
        "failed: Connection refused Is the server running on that host?\n",
    )  # fmt: skip
    runs = [*evidence.runs, refused]
    assert len(check_invariants(replace(evidence, runs=runs))) == 1  # no restart: a violation
    earlier = FaultEvent("pg_restart", at=10.0, until=11.0, run=None)
    assert len(check_invariants(replace(evidence, runs=runs, events=[earlier]))) == 1
    meanwhile = FaultEvent("pg_restart", at=19.5, until=21.0, run=None)
    assert check_invariants(replace(evidence, runs=runs, events=[meanwhile])) == []
