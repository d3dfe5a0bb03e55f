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
