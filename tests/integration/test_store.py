"""ArtifactStore on real files: content addressing, replay after a crash, path safety."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from docstokg.download import ArtifactStore
from docstokg.errors import TransientFetchError

JOB_ID = "0123456789abcdef-0123"


def staged(store: ArtifactStore, job_id: str, body: bytes) -> tuple[Path, str]:
    part = store.part_path(job_id)
    part.write_bytes(body)
    return part, hashlib.sha256(body).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    store = ArtifactStore(tmp_path / "out")
    store.prepare()
    return store


def test_prepare_creates_the_layout_and_is_idempotent(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "out")
    store.prepare()
    store.prepare()
    assert store.staging_dir == tmp_path / "out" / ".staging"
    assert store.artifacts_dir == tmp_path / "out" / "artifacts"
    assert store.staging_dir.is_dir()
    assert store.artifacts_dir.is_dir()


def test_finalize_moves_the_part_to_its_content_address(store: ArtifactStore) -> None:
    body = b"hello artifact\n" * 100
    part, sha = staged(store, JOB_ID, body)

    relpath = store.finalize(part, sha256=sha, size=len(body))

    assert relpath == f"artifacts/{sha[:2]}/{sha}"
    assert store.resolve(relpath).read_bytes() == body
    assert not part.exists()


def test_finalizing_identical_content_twice_keeps_one_file(store: ArtifactStore) -> None:
    body = b"same bytes, two jobs"
    first, sha = staged(store, "aaaa", body)
    second, _ = staged(store, "bbbb", body)

    one = store.finalize(first, sha256=sha, size=len(body))
    final = store.resolve(one)
    inode = final.stat().st_ino
    two = store.finalize(second, sha256=sha, size=len(body))

    assert one == two
    assert not second.exists()
    assert final.stat().st_ino == inode  # the existing file was kept, not replaced
    assert [p for p in store.artifacts_dir.rglob("*") if p.is_file()] == [final]
    assert list(store.staging_dir.iterdir()) == []


def test_replay_after_the_rename_returns_the_same_relpath(store: ArtifactStore) -> None:
    body = b"crash after rename"
    part, sha = staged(store, JOB_ID, body)
    relpath = store.finalize(part, sha256=sha, size=len(body))

    assert store.finalize(part, sha256=sha, size=len(body)) == relpath
    assert store.resolve(relpath).read_bytes() == body


def test_part_and_artifact_both_gone_is_transient(store: ArtifactStore) -> None:
    sha = hashlib.sha256(b"never written").hexdigest()
    part = store.part_path(JOB_ID)

    with pytest.raises(TransientFetchError, match="vanished before it was finalized") as info:
        store.finalize(part, sha256=sha, size=13)

    assert info.value.retryable


def test_part_of_the_wrong_size_is_deleted_not_stored(store: ArtifactStore) -> None:
    body = b"twelve bytes"
    part, sha = staged(store, JOB_ID, body)

    with pytest.raises(TransientFetchError, match="holds 12 bytes but the download recorded 20"):
        store.finalize(part, sha256=sha, size=20)

    assert not part.exists()
    assert not store.resolve(store.relpath_for(sha)).exists()


def test_finalize_creates_missing_directories(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "fresh")
    part = store.part_path(JOB_ID)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x")
    sha = hashlib.sha256(b"x").hexdigest()

    relpath = store.finalize(part, sha256=sha, size=1)

    assert (tmp_path / "fresh" / relpath).read_bytes() == b"x"


@pytest.mark.parametrize(
    "job_id", ["../x", "a/b", "", ".hidden", "a..b", "ABCDEF\n", "/etc/passwd", "a\\b"]
)
def test_part_path_refuses_ids_that_could_escape(store: ArtifactStore, job_id: str) -> None:
    with pytest.raises(ValueError, match="is not a safe file name"):
        store.part_path(job_id)


def test_part_path_accepts_ids_adopted_from_v3(store: ArtifactStore) -> None:
    assert store.part_path("legacy-00007") == store.staging_dir / "legacy-00007.part"
    assert store.part_path("job_7.v3") == store.staging_dir / "job_7.v3.part"


def test_part_path_accepts_hex_and_dashes(store: ArtifactStore) -> None:
    assert store.part_path("DEAD-beef-01") == store.staging_dir / "DEAD-beef-01.part"


@pytest.mark.parametrize(
    "digest",
    ["../" + "a" * 61, "A" * 64, "a" * 63, "a" * 65, "g" * 64, "", "a" * 62 + "/b"],
)
def test_relpath_for_refuses_anything_but_a_sha256(store: ArtifactStore, digest: str) -> None:
    with pytest.raises(ValueError, match="is not a SHA-256 digest"):
        store.relpath_for(digest)


def test_resolve_keeps_absolute_paths(store: ArtifactStore, tmp_path: Path) -> None:
    absolute = tmp_path / "elsewhere" / "file"
    assert store.resolve(str(absolute)) == absolute
    assert store.resolve("artifacts/ab/cd") == store.out_dir / "artifacts" / "ab" / "cd"


def test_a_same_size_file_with_other_bytes_is_replaced_by_the_part(store: ArtifactStore) -> None:
    body = b"the right bytes!"
    part, sha = staged(store, JOB_ID, body)
    final = store.resolve(store.relpath_for(sha))
    final.parent.mkdir()
    final.write_bytes(b"the WRONG bytes!")  # same size, other content

    store.finalize(part, sha256=sha, size=len(body))

    assert final.read_bytes() == body
    assert not part.exists()


def test_replay_with_a_corrupted_artifact_is_not_success(store: ArtifactStore) -> None:
    body = b"crash after rename, then damage"
    part, sha = staged(store, JOB_ID, body)
    relpath = store.finalize(part, sha256=sha, size=len(body))
    store.resolve(relpath).write_bytes(b"x" * len(body))

    with pytest.raises(TransientFetchError, match="vanished before it was finalized"):
        store.finalize(part, sha256=sha, size=len(body))


def test_check_and_verify_stored_say_what_is_wrong(store: ArtifactStore, tmp_path: Path) -> None:
    body = b"twenty bytes exactly"
    part, sha = staged(store, JOB_ID, body)
    relpath = store.finalize(part, sha256=sha, size=len(body))
    final = store.resolve(relpath)

    assert store.check_stored(relpath, 20) is None
    assert store.verify_stored(relpath, sha, 20) is None
    assert store.verify_stored(str(final), sha, 20) is None  # absolute, inside out_dir
    assert store.check_stored(relpath, 21) == "size 20 instead of 21"

    final.write_bytes(b"twenty bytes, but no")
    assert store.check_stored(relpath, 20) is None  # a stat, no hashing
    other = hashlib.sha256(b"twenty bytes, but no").hexdigest()
    assert store.verify_stored(relpath, sha, 20) == f"sha256 {other[:12]} instead of {sha[:12]}"

    final.unlink()
    assert store.check_stored(relpath, 20) == "missing"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(body)
    final.symlink_to(elsewhere)
    assert store.verify_stored(relpath, sha, 20) == "a link, not a regular file"
    final.unlink()
    final.mkdir()
    assert store.check_stored(relpath, 20) == "not a regular file"


@pytest.mark.parametrize("final_path", ["../outside", "artifacts/../../x", "", "/etc/passwd"])
def test_check_stored_refuses_paths_that_leave_the_store(
    store: ArtifactStore, final_path: str
) -> None:
    reason = store.check_stored(final_path, 1)
    assert reason is not None
    assert reason.endswith(f"is outside {store.out_dir}")


def test_check_stored_does_not_cross_a_linked_folder(store: ArtifactStore, tmp_path: Path) -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / sha).write_bytes(b"x")
    (store.artifacts_dir / sha[:2]).symlink_to(elsewhere)

    reason = store.verify_stored(store.relpath_for(sha), sha, 1)

    assert reason == f"{store.artifacts_dir / sha[:2]} is a link, not a folder"
