"""Resuming only what a checkpoint vouches for, deadlines, and the expected checksum.

Each test scripts a real loopback server and checks the bytes on disk and on
the wire: a part from an older version is never spliced onto a newer one, a
part edited between runs is never trusted, a dripping server cannot hold a
worker forever, and bytes that do not hash as the manifest says are not kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from docstokg.download import (
    ArtifactStore,
    Checkpoint,
    DownloadLimits,
    Probe,
    checkpoint_for,
    make_client,
    probe,
    resume_point,
    stream_to_part,
)
from docstokg.errors import (
    ChecksumMismatch,
    PermanentFetchError,
    TransientFetchError,
)
from docstokg.testing.server import Artifact, ArtifactServer, generated_body, strong_etag
from tests.download_kit import stop_at_pause

BODY = generated_body("test-part-checkpoint", 300_000)
SHA = hashlib.sha256(BODY).hexdigest()
OTHER = generated_body("test-part-checkpoint, version B", 300_000)
LIMITS = DownloadLimits(connect_timeout_s=5.0, read_timeout_s=10.0, chunk_bytes=16 * 1024)
CUT = 100_000


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with make_client(LIMITS, max_connections=4) as client:
        yield client


@pytest.fixture
def part(tmp_path: Path) -> Path:
    return tmp_path / "out" / ".staging" / "0123abcd.part"


def saved(part: Path) -> Checkpoint:
    checkpoint = Checkpoint.read(checkpoint_for(part))
    assert checkpoint is not None, f"no valid checkpoint beside {part}"
    return checkpoint


def vouches(checkpoint: Checkpoint, body: bytes) -> bool:
    return hashlib.sha256(body[: checkpoint.length]).hexdigest() == checkpoint.sha256


def leave_a_cut_part(server: ArtifactServer, client: httpx.Client, part: Path) -> Probe:
    """An attempt that ends after CUT bytes of BODY (ETag "A"), as a dropped connection does."""
    url = server.add("/a.bin", Artifact(body=BODY, etag='"A"', truncate_at=CUT))
    found = probe(client, url, LIMITS)
    with pytest.raises(TransientFetchError, match=f"after {CUT:,} of"):
        stream_to_part(client, found, part, LIMITS)
    assert part.read_bytes() == BODY[:CUT]
    return found


# -- the checkpoint file --------------------------------------------------------


def test_a_stopped_download_leaves_a_checkpoint_of_exactly_its_bytes(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    found = leave_a_cut_part(server, client, part)

    data = json.loads(checkpoint_for(part).read_text())
    assert data == {
        "version": 2,
        "url": found.url,
        "total": len(BODY),
        "validator": '"A"',
        "length": CUT,
        "sha256": hashlib.sha256(BODY[:CUT]).hexdigest(),
    }
    assert ArtifactStore(part.parent.parent).checkpoint_path("0123abcd") == checkpoint_for(part)
    assert resume_point(part, checkpoint_for(part), found) == CUT


def test_an_interrupted_download_checkpoints_what_it_wrote(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    url = server.add("/a.bin", Artifact(body=BODY, pause_after=65_536))
    found = probe(client, url, LIMITS)

    stop_at_pause(client, found, part, LIMITS, server=server, path="/a.bin", pause=65_536)

    kept = part.stat().st_size
    assert kept == 65_536
    checkpoint = saved(part)
    assert (checkpoint.length, checkpoint.validator) == (kept, strong_etag(BODY))
    assert vouches(checkpoint, BODY)


def test_an_exception_from_a_callback_still_checkpoints(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    """A lost lease (or any error raised while writing) keeps what was written, vouched for."""
    url = server.add("/a.bin", Artifact(body=BODY))

    class Lost(Exception):
        pass

    def lose_the_lease(count: int) -> None:
        raise Lost

    with pytest.raises(Lost):
        stream_to_part(client, probe(client, url, LIMITS), part, LIMITS, on_bytes=lose_the_lease)

    checkpoint = saved(part)
    assert checkpoint.length == part.stat().st_size == LIMITS.chunk_bytes
    assert vouches(checkpoint, BODY)


def test_checkpoints_are_written_while_the_part_grows(
    server: ArtifactServer, part: Path, tmp_path: Path
) -> None:
    """What a SIGKILL leaves (part and checkpoint as they stand) re-fetches < checkpoint_bytes."""
    every = 40_000
    limits = dataclasses.replace(LIMITS, checkpoint_bytes=every)
    url = server.add("/a.bin", Artifact(body=BODY))
    killed = tmp_path / "killed" / ".staging" / "0123abcd.part"
    killed.parent.mkdir(parents=True)
    received = 0

    def snapshot_at_200k(count: int) -> None:
        nonlocal received
        received += count
        if received >= 200_000 and not killed.exists():
            shutil.copyfile(part, killed)
            shutil.copyfile(checkpoint_for(part), checkpoint_for(killed))

    with make_client(limits) as client:
        found = probe(client, url, limits)
        stream_to_part(client, found, part, limits, on_bytes=snapshot_at_200k)
        left = killed.stat().st_size
        checkpoint = saved(killed)
        assert left - every < checkpoint.length <= left
        assert vouches(checkpoint, BODY)

        result = stream_to_part(client, found, killed, limits)

    assert (result.sha256, result.resumed_from) == (SHA, checkpoint.length)
    assert server.stats("/a.bin").range_headers == (f"bytes={checkpoint.length}-",)
    assert killed.read_bytes() == BODY


def test_a_complete_part_keeps_its_checkpoint_until_it_is_stored(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    url = server.add("/a.bin", Artifact(body=BODY))
    store = ArtifactStore(part.parent.parent)

    result = stream_to_part(client, probe(client, url, LIMITS), part, LIMITS)

    assert saved(part).length == len(BODY)
    store.finalize(part, sha256=result.sha256, size=result.size)
    assert not part.exists()
    assert not checkpoint_for(part).exists()


def test_discard_part_removes_the_part_and_its_checkpoint(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    leave_a_cut_part(server, client, part)

    ArtifactStore(part.parent.parent).discard_part("0123abcd")

    assert not part.exists()
    assert not checkpoint_for(part).exists()


# -- resuming only what was verified -----------------------------------------------


def test_a_part_of_an_older_version_is_never_spliced_onto_the_new_one(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    """Version A's head was left; HEAD now says B: If-Range must not vouch for A's bytes with B."""
    leave_a_cut_part(server, client, part)
    url = server.add("/a.bin", Artifact(body=OTHER, etag='"B"'))
    server.reset_stats()
    now = probe(client, url, LIMITS)

    result = stream_to_part(client, now, part, LIMITS)

    assert part.read_bytes() == OTHER
    assert (result.sha256, result.resumed_from) == (hashlib.sha256(OTHER).hexdigest(), 0)
    stats = server.stats("/a.bin")
    assert (stats.range_headers, stats.full_gets) == ((), 1)
    assert saved(part).validator == '"B"'


def test_a_part_tampered_between_runs_is_downloaded_again(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    """Same length, other bytes: the re-hash of the prefix catches it before it is trusted."""
    found = leave_a_cut_part(server, client, part)
    tampered = bytearray(part.read_bytes())
    tampered[5000] ^= 0xFF
    part.write_bytes(bytes(tampered))
    server.add("/a.bin", Artifact(body=BODY, etag='"A"'))
    server.reset_stats()

    assert resume_point(part, checkpoint_for(part), found) == CUT  # no hashing here
    result = stream_to_part(client, found, part, LIMITS)

    assert (result.sha256, result.resumed_from) == (SHA, 0)
    assert part.read_bytes() == BODY
    assert server.stats("/a.bin").full_gets == 1


def test_a_restart_from_zero_unvouches_the_old_bytes_before_writing(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    """A part rewritten from zero: from its first new byte, no checkpoint vouches for the old ones.

    Else a SIGKILL mid-rewrite would leave a checkpoint naming bytes the part no longer holds.
    """
    found = leave_a_cut_part(server, client, part)
    tampered = bytearray(part.read_bytes())
    tampered[5000] ^= 0xFF
    part.write_bytes(bytes(tampered))
    server.add("/a.bin", Artifact(body=BODY, etag='"A"'))
    seen: list[int | None] = []

    def look(count: int) -> None:
        if not seen:
            checkpoint = Checkpoint.read(checkpoint_for(part))
            seen.append(None if checkpoint is None else checkpoint.length)

    result = stream_to_part(client, found, part, LIMITS, on_bytes=look)

    assert result.resumed_from == 0
    assert seen in ([None], [0])


def test_bytes_past_the_checkpoint_are_cut_off_before_resuming(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    found = leave_a_cut_part(server, client, part)
    with part.open("ab") as grown:
        grown.write(b"never vouched for" * 100)
    server.add("/a.bin", Artifact(body=BODY, etag='"A"'))
    server.reset_stats()

    result = stream_to_part(client, found, part, LIMITS)

    assert (result.sha256, result.resumed_from) == (SHA, CUT)
    assert part.read_bytes() == BODY
    assert server.stats("/a.bin").range_headers == (f"bytes={CUT}-",)


@pytest.mark.parametrize(
    "spoil",
    [
        "missing",
        "not json",
        "no validator",
        "other version",
        "longer than the part",
        "a link",
        "deeply nested",
        "of another URL",
        "of another length",
        "of another version",
    ],
)
def test_a_checkpoint_that_cannot_vouch_restarts_from_zero(
    server: ArtifactServer, client: httpx.Client, part: Path, spoil: str
) -> None:
    found = leave_a_cut_part(server, client, part)
    checkpoint = checkpoint_for(part)
    good = saved(part)
    if spoil == "missing":
        checkpoint.unlink()
    elif spoil == "not json":
        checkpoint.write_text("{ half a checkpoint")
    elif spoil == "no validator":
        dataclasses.replace(good, validator=None).write(checkpoint)
    elif spoil == "other version":
        dataclasses.replace(good, validator='"elsewhere"').write(checkpoint)
    elif spoil == "longer than the part":
        dataclasses.replace(good, length=CUT + 1).write(checkpoint)
    elif spoil == "deeply nested":  # exhausts the JSON parser's recursion
        checkpoint.write_text("[" * 5000)
    elif spoil == "of another URL":
        dataclasses.replace(good, url=found.url + "?v=2").write(checkpoint)
    elif spoil == "of another length":
        dataclasses.replace(good, total=len(BODY) + 1).write(checkpoint)
    elif spoil == "of another version":
        older = {k: v for k, v in good.to_json().items() if k not in ("url", "total")}
        checkpoint.write_text(json.dumps({**older, "version": 1}))
    else:
        real = checkpoint.with_name("real.json")
        checkpoint.rename(real)
        checkpoint.symlink_to(real)
    server.add("/a.bin", Artifact(body=BODY, etag='"A"'))
    server.reset_stats()

    assert resume_point(part, checkpoint, found) == 0
    result = stream_to_part(client, found, part, LIMITS)

    assert (result.sha256, result.resumed_from) == (SHA, 0)
    assert part.read_bytes() == BODY
    assert server.stats("/a.bin").range_headers == ()


def test_parts_swapped_between_two_jobs_with_one_validator_are_not_spliced(
    server: ArtifactServer, client: httpx.Client, tmp_path: Path
) -> None:
    """Weak ETags and one Last-Modified: both resources share a validator and a length.

    Each part (and its checkpoint) is renamed to the other job's name: both
    still hash as their checkpoints say, so only the URL they record tells.
    """
    store = ArtifactStore(tmp_path / "out")
    store.prepare()
    bodies = {"/a.bin": BODY, "/b.bin": OTHER}
    found, parts = {}, {}
    for path, body in bodies.items():
        url = server.add(path, Artifact(body=body, etag='W/"same"', truncate_at=CUT))
        found[path], parts[path] = probe(client, url, LIMITS), store.part_path(path[1])
        with pytest.raises(TransientFetchError):
            stream_to_part(client, found[path], parts[path], LIMITS)
    assert found["/a.bin"].validator == found["/b.bin"].validator is not None
    swap = store.staging_dir / "swap"
    for a, b in (
        (parts["/a.bin"], parts["/b.bin"]),
        (checkpoint_for(parts["/a.bin"]), checkpoint_for(parts["/b.bin"])),
    ):
        a.rename(swap)
        b.rename(a)
        swap.rename(b)
    for path, body in bodies.items():
        server.add(path, Artifact(body=body, etag='W/"same"'))
    server.reset_stats()

    for path, body in bodies.items():
        result = stream_to_part(client, found[path], parts[path], LIMITS)
        relpath = store.finalize(parts[path], sha256=result.sha256, size=result.size)

        assert (result.sha256, result.resumed_from) == (hashlib.sha256(body).hexdigest(), 0)
        assert store.resolve(relpath).read_bytes() == body
        assert server.stats(path).range_headers == ()


def test_a_body_without_a_validator_is_never_resumed(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    url = server.add(
        "/a.bin", Artifact(body=BODY, etag='W/"weak"', last_modified=None, truncate_at=CUT)
    )
    found = probe(client, url, LIMITS)
    with pytest.raises(TransientFetchError):
        stream_to_part(client, found, part, LIMITS)

    assert saved(part).validator is None
    assert resume_point(part, checkpoint_for(part), found) == 0


# -- deadlines -------------------------------------------------------------------


def test_a_dripping_server_fails_the_minimum_speed_and_keeps_the_part(
    server: ArtifactServer, part: Path
) -> None:
    """One byte every 50 ms never trips the read timeout; the minimum speed ends it."""
    limits = dataclasses.replace(
        LIMITS, read_timeout_s=2.0, min_speed_bytes_s=1000.0, min_speed_window_s=0.3
    )
    url = server.add("/drip", Artifact(body=BODY, bytes_per_s=20))

    with make_client(limits) as client:
        found = probe(client, url, limits)
        with pytest.raises(TransientFetchError) as info:
            stream_to_part(client, found, part, limits)

    message = str(info.value)
    assert "under the minimum of 1000 bytes/s over 0.3 s" in message
    assert "min_speed_bytes_s, min_speed_window_s" in message
    assert "is kept" in message
    assert "next attempt resumes it" in message
    assert info.value.retryable
    kept = part.read_bytes()
    assert 0 < len(kept) < len(BODY)
    assert saved(part).length == len(kept)
    assert resume_point(part, checkpoint_for(part), found) == len(kept)


def test_an_attempt_longer_than_its_deadline_is_cut_short(
    server: ArtifactServer, part: Path
) -> None:
    limits = dataclasses.replace(LIMITS, min_speed_bytes_s=0.0, attempt_deadline_s=0.3)
    url = server.add("/drip", Artifact(body=BODY, bytes_per_s=20))

    with make_client(limits) as client:
        with pytest.raises(TransientFetchError) as info:
            stream_to_part(client, probe(client, url, limits), part, limits)

    message = str(info.value)
    assert "still downloading after 0.3 s" in message
    assert "(attempt_deadline_s)" in message
    assert "next attempt resumes it" in message
    assert saved(part).length == part.stat().st_size > 0


# -- the expected checksum ---------------------------------------------------------


def test_bytes_that_do_not_hash_as_expected_are_not_kept(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    url = server.add("/a.bin", Artifact(body=BODY))
    wrong = "0" * 64

    with pytest.raises(ChecksumMismatch) as info:
        stream_to_part(client, probe(client, url, LIMITS), part, LIMITS, expected_sha256=wrong)

    assert str(info.value) == (
        f"{url}: expected sha256 {wrong}, got {SHA}; nothing was stored (permanent: not "
        "retried; fix the manifest's sha256 or the source)"
    )
    assert isinstance(info.value, PermanentFetchError)
    assert not info.value.retryable
    assert not part.exists()
    assert not checkpoint_for(part).exists()


def test_the_expected_checksum_is_checked_on_an_already_complete_part(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    """All of it was kept from an earlier attempt: the mismatch is final only once fetched anew."""
    url = server.add("/a.bin", Artifact(body=BODY))
    found = probe(client, url, LIMITS)
    stream_to_part(client, found, part, LIMITS)
    server.reset_stats()

    with pytest.raises(TransientFetchError, match="restarts from zero"):
        stream_to_part(client, found, part, LIMITS, expected_sha256="f" * 64)

    assert server.stats("/a.bin").range_headers == (f"bytes={len(BODY)}-",)  # the 416 path
    assert not part.exists()
    assert not checkpoint_for(part).exists()
    with pytest.raises(ChecksumMismatch, match=f"got {SHA}"):
        stream_to_part(client, found, part, LIMITS, expected_sha256="f" * 64)
    assert server.stats("/a.bin").full_gets == 1


def test_a_resumed_download_that_does_not_match_restarts_from_zero(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    """A prefix forged along with its checkpoint passes the re-hash; the expected sha256 catches it.

    It is not the permanent ChecksumMismatch: the bytes at fault may be the
    kept ones, so the part goes and the next attempt downloads everything.
    """
    found = leave_a_cut_part(server, client, part)
    forged = b"EVIL!" + BODY[5:CUT]
    part.write_bytes(forged)
    dataclasses.replace(saved(part), sha256=hashlib.sha256(forged).hexdigest()).write(
        checkpoint_for(part)
    )
    server.add("/a.bin", Artifact(body=BODY, etag='"A"'))
    server.reset_stats()

    with pytest.raises(TransientFetchError) as info:
        stream_to_part(client, found, part, LIMITS, expected_sha256=SHA)

    message = str(info.value)
    assert f"first {CUT:,} bytes kept" in message
    assert "the resumed download did not match" in message
    assert "restarts from zero" in message
    assert f"not the expected sha256 {SHA}" in message
    assert info.value.retryable
    assert not part.exists()
    assert not checkpoint_for(part).exists()
    result = stream_to_part(client, found, part, LIMITS, expected_sha256=SHA)
    assert (result.sha256, result.resumed_from) == (SHA, 0)
    assert part.read_bytes() == BODY
    assert server.stats("/a.bin").range_headers == (f"bytes={CUT}-",)


def test_a_matching_checksum_passes_in_any_case(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    url = server.add("/a.bin", Artifact(body=BODY))

    result = stream_to_part(
        client, probe(client, url, LIMITS), part, LIMITS, expected_sha256=SHA.upper()
    )

    assert result.sha256 == SHA
    assert part.read_bytes() == BODY
