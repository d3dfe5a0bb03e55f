"""Several manifests, one ledger: a run claims only its own manifest's jobs.

Each manifest is known in the ledger by its name (its file's name, unless a run
names it).  Planning makes a manifest's jobs its members; a claim made for a
manifest takes only members; an artifact two manifests share is one job, so
it is fetched once and both runs report it stored.  ``job status`` and ``job
stats`` filter by manifest.  Each test runs on SQLite and PostgreSQL against
the real loopback server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from docstokg import JobRecord, JobState, Ledger, add_to_manifest, lease_next_job, plan_jobs
from docstokg.errors import ConfigurationError, UnknownManifest
from docstokg.keys import job_id_for, job_key
from docstokg.run.runner import RunSummary
from docstokg.services import check_manifest_name, usable_manifest_name
from docstokg.services.operations import job_stats, job_status
from docstokg.testing.server import Artifact, ArtifactServer, generated_body
from tests.cli_kit import explain
from tests.lifecycle import job_of
from tests.runner_kit import make_config, run_download, write_manifest

TTL_S = 30.0


def _serve(server: ArtifactServer, count: int) -> list[str]:
    return [
        server.add(f"/doc{n}.pdf", Artifact(body=generated_body(f"doc{n}", 20_000 + n)))
        for n in range(count)
    ]


def _job(ledger: Ledger, work_id: str, artifact_id: str, url: str) -> JobRecord:
    return job_of(ledger, job_id_for(job_key(work_id, artifact_id, url)))


def _plan_as(ledger: Ledger, manifest: str, rows: list[tuple[str, str, str]]) -> list[str]:
    """Plan ``rows`` as a run of ``manifest`` does; returns their job ids."""
    plan_jobs(ledger, rows)
    job_ids = [_job(ledger, *row).job_id for row in rows]
    add_to_manifest(ledger, manifest, job_ids)
    return job_ids


def _summary_states(summary: RunSummary) -> dict[str, str]:
    return {report.url: report.state for report in summary.jobs}


def test_a_claim_among_a_runs_own_jobs_takes_none_of_the_others(db_url: str) -> None:
    with Ledger.connect(db_url) as ledger:
        ours = _plan_as(ledger, "ours.jsonl", [("W", "a", "https://x.test/a")])
        theirs = _plan_as(ledger, "theirs.jsonl", [("W", "b", "https://x.test/b")])
        plan_jobs(ledger, [("W", "c", "https://x.test/c")])  # in no manifest

        first = lease_next_job(ledger, owner="w1", ttl_s=TTL_S, among=ours)
        second = lease_next_job(ledger, owner="w2", ttl_s=TTL_S, among=ours)
        nothing = lease_next_job(ledger, owner="w3", ttl_s=TTL_S, among=[])
        anyone = [lease_next_job(ledger, owner=f"x{n}", ttl_s=TTL_S) for n in range(3)]

    assert first is not None
    assert first.job_id == ours[0]
    assert second is None  # theirs and the manifest-less job are not ours to take
    assert nothing is None
    taken = {lease.job_id for lease in anyone if lease is not None}
    assert theirs[0] in taken  # a claim among no one's jobs takes any job
    assert len(taken) == 2


@pytest.mark.parametrize("their_name", ["theirs.jsonl", "ours.jsonl"])
def test_a_run_fetches_nothing_but_the_rows_of_its_file(
    server: ArtifactServer, tmp_path: Path, db_url: str, their_name: str
) -> None:
    """Not another manifest's jobs, even one of the same name, nor rows its file no longer has."""
    urls = _serve(server, 4)
    with Ledger.connect(db_url) as ledger:  # planned and not yet run
        theirs = _plan_as(ledger, their_name, [("T", str(n), urls[n]) for n in (2, 3)])
    ours = write_manifest(tmp_path / "ours.jsonl", [("O", str(n), urls[n]) for n in (0, 1)])

    summary = run_download(ours, tmp_path / "store", make_config(), db_url=db_url)

    assert summary.exit_code == 0, summary
    assert [server.stats(f"/doc{n}.pdf").get_requests for n in range(4)] == [1, 1, 0, 0]
    with Ledger.connect(db_url) as ledger:
        assert {job_of(ledger, job_id).state for job_id in theirs} == {JobState.PLANNED}


def test_an_artifact_two_manifests_share_is_fetched_once_and_both_runs_report_it_stored(
    server: ArtifactServer, tmp_path: Path, db_url: str
) -> None:
    urls = _serve(server, 3)
    shared = ("W", "shared", urls[1])
    first = write_manifest(tmp_path / "first.jsonl", [("W", "0", urls[0]), shared])
    second = write_manifest(tmp_path / "second.jsonl", [shared, ("W", "2", urls[2])])
    store = tmp_path / "store"
    store.mkdir()

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = [
            pool.submit(run_download, manifest, store, make_config(), db_url=db_url)
            for manifest in (first, second)
        ]
        summaries = [run.result(timeout=120) for run in runs]

    assert [summary.exit_code for summary in summaries] == [0, 0]
    assert [server.stats(f"/doc{n}.pdf").get_requests for n in range(3)] == [1, 1, 1]
    for summary in summaries:
        assert _summary_states(summary)[urls[1]] == JobState.DEDUPED.value
    with Ledger.connect(db_url) as ledger, ledger.unit_of_work(read_only=True) as uow:
        assert uow.jobs.manifests_of(_job(ledger, *shared).job_id) == [
            "first.jsonl",
            "second.jsonl",
        ]


def test_status_and_stats_count_one_manifest_and_refuse_an_unknown_one(db_url: str) -> None:
    with Ledger.connect(db_url) as ledger:
        _plan_as(ledger, "small.jsonl", [("S", str(n), f"https://x.test/s{n}") for n in range(2)])
        _plan_as(ledger, "big.jsonl", [("B", str(n), f"https://x.test/b{n}") for n in range(5)])

        small = job_status(ledger, manifest="small.jsonl")
        everything = job_status(ledger)
        stats = job_stats(ledger, manifest="big.jsonl")
        with pytest.raises(UnknownManifest) as unknown:
            job_status(ledger, manifest="papers.jsonl")

    assert small.counts[JobState.PLANNED] == small.total == 2
    assert everything.total == 7
    assert stats.counts[JobState.PLANNED] == 5
    assert "'papers.jsonl'" in str(unknown.value)
    assert "big.jsonl (5 jobs), small.jsonl (2 jobs)" in str(unknown.value)


@pytest.mark.parametrize("backend", ["sqlite"])  # the command line is the same on both: once
def test_job_status_and_show_on_the_command_line_name_the_manifests(
    db_url: str, tmp_path: Path
) -> None:
    with Ledger.connect(db_url) as ledger:
        (shared,) = _plan_as(ledger, "a.jsonl", [("A", "0", "https://x.test/a0")])
        _plan_as(ledger, "b.jsonl", [("B", str(n), f"https://x.test/b{n}") for n in range(3)])
        add_to_manifest(ledger, "b.jsonl", [shared])

    def job(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "docstokg", "job", *args, "--db", db_url],
            check=False,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )

    filtered = job("status", "--manifest", "b.jsonl", "--json")
    unknown = job("status", "--manifest", "c.jsonl")
    shown = job("show", shared, "--json")

    assert filtered.returncode == 0, explain(filtered)
    document = json.loads(filtered.stdout)
    assert (document["manifest"], document["total"]) == ("b.jsonl", 4)
    assert shown.returncode == 0, explain(shown)
    assert json.loads(shown.stdout)["manifests"] == ["a.jsonl", "b.jsonl"]
    assert unknown.returncode == 1, explain(unknown)
    assert "no job of this ledger belongs to a manifest named 'c.jsonl'" in unknown.stderr


@pytest.mark.parametrize("name", ["", " padded", "line\nbreak", "x" * 201])
def test_a_manifest_name_no_operator_could_type_back_is_refused(db_url: str, name: str) -> None:
    with Ledger.connect(db_url) as ledger, pytest.raises(ConfigurationError, match="manifest name"):
        add_to_manifest(ledger, name, [])


@pytest.mark.parametrize("backend", ["sqlite"])  # naming is the same on both: once
@pytest.mark.parametrize(
    ("file_name", "known_as"),
    [
        ("papers.jsonl", "papers.jsonl"),
        (" spaced.jsonl", "spaced.jsonl"),
        ("tab\there.jsonl", "tab?here.jsonl"),
    ],
)
def test_a_run_is_known_by_a_usable_form_of_its_file_name(
    server: ArtifactServer, tmp_path: Path, db_url: str, file_name: str, known_as: str
) -> None:
    (url,) = _serve(server, 1)
    manifest = write_manifest(tmp_path / file_name, [("W", "0", url)])

    summary = run_download(manifest, tmp_path / "store", make_config(), db_url=db_url)

    assert summary.exit_code == 0, summary
    with Ledger.connect(db_url) as ledger:
        assert job_status(ledger, manifest=known_as).total == 1


def test_a_long_file_name_is_cut_to_a_name_that_stays_apart_from_its_neighbours() -> None:
    first, second = ("L" * 250 + ".jsonl"), ("L" * 250 + ".csv")

    assert len(usable_manifest_name(first)) == 200
    assert usable_manifest_name(first) != usable_manifest_name(second)
    check_manifest_name(usable_manifest_name(first))


@pytest.mark.parametrize("backend", ["sqlite"])  # the command line is the same on both: once
def test_a_run_named_on_the_command_line_is_counted_under_that_name(
    server: ArtifactServer, tmp_path: Path, db_url: str
) -> None:
    (url,) = _serve(server, 1)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"work_id": "W", "artifact_id": "0", "url": url}) + "\n")
    out = tmp_path / "store"

    def docstokg(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "docstokg", *args, "--db", db_url],
            check=False,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
        )

    refused = docstokg("run", str(manifest), "--out", str(out), "--idempotency",
                       "--manifest-name", " padded")  # fmt: skip
    assert refused.returncode == 2, explain(refused)
    assert "manifest name" in refused.stderr
    assert not out.exists()  # refused before anything was written

    ran = docstokg("run", str(manifest), "--out", str(out), "--idempotency",
                   "--manifest-name", "batch 7")  # fmt: skip
    assert ran.returncode == 0, explain(ran)
    status = docstokg("job", "status", "--manifest", "batch 7", "--json")
    assert json.loads(status.stdout)["counts"]["DEDUPED"] == 1, explain(status)
