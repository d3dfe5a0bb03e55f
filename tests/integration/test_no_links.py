"""Nothing under --out is followed: links and devices planted there are replaced, not used.

A symbolic link at ``.staging/<job_id>.part`` pointing outside ``--out`` was
appended to (the outside file grew) and then stored as the artifact; a hard
link there was truncated and filled, and the artifact shared its inode.  These
tests plant links, FIFOs and folders where the download layer keeps files and
check that every byte written stays under ``--out``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from docstokg.download import (
    ArtifactStore,
    DownloadLimits,
    checkpoint_for,
    make_client,
    probe,
    resume_point,
    stream_to_part,
)
from docstokg.errors import ConfigurationError, StoreError, TransientFetchError
from docstokg.testing.server import Artifact, ArtifactServer, generated_body

BODY = generated_body("test-no-links", 100_000)
SHA = hashlib.sha256(BODY).hexdigest()
LIMITS = DownloadLimits(connect_timeout_s=5.0, read_timeout_s=10.0)
OUTSIDE = b"a file outside --out\n"  # 21 bytes, as in the report
CUT = 40_000


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with make_client(LIMITS, max_connections=2) as client:
        yield client


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    store = ArtifactStore(tmp_path / "out")
    store.prepare()
    return store


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    target = tmp_path / "elsewhere" / "precious.txt"
    target.parent.mkdir()
    target.write_bytes(OUTSIDE)
    return target


def download(client: httpx.Client, server: ArtifactServer, store: ArtifactStore) -> Path:
    url = server.add("/a.bin", Artifact(body=BODY))
    part = store.part_path("job1")
    result = stream_to_part(client, probe(client, url, LIMITS), part, LIMITS)
    assert (result.sha256, result.size) == (SHA, len(BODY))
    return part


def test_a_link_planted_at_the_part_is_replaced_not_appended_to(
    server: ArtifactServer, client: httpx.Client, store: ArtifactStore, outside: Path
) -> None:
    part = store.part_path("job1")
    part.symlink_to(outside)

    download(client, server, store)

    assert outside.read_bytes() == OUTSIDE
    assert not part.is_symlink()
    assert part.read_bytes() == BODY
    assert server.stats("/a.bin").range_headers == ()


def test_a_link_planted_at_the_checkpoint_is_replaced_not_written_through(
    server: ArtifactServer, client: httpx.Client, store: ArtifactStore, outside: Path
) -> None:
    checkpoint = store.checkpoint_path("job1")
    checkpoint.symlink_to(outside)

    part = download(client, server, store)

    assert outside.read_bytes() == OUTSIDE
    assert not checkpoint.is_symlink()
    assert checkpoint_for(part) == checkpoint
    assert f'"length": {len(BODY)}' in checkpoint.read_text()


def test_a_fifo_at_the_part_is_replaced_without_hanging(
    server: ArtifactServer, client: httpx.Client, store: ArtifactStore
) -> None:
    part = store.part_path("job1")
    os.mkfifo(part)

    download(client, server, store)

    assert part.read_bytes() == BODY


@pytest.mark.parametrize("planted", ["fresh", "half-finished", "linked from outside"])
def test_a_hard_link_at_the_part_is_never_written_through_nor_stored(
    server: ArtifactServer,
    client: httpx.Client,
    store: ArtifactStore,
    outside: Path,
    planted: str,
) -> None:
    """Job ids are predictable: a hard link there names a file outside --out.

    "fresh": planted before the first attempt.  "half-finished": the outside
    file holds the first bytes and a valid checkpoint vouches for them, so a
    resume would append to it.  "linked from outside": the outside name is
    a hard link to the part an earlier attempt left.
    """
    part = store.part_path("job1")
    url = server.add("/a.bin", Artifact(body=BODY, truncate_at=CUT if planted != "fresh" else None))
    found = probe(client, url, LIMITS)
    if planted == "fresh":
        os.link(outside, part)
    else:
        with pytest.raises(TransientFetchError):
            stream_to_part(client, found, part, LIMITS)
        outside.unlink()
        if planted == "half-finished":
            outside.write_bytes(BODY[:CUT])
            part.unlink()
            os.link(outside, part)
        else:
            os.link(part, outside)
        assert resume_point(part, checkpoint_for(part), found) == 0
        server.add("/a.bin", Artifact(body=BODY))
    before = outside.read_bytes()
    server.reset_stats()

    result = stream_to_part(client, found, part, LIMITS)
    final = store.resolve(store.finalize(part, sha256=result.sha256, size=result.size))

    assert outside.read_bytes() == before
    assert (result.sha256, result.resumed_from) == (SHA, 0)
    assert final.read_bytes() == BODY
    assert final.stat().st_nlink == 1
    assert not os.path.samefile(final, outside)
    assert server.stats("/a.bin").range_headers == ()


def test_a_checkpoint_hard_linked_from_elsewhere_vouches_for_nothing(
    server: ArtifactServer, client: httpx.Client, store: ArtifactStore, tmp_path: Path
) -> None:
    """Only a checkpoint docstokg made (one link) is read: a planted one is not ours."""
    part = store.part_path("job1")
    url = server.add("/a.bin", Artifact(body=BODY, truncate_at=CUT))
    found = probe(client, url, LIMITS)
    with pytest.raises(TransientFetchError):
        stream_to_part(client, found, part, LIMITS)
    os.link(checkpoint_for(part), tmp_path / "elsewhere.json")

    assert resume_point(part, checkpoint_for(part), found) == 0


def test_finalize_never_moves_a_hard_linked_part_into_the_store(
    store: ArtifactStore, outside: Path
) -> None:
    part = store.part_path("job1")
    outside.write_bytes(BODY)
    os.link(outside, part)

    with pytest.raises(TransientFetchError, match="has 2 hard links") as info:
        store.finalize(part, sha256=SHA, size=len(BODY))

    assert "deleted rather than stored" in str(info.value)
    assert not part.exists()
    assert not store.resolve(store.relpath_for(SHA)).exists()
    assert outside.read_bytes() == BODY
    assert outside.stat().st_nlink == 1


def test_an_empty_folder_at_the_part_is_replaced(
    server: ArtifactServer, client: httpx.Client, store: ArtifactStore
) -> None:
    part = store.part_path("job1")
    part.mkdir()
    url = server.add("/a.bin", Artifact(body=BODY))

    streamed = stream_to_part(client, probe(client, url, LIMITS), part, LIMITS)

    assert streamed.size == len(BODY)
    assert part.read_bytes() == BODY


@pytest.mark.parametrize("where", ["part", "checkpoint"])
def test_a_folder_holding_files_is_a_clear_error_before_any_byte_is_fetched(
    server: ArtifactServer, client: httpx.Client, store: ArtifactStore, where: str
) -> None:
    folder = store.part_path("job1") if where == "part" else store.checkpoint_path("job1")
    folder.mkdir()
    (folder / "keep.txt").write_text("someone's file")
    url = server.add("/a.bin", Artifact(body=BODY))
    found = probe(client, url, LIMITS)

    with pytest.raises(TransientFetchError, match="is a folder holding files") as info:
        stream_to_part(client, found, store.part_path("job1"), LIMITS)

    assert str(folder) in str(info.value)
    assert str(info.value).endswith(
        "move it away; the job is retried later, and once its attempts are used up "
        "`docstokg job retry` gives it new ones"
    )
    assert info.value.retryable
    assert server.stats("/a.bin").get_requests == 0
    assert (folder / "keep.txt").read_text() == "someone's file"


@pytest.mark.parametrize("folder", [".staging", "artifacts"])
def test_prepare_refuses_a_linked_folder(tmp_path: Path, folder: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / folder).symlink_to(tmp_path / "elsewhere")

    with pytest.raises(StoreError, match="is a symbolic link") as info:
        ArtifactStore(out).prepare()

    assert str(out / folder) in str(info.value)
    assert "replace the link with a folder" in str(info.value)
    assert isinstance(info.value, ConfigurationError)
    assert list((tmp_path / "elsewhere").iterdir()) == []


@pytest.mark.parametrize("folder", [".staging", "artifacts"])
def test_prepare_refuses_a_file_where_a_folder_belongs(tmp_path: Path, folder: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / folder).write_bytes(b"not a folder")

    with pytest.raises(StoreError, match="is not a folder") as info:
        ArtifactStore(out).prepare()

    assert str(out / folder) in str(info.value)


def test_finalize_replaces_a_linked_artifact_folder_by_a_real_one(
    store: ArtifactStore, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere-folder"
    elsewhere.mkdir()
    (store.artifacts_dir / SHA[:2]).symlink_to(elsewhere)
    part = store.part_path("job1")
    part.write_bytes(BODY)

    relpath = store.finalize(part, sha256=SHA, size=len(BODY))

    folder = store.artifacts_dir / SHA[:2]
    assert not folder.is_symlink()
    assert folder.is_dir()
    assert store.resolve(relpath).read_bytes() == BODY
    assert list(elsewhere.iterdir()) == []


def test_finalize_replaces_a_link_at_the_final_path(store: ArtifactStore, tmp_path: Path) -> None:
    """A link to a file of the same size and hash is still a link: replaced, never kept."""
    same_bytes = tmp_path / "elsewhere.bin"
    same_bytes.write_bytes(BODY)
    final = store.resolve(store.relpath_for(SHA))
    final.parent.mkdir()
    final.symlink_to(same_bytes)
    part = store.part_path("job1")
    part.write_bytes(BODY)

    store.finalize(part, sha256=SHA, size=len(BODY))

    assert not final.is_symlink()
    assert final.read_bytes() == BODY
    assert same_bytes.read_bytes() == BODY
    assert not part.exists()
