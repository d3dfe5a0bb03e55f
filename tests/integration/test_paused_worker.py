"""A worker paused past its lease (SIGSTOP, a frozen VM) that wakes up writes nothing anyone reads.

Issue 14: a run resumed a killed run's ``.part``, was paused past its lease; a
second run took the job over, resumed *the same file* and stored it; the first
woke and wrote the chunk it had already read into that inode, after the store,
so the stored artifact grew and no longer matched its SHA-256 name.  Now each
lease epoch writes a part of its own under an exclusive ``flock``
(:mod:`docstokg.download.handover`).  Here "holder A" is a thread whose
download the loopback server holds mid-body (A has its part open and
locked), and "holder B" a newer epoch that takes the job over meanwhile; a
paused holder that is not running at all is a lock held by the test itself.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from docstokg.download import (
    ArtifactStore,
    Checkpoint,
    DownloadLimits,
    Fetcher,
    PartLost,
    Probe,
    Streamed,
    checkpoint_for,
    make_client,
)
from docstokg.ledger import Ledger
from docstokg.services import lease_next_job, plan_job_if_absent, reconcile_jobs
from docstokg.staging import part_job_ids
from docstokg.testing.server import Artifact, ArtifactServer, generated_body, strong_etag
from tests.e2e.test_run_cli import (
    LARGE,
    LEASE_TTL_ENV,
    PAUSE_AT,
    Finished,
    Running,
    assert_stored_exactly,
    cli,
    run_env,
    serve,
    serve_large,
    start,
    wait_for_checkpoint,
    write_manifest,
)
from tests.runner_kit import BytesReached

BODY = generated_body("test-paused-worker", 400_000)
SHA = hashlib.sha256(BODY).hexdigest()
PATH = "/paused.bin"
JOB = "0123abcd"
CUT = 100_000  # what a killed run left behind
PAUSE = 200_000  # where the server holds holder A's body
# A checkpoint after every chunk: what A wrote before the pause is vouched for.
LIMITS = DownloadLimits(
    connect_timeout_s=5.0, read_timeout_s=10.0, chunk_bytes=16 * 1024, checkpoint_bytes=16 * 1024
)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with make_client(LIMITS, max_connections=4) as client:
        yield client


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    store = ArtifactStore(tmp_path / "out")
    store.prepare()
    return store


@pytest.fixture
def fetcher(client: httpx.Client, store: ArtifactStore) -> Fetcher:
    return Fetcher(client, store, LIMITS)


def stream(
    fetcher: Fetcher, head: Probe, epoch: int, on_bytes: BytesReached | None = None
) -> Streamed:
    """What STREAM does for the holder of lease ``epoch`` (never asked to stop)."""
    return fetcher.stream(
        JOB,
        head,
        epoch=epoch,
        expected_sha256=None,
        should_stop=lambda: False,
        on_bytes=(on_bytes or BytesReached(0)).advance_bytes,
    )


def leave_part(store: ArtifactStore, epoch: int, data: bytes, vouched: bytes, url: str) -> Path:
    """A part holder ``epoch`` left: ``data`` on disk, its checkpoint vouching for ``vouched``."""
    part = store.part_path(JOB, epoch)
    part.write_bytes(data)
    sha256 = hashlib.sha256(vouched).hexdigest()
    checkpoint = Checkpoint(strong_etag(BODY), len(vouched), sha256, url=url, total=len(BODY))
    checkpoint.write(checkpoint_for(part))
    return part


def held_open(part: Path) -> int:
    """A descriptor on ``part`` holding its lock, as its live (paused) writer does."""
    fd = os.open(part, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def stored_file(store: ArtifactStore, relpath: str) -> Path:
    stored = store.resolve(relpath)
    assert stored.name == SHA
    return stored


def assert_stored_right(store: ArtifactStore, relpath: str) -> None:
    """The stored file is BODY: its size, and a SHA-256 equal to its name."""
    stored = stored_file(store, relpath)
    data = stored.read_bytes()
    assert len(data) == len(BODY)
    assert hashlib.sha256(data).hexdigest() == stored.name


def staged_names(store: ArtifactStore) -> list[str]:
    return sorted(path.name for path in store.staging_dir.iterdir())


# -- 1, 2: the scenario, at the download layer ---------------------------------------


def pause_holder_a(
    server: ArtifactServer,
    fetcher: Fetcher,
    pool: ThreadPoolExecutor,
    head: Probe,
    *,
    epoch: int,
    writes: int,
) -> tuple[Future[Streamed], BytesReached]:
    """Holder A streaming until the server holds its body at PAUSE, its part open and locked.

    Returns once A has written ``writes`` bytes (all it was sent), with what
    counts A's writes; the artifact is then served anew without the pause, so
    holder B is not held.
    """
    written = BytesReached(writes)
    holder_a = pool.submit(stream, fetcher, head, epoch, written)
    assert written.reached.wait(timeout=10)
    assert server.wait_paused(PATH, timeout=10)
    server.add(PATH, Artifact(body=BODY))  # same bytes and validators, no pause
    return holder_a, written


@pytest.mark.parametrize("resumed", [True, False], ids=["a-resumed-a-part", "a-wrote-afresh"])
def test_a_woken_holder_writes_nothing_into_what_its_successor_stored(
    server: ArtifactServer, fetcher: Fetcher, store: ArtifactStore, resumed: bool
) -> None:
    url = server.add(PATH, Artifact(body=BODY, pause_after=PAUSE))
    head = fetcher.probe(url)
    if resumed:  # a killed run (epoch 1) left a part; A (epoch 2) resumes it
        leave_part(store, 1, BODY[:CUT], BODY[:CUT], url)
    epoch_a = 2 if resumed else 1
    writes = PAUSE - CUT if resumed else PAUSE

    with ThreadPoolExecutor(max_workers=1) as pool:
        holder_a, written = pause_holder_a(
            server, fetcher, pool, head, epoch=epoch_a, writes=writes
        )
        # A's lease expired; B (the next epoch) takes the job over and stores it.
        epoch_b = epoch_a + 1
        assert fetcher.can_resume(JOB, head, epoch=epoch_b)
        streamed = stream(fetcher, head, epoch_b)
        relpath = fetcher.finalize(JOB, streamed, epoch=epoch_b)
        assert_stored_right(store, relpath)
        assert staged_names(store) == []  # B's finalize removed A's part and checkpoint

        server.release(PATH)  # A wakes: its next chunk arrives
        error = holder_a.exception(timeout=30)

    assert_stored_right(store, relpath)  # same size, same SHA-256 as its name
    assert written.written == writes  # A wrote no byte after it woke
    assert staged_names(store) == []  # nor a checkpoint
    assert isinstance(error, PartLost), error
    assert "lost the job" in str(error)
    assert streamed.resumed_from > 0  # B continued A's bytes, it did not start over


# -- 3, 4: taking over a dead holder's part, or a live one's ---------------------------------


@pytest.mark.parametrize("writer_alive", [False, True], ids=["dead-writer", "live-writer"])
def test_a_dead_holders_part_is_moved_and_a_live_ones_prefix_copied(
    server: ArtifactServer, fetcher: Fetcher, store: ArtifactStore, writer_alive: bool
) -> None:
    url = server.add(PATH, Artifact(body=BODY))
    head = fetcher.probe(url)
    earlier = leave_part(store, 1, BODY[:CUT], BODY[:CUT], url)
    inode = earlier.stat().st_ino
    fd = held_open(earlier) if writer_alive else None
    try:
        streamed = stream(fetcher, head, 2)
        relpath = fetcher.finalize(JOB, streamed, epoch=2)
        if fd is not None:  # the live writer's file was left to it, untouched
            assert os.pread(fd, len(BODY), 0) == BODY[:CUT]
    finally:
        if fd is not None:
            os.close(fd)

    assert streamed.resumed_from == CUT
    stats = server.stats(PATH)
    assert stats.range_headers == (f"bytes={CUT}-",)
    assert stats.body_bytes_sent == len(BODY) - CUT  # the prefix was never fetched again
    assert_stored_right(store, relpath)
    moved = stored_file(store, relpath).stat().st_ino == inode
    assert moved is not writer_alive  # a rename keeps the inode, a copy is a new file
    assert staged_names(store) == []


@pytest.mark.parametrize("writer_alive", [False, True], ids=["dead-writer", "live-writer"])
def test_a_tampered_earlier_part_restarts_from_zero(
    server: ArtifactServer, fetcher: Fetcher, store: ArtifactStore, writer_alive: bool
) -> None:
    url = server.add(PATH, Artifact(body=BODY))
    head = fetcher.probe(url)
    tampered = bytearray(BODY[:CUT])
    tampered[CUT // 2] ^= 0xFF
    earlier = leave_part(store, 1, bytes(tampered), BODY[:CUT], url)
    fd = held_open(earlier) if writer_alive else None
    try:
        assert fetcher.can_resume(JOB, head, epoch=2)  # vouched for, until re-hashed
        streamed = stream(fetcher, head, 2)
    finally:
        if fd is not None:
            os.close(fd)

    assert streamed.resumed_from == 0
    stats = server.stats(PATH)
    assert (stats.full_gets, stats.range_gets) == (1, 0)
    assert stats.body_bytes_sent == len(BODY)
    assert_stored_right(store, fetcher.finalize(JOB, streamed, epoch=2))


@pytest.mark.parametrize("writer_alive", [False, True], ids=["dead-writer", "live-writer"])
def test_a_stream_replayed_from_a_predecessors_record_finalizes_its_part(
    server: ArtifactServer, fetcher: Fetcher, store: ArtifactStore, writer_alive: bool
) -> None:
    """Epoch 1 streamed (and recorded it), then lost the job; epoch 2 replays STREAM, finalizes."""
    url = server.add(PATH, Artifact(body=BODY))
    streamed = stream(fetcher, fetcher.probe(url), 1)
    earlier = store.part_path(JOB, 1)
    inode = earlier.stat().st_ino
    fd = held_open(earlier) if writer_alive else None  # paused inside its own FINALIZE
    try:
        relpath = fetcher.finalize(JOB, streamed, epoch=2)
    finally:
        if fd is not None:
            os.close(fd)

    assert_stored_right(store, relpath)
    assert (stored_file(store, relpath).stat().st_ino == inode) is not writer_alive
    assert server.stats(PATH).get_requests == 1  # nothing fetched again
    assert staged_names(store) == []


# -- a holder that finds its own part held by another has lost it ---------------------------


def test_a_part_locked_by_another_is_neither_written_nor_stored(
    server: ArtifactServer, fetcher: Fetcher, store: ArtifactStore
) -> None:
    url = server.add(PATH, Artifact(body=BODY))
    head = fetcher.probe(url)
    streamed = stream(fetcher, head, 1)
    part = store.part_path(JOB, 1)
    fd = held_open(part)  # a successor taking the part over holds its lock
    try:
        with pytest.raises(PartLost, match="locked by"):
            fetcher.finalize(JOB, streamed, epoch=1)
        with pytest.raises(PartLost, match="locked by another writer"):
            stream(fetcher, head, 1)
    finally:
        os.close(fd)
    assert list(store.artifacts_dir.rglob("*")) == []
    assert part.read_bytes() == BODY


# -- 5: cleanup knows a part's job from either name -----------------------------------------


def test_part_names_carry_the_epoch_and_cleanup_reads_the_job_back(store: ArtifactStore) -> None:
    assert store.part_path(JOB) == store.part_path(JOB, 0) == store.staging_dir / f"{JOB}.part"
    assert store.part_path(JOB, 7) == store.staging_dir / f"{JOB}.7.part"
    assert store.checkpoint_path(JOB, 7) == store.staging_dir / f"{JOB}.7.part.json"
    for job_id in (JOB, "legacy-00007", "job_7.v3"):
        for epoch in (0, 1, 12):
            assert job_id in part_job_ids(store.part_path(job_id, epoch).name)
    # A v3 id ending in .<digits>: either reading may be the job (both are kept if leased).
    assert part_job_ids("job.5.part") == ("job", "job.5")
    assert part_job_ids("job.05.part") == ("job.05",)
    bad_epochs: tuple[object, ...] = (-1, True, 1.5)
    for bad in bad_epochs:
        with pytest.raises(ValueError, match="epoch"):
            store.part_path(JOB, bad)  # type: ignore[arg-type]


def test_cleanup_deletes_a_stale_epoch_part_and_keeps_a_live_leases(
    ledger: Ledger, store: ArtifactStore
) -> None:
    live = plan_job_if_absent(ledger, work_id="W1", artifact_id="a", canonical_url="http://x/1")
    stale = plan_job_if_absent(ledger, work_id="W2", artifact_id="a", canonical_url="http://x/2")
    lease = lease_next_job(ledger, owner="worker-1", ttl_s=3600)
    assert lease is not None
    assert lease.job_id == live
    two_hours_ago = time.time() - 7200  # a file's age is read from this host's clock
    staging = store.staging_dir  # the names part_path gives epochs 3 and 2 (tested above)
    parts = {"live": staging / f"{live}.3.part", "stale": staging / f"{stale}.2.part"}
    for part in parts.values():
        part.write_bytes(b"partial")
        checkpoint_for(part).write_text("{}")
        os.utime(part, (two_hours_ago, two_hours_ago))

    report = reconcile_jobs(ledger, store.staging_dir, max_age_s=3600)

    assert report.parts_deleted == [parts["stale"]]
    assert report.parts_kept_live == [parts["live"]]
    assert staged_names(store) == sorted([parts["live"].name, checkpoint_for(parts["live"]).name])


# -- end to end: two `docstokg run` processes, the first SIGSTOPped past its lease ---------


def stop_outside_a_write(process: subprocess.Popen[bytes], ledger_file: Path) -> None:
    """SIGSTOP ``process`` at a moment it holds no SQLite write lock on ``ledger_file``.

    Stopped inside a write transaction (a lease renewal, say) it would block
    every other writer of the file until woken: then it is woken and stopped again.
    """
    for _ in range(100):
        os.kill(process.pid, signal.SIGSTOP)
        os.waitpid(process.pid, os.WUNTRACED)  # returns once it is stopped
        probe_writer = sqlite3.connect(ledger_file, timeout=0)
        try:
            probe_writer.execute("BEGIN IMMEDIATE")
            probe_writer.rollback()
            return
        except sqlite3.OperationalError:
            os.kill(process.pid, signal.SIGCONT)
        finally:
            probe_writer.close()
    raise AssertionError(f"{process.pid} held the ledger's write lock at every stop")


def woken(first: Running) -> Finished:
    first.process.send_signal(signal.SIGCONT)
    return first.finish()


def test_a_run_paused_past_its_lease_wakes_and_stores_nothing_wrong(
    server: ArtifactServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    large = serve_large(server)
    small = serve(server, "small", 2, 64 * 1024)
    manifest = write_manifest(tmp_path / "manifest.jsonl", [s.row() for s in [*small, large]])
    args = ["run", str(manifest), "--out", str(out), "--idempotency", "--workers", "2", "--json"]
    env = run_env(**{LEASE_TTL_ENV: "2"})  # the second run takes the job over after 2 s

    first = start(*args, cwd=tmp_path, env=env)
    try:
        assert server.wait_paused(LARGE, timeout=30), first.finish(timeout=5).explain()
        part = ArtifactStore(out).part_path(large.job_id, 1)  # the first grant: epoch 1
        wait_for_checkpoint(part, PAUSE_AT)  # the first run holds a part worth resuming
        stop_outside_a_write(first.process, out / "manifest.sqlite3")
        server.add(LARGE, Artifact(large.body))  # the same bytes, not paused for the second run
        second = cli(*args, cwd=tmp_path, env=env)
        server.release(LARGE)  # the first run's next chunk is on its way
    finally:
        first_done = woken(first)

    assert second.returncode == 0, second.explain()
    assert_stored_exactly(out, second.summary(), [*small, large])
    assert server.stats(LARGE).range_headers == (f"bytes={PAUSE_AT}-",)  # a takeover
    for stored in (out / "artifacts").rglob("*"):
        if stored.is_file():
            data = stored.read_bytes()
            assert hashlib.sha256(data).hexdigest() == stored.name, stored
            assert len(data) in {len(item.body) for item in [*small, large]}, stored
    assert sorted(path.name for path in (out / ".staging").iterdir()) == []
    assert "lost the job" in first_done.stderr, first_done.explain()
    # Its summary does not pass the job off as its own work.
    assert first_done.summary()["lost_jobs"] >= 1, first_done.explain()
