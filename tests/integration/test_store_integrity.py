"""The store is checked, not assumed: one ledger fills one store, ended jobs' files are held
to the ledger, ``verify_store`` proves their bytes, and a manifest's checksum is enforced.

Each test runs :class:`DownloadRun` against the real loopback server, on SQLite and
PostgreSQL where the ledger is involved, and looks at three witnesses: the run's
summary, the ledger's rows, and what the server sent.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from docstokg import JobState, Ledger
from docstokg.download import ArtifactStore
from docstokg.errors import StoreMismatch
from docstokg.manifest import Manifest, read_manifest
from docstokg.services.stores import STORE_ID_FILE, bind_store, verify_store
from docstokg.testing.server import Artifact, ArtifactServer, generated_body
from tests.runner_kit import (
    StopAfterBytes,
    artifact_files,
    assert_stored,
    job_record,
    make_config,
    make_run,
    part_files,
    run_download,
    sha256_of,
    write_manifest,
)


def _manifest_with_checksums(path: Path, rows: list[tuple[str, str, str, str | None]]) -> Manifest:
    lines = [
        json.dumps({"work_id": w, "artifact_id": a, "url": u, "sha256": sha})
        for w, a, u, sha in rows
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return read_manifest(path)


def _serve(server: ArtifactServer, count: int) -> tuple[list[bytes], list[str]]:
    bodies = [generated_body(f"doc{n}", 30_000 + n) for n in range(count)]
    urls = [server.add(f"/doc{n}.pdf", Artifact(body=body)) for n, body in enumerate(bodies)]
    return bodies, urls


# -- one ledger, one store ---------------------------------------------------------------


def test_a_ledger_run_against_another_out_is_refused_naming_both(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    _, urls = _serve(server, 2)
    manifest = write_manifest(tmp_path / "m.jsonl", [("W", str(n), u) for n, u in enumerate(urls)])
    first, other = tmp_path / "store", tmp_path / "elsewhere"
    assert run_download(manifest, first, make_config(), db_url=empty_db_url).exit_code == 0

    with pytest.raises(StoreMismatch) as refused:
        run_download(manifest, other, make_config(), db_url=empty_db_url)

    message = str(refused.value)
    assert str(first.resolve()) in message
    assert str(other.resolve()) in message
    assert artifact_files(other) == []
    assert server.total().get_requests == 2  # nothing was fetched for the second store


def test_one_store_mounted_at_another_path_is_the_same_store(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    bodies, urls = _serve(server, 2)
    manifest = write_manifest(tmp_path / "m.jsonl", [("W", str(n), u) for n, u in enumerate(urls)])
    first, moved = tmp_path / "store", tmp_path / "mounted-here"
    run_download(manifest, first, make_config(), db_url=empty_db_url)
    shutil.move(first, moved)  # the same store, seen from another machine's mount point

    summary = run_download(manifest, moved, make_config(), db_url=empty_db_url)

    assert summary.exit_code == 0
    assert server.total().get_requests == 2  # nothing fetched again
    for report, body in zip(summary.jobs, bodies, strict=True):
        assert_stored(moved, report, body)


def test_the_first_use_writes_the_id_and_racing_binds_agree(tmp_path: Path, ledger: Ledger) -> None:
    out = tmp_path / "store"
    out.mkdir()
    first = bind_store(ledger, out)
    again = bind_store(ledger, out)

    assert first == again == (out / STORE_ID_FILE).read_text().strip()


class _BoundByAnotherRunFirst:
    """A ledger whose first unit of work lets another run bind the store just before it."""

    def __init__(self, ledger: Ledger, out: Path) -> None:
        self._ledger, self._out, self.raced = ledger, out, False

    def unit_of_work(self, **kwargs: Any) -> Any:
        if not self.raced:
            self.raced = True
            bind_store(self._ledger, self._out)  # the other run, racing on a new store
        return self._ledger.unit_of_work(**kwargs)


def test_a_run_racing_another_on_a_new_store_sees_the_id_the_other_wrote(
    tmp_path: Path, ledger: Ledger
) -> None:
    out = tmp_path / "store"
    out.mkdir()
    racing = _BoundByAnotherRunFirst(ledger, out)

    store_id = bind_store(racing, out)  # type: ignore[arg-type]

    assert racing.raced
    assert store_id == (out / STORE_ID_FILE).read_text().strip()


def test_an_id_file_that_is_a_link_is_refused(tmp_path: Path, ledger: Ledger) -> None:
    out = tmp_path / "store"
    out.mkdir()
    planted = tmp_path / "planted-id"
    planted.write_text("0" * 32 + "\n")
    (out / STORE_ID_FILE).symlink_to(planted)

    with pytest.raises(StoreMismatch, match=STORE_ID_FILE):
        bind_store(ledger, out)


@pytest.mark.parametrize("planted", ["folder", "fifo"])
def test_an_id_file_that_is_not_a_file_is_refused_without_hanging(
    tmp_path: Path, ledger: Ledger, planted: str
) -> None:
    out = tmp_path / "store"
    out.mkdir()
    if planted == "folder":
        (out / STORE_ID_FILE).mkdir()
    else:
        os.mkfifo(out / STORE_ID_FILE)

    with pytest.raises(StoreMismatch, match="not a regular file"):
        bind_store(ledger, out)


def test_a_lost_id_file_is_named_with_the_id_to_restore(tmp_path: Path, ledger: Ledger) -> None:
    out = tmp_path / "store"
    out.mkdir()
    store_id = bind_store(ledger, out)
    (out / STORE_ID_FILE).unlink()

    with pytest.raises(StoreMismatch) as refused:
        bind_store(ledger, out)

    assert f"echo {store_id} > {out / STORE_ID_FILE}" in str(refused.value)
    (out / STORE_ID_FILE).write_text(f"{store_id}\n")
    assert bind_store(ledger, out) == store_id


# -- ended jobs' files are held to the ledger ----------------------------------------------


@pytest.mark.parametrize("damage", ["deleted", "truncated", "replaced by a link"])
def test_a_damaged_stored_file_is_fetched_again_by_the_next_run(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str, damage: str
) -> None:
    bodies, urls = _serve(server, 2)
    manifest = write_manifest(tmp_path / "m.jsonl", [("W", str(n), u) for n, u in enumerate(urls)])
    out = tmp_path / "store"
    first = run_download(manifest, out, make_config(), db_url=empty_db_url)
    stored = out / str(first.jobs[0].final_path)
    if damage == "deleted":
        stored.unlink()
    elif damage == "truncated":
        stored.write_bytes(bodies[0][:100])
    else:
        elsewhere = tmp_path / "elsewhere.bin"
        elsewhere.write_bytes(bodies[0])
        stored.unlink()
        stored.symlink_to(elsewhere)

    again = run_download(manifest, out, make_config(), db_url=empty_db_url)

    assert again.exit_code == 0
    assert server.stats("/doc0.pdf").get_requests == 2  # fetched again
    assert server.stats("/doc1.pdf").get_requests == 1  # its file was fine
    assert_stored(out, again.jobs[0], bodies[0])
    assert not stored.is_symlink()
    assert job_record(empty_db_url, again.jobs[0].job_id).state is JobState.DEDUPED


def test_verify_finds_corrupt_and_missing_files_and_repair_requeues_them(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    bodies, urls = _serve(server, 3)
    manifest = write_manifest(tmp_path / "m.jsonl", [("W", str(n), u) for n, u in enumerate(urls)])
    out = tmp_path / "store"
    first = run_download(manifest, out, make_config(), db_url=empty_db_url)
    corrupt, missing = (out / str(job.final_path) for job in first.jobs[:2])
    corrupt.write_bytes(b"X" * len(bodies[0]))  # same size: only a re-hash sees it
    missing.unlink()
    store = ArtifactStore(out)

    with Ledger.connect(empty_db_url) as ledger:
        found = verify_store(ledger, store, jobs=2)
        assert found.checked == 3
        assert {bad.job_id for bad in found.bad} == {first.jobs[0].job_id, first.jobs[1].job_id}
        assert found.requeued == []
        repaired = verify_store(ledger, store, jobs=2, repair=True)
        assert sorted(repaired.requeued) == sorted(bad.job_id for bad in found.bad)

    again = run_download(manifest, out, make_config(), db_url=empty_db_url)

    for report, body in zip(again.jobs, bodies, strict=True):
        assert_stored(out, report, body)
    assert [server.stats(f"/doc{n}.pdf").get_requests for n in range(3)] == [2, 2, 1]
    with Ledger.connect(empty_db_url) as ledger:
        assert verify_store(ledger, store).bad == []


# -- an expected checksum per manifest row -----------------------------------------------


@pytest.mark.parametrize("ledger_on", [True, False], ids=["ledger", "plain"])
def test_a_download_that_does_not_match_the_manifest_checksum_fails_for_good(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str, ledger_on: bool
) -> None:
    bodies, urls = _serve(server, 2)
    wrong = sha256_of(b"some other document")
    manifest = _manifest_with_checksums(
        tmp_path / "m.jsonl",
        [("W", "0", urls[0], wrong), ("W", "1", urls[1], sha256_of(bodies[1]))],
    )
    out = tmp_path / "store"

    summary = run_download(
        manifest, out, make_config(enabled=ledger_on), db_url=empty_db_url if ledger_on else None
    )

    failed, stored = summary.jobs
    assert summary.exit_code == 1
    assert failed.state == JobState.FAILED.value
    assert failed.ended is True  # permanent: no attempt left to retry
    assert wrong in str(failed.error)
    assert sha256_of(bodies[0]) in str(failed.error)
    assert server.stats("/doc0.pdf").get_requests == 1  # not retried
    assert_stored(out, stored, bodies[1])
    assert artifact_files(out) == [out / str(stored.final_path)]  # nothing else stored
    assert list((out / ".staging").iterdir()) == []
    if ledger_on:
        record = job_record(empty_db_url, failed.job_id)
        assert record.expected_sha256 == wrong
        assert record.exhausted


# -- a .part is trusted only as far as its checkpoint vouches ------------------------------


def test_a_part_tampered_between_runs_is_fetched_again_not_stored(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    body = generated_body("tamper", 3 * 1024 * 1024)
    url = server.add("/big.bin", Artifact(body=body, etag='"v1"'))
    manifest = write_manifest(tmp_path / "m.jsonl", [("W", "big", url)])
    out = tmp_path / "store"
    stopper = StopAfterBytes(2 * 1024 * 1024)
    run = make_run(manifest, out, make_config(), db_url=empty_db_url, workers=1, reporter=stopper)
    stopper.stop = run.request_stop
    assert run.run().exit_code == 130
    [part] = part_files(out)
    kept = part.read_bytes()
    part.write_bytes(kept[:1000] + b"\xff" * 1000 + kept[2000:])  # same length, other bytes

    summary = run_download(manifest, out, make_config(), db_url=empty_db_url)

    assert summary.exit_code == 0
    assert_stored(out, summary.jobs[0], body)
    assert server.stats("/big.bin").full_gets == 2  # the second run started from zero


def test_a_corrected_manifest_checksum_is_followed_by_the_next_run(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    bodies, urls = _serve(server, 1)
    path = tmp_path / "m.jsonl"
    wrong = _manifest_with_checksums(path, [("W", "0", urls[0], "0" * 64)])
    out = tmp_path / "store"
    failed = run_download(wrong, out, make_config(), db_url=empty_db_url)
    assert failed.jobs[0].state == JobState.FAILED.value
    assert failed.jobs[0].ended is True

    right = _manifest_with_checksums(path, [("W", "0", urls[0], sha256_of(bodies[0]))])
    summary = run_download(right, out, make_config(), db_url=empty_db_url)

    assert summary.exit_code == 0
    assert_stored(out, summary.jobs[0], bodies[0])
    assert job_record(empty_db_url, summary.jobs[0].job_id).expected_sha256 == sha256_of(bodies[0])


def test_a_checksum_added_for_a_job_stored_with_other_bytes_is_checked_by_the_next_run(
    server: ArtifactServer, tmp_path: Path, empty_db_url: str
) -> None:
    _, urls = _serve(server, 1)
    path = tmp_path / "m.jsonl"
    out = tmp_path / "store"
    first = run_download(
        _manifest_with_checksums(path, [("W", "0", urls[0], None)]),
        out,
        make_config(),
        db_url=empty_db_url,
    )
    assert first.exit_code == 0
    other = sha256_of(b"what the publisher says it should be")

    summary = run_download(
        _manifest_with_checksums(path, [("W", "0", urls[0], other)]),
        out,
        make_config(),
        db_url=empty_db_url,
    )

    assert summary.exit_code == 1
    assert summary.jobs[0].state == JobState.FAILED.value
    assert other in str(summary.jobs[0].error)
    assert server.stats("/doc0.pdf").get_requests == 2  # fetched again, to be checked
