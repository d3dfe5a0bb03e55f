"""The runner keeps going when a job is unusual: ids adopted from v3, and bugs in one job."""

from __future__ import annotations

from pathlib import Path

import pytest

from docstokg import JobState, Ledger
from docstokg.run.pipeline import LedgerPipeline
from docstokg.testing.server import Artifact, ArtifactServer, generated_body
from tests.factories import JobFactory, bound_to
from tests.runner_kit import (
    assert_stored,
    job_record,
    make_config,
    run_download,
    write_manifest,
)


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
    server: ArtifactServer,
    tmp_path: Path,
    empty_db_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bodies = {n: generated_body(f"robust-{n}", 10_000 + n) for n in range(4)}
    urls = {n: server.add(f"/r/{n}", Artifact(body=body)) for n, body in bodies.items()}
    broken = urls[2]
    original = LedgerPipeline._fetch_and_store

    def breaks_on_one(self: LedgerPipeline, steps: object, *args: object) -> object:
        if steps.lease.canonical_url == broken:  # type: ignore[attr-defined]
            raise KeyError("a bug in the pipeline")
        return original(self, steps, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(LedgerPipeline, "_fetch_and_store", breaks_on_one)
    manifest = write_manifest(tmp_path / "m.jsonl", [(f"W{n}", "pdf", urls[n]) for n in urls])
    config = make_config(max_attempts=2)

    summary = run_download(manifest, tmp_path / "out", config, db_url=empty_db_url, workers=2)

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
