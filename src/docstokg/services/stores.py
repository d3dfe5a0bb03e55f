"""The ledger and the store it fills: bound by an id, checked against the disk.

A ledger's rows describe files in one store.  Run against another folder, a
ledger would report work "already ended" whose files are not there, so a run
binds its ledger to the store on first use (``_meta``) and is refused on any
other.  The files themselves are checked too, not assumed: a run stats the
files of its manifest's ended jobs, ``job verify`` re-hashes them, and a job
whose file is missing or wrong is requeued, so the next run fetches it again.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from docstokg.errors import StoreMismatch
from docstokg.ledger import JobRecord, Ledger, StoredFile
from docstokg.states import JobState

STORE_ID_KEY = "store_id"
STORE_PATH_KEY = "store_path"
_ENDED_WITH_A_FILE = frozenset({JobState.DEDUPED, JobState.SKIPPED_DUPLICATE})

STORE_ID_FILE = ".docstokg-store-id"
_STORE_ID = re.compile(r"[0-9a-f]{32}")


def read_store_id(out_dir: Path) -> str | None:
    """The id recorded in ``out_dir``, or None when it has none yet.

    The file is opened without following a link (a link planted there could
    make any folder pass for the store) and without blocking (a FIFO would
    hang the run); anything but a regular file is refused.
    """
    path = Path(out_dir) / STORE_ID_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _not_an_id_file(path, exc.strerror or "cannot be opened") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _not_an_id_file(path, "not a regular file")
    with os.fdopen(fd, "rb") as handle:
        text = handle.read(128).decode("ascii", errors="replace").strip()
    if not _STORE_ID.fullmatch(text):
        raise StoreMismatch(
            f"{path} does not hold a store id (32 hex digits) but {text[:40]!r}; "
            "restore it from a backup, or delete it if this folder is a new store"
        )
    return text


def _not_an_id_file(path: Path, why: str) -> StoreMismatch:
    return StoreMismatch(
        f"{path} cannot be read as a store id ({why}): it is not a file docstokg wrote; "
        "move it away if this folder is a new store"
    )


def ensure_store_id(out_dir: Path) -> str:
    """The id of the store in ``out_dir``, writing a new one if it has none.

    Two processes racing on a new store agree: the file appears whole or not
    at all (written aside, then hard-linked into place, which fails if the
    other was first), and the loser reads the winner's id.
    """
    found = read_store_id(out_dir)
    if found is not None:
        return found
    store_id = secrets.token_hex(16)
    path = Path(out_dir) / STORE_ID_FILE
    aside = path.with_name(f"{STORE_ID_FILE}.{store_id}.tmp")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(f"{store_id}\n".encode("ascii"))
            handle.flush()
            os.fsync(handle.fileno())
        # Another process may have been first: then its id is the store's.
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    finally:
        aside.unlink(missing_ok=True)
    winner = read_store_id(out_dir)
    assert winner is not None  # linked by us or by the process that was first
    return winner


def bind_store(ledger: Ledger, out_dir: Path, *, create: bool = True) -> str:
    """Check that ``out_dir`` is the store this ledger fills; returns the store's id.

    A ledger that fills no store yet is bound to this one (its id file is
    written when ``create``, and recorded with the path it was first seen
    at, for messages).  Raises :class:`StoreMismatch` (exit 2) naming both
    paths when ``out_dir`` is another store, or a folder with no id at all
    while the ledger already fills one.
    """
    out_dir = Path(out_dir)
    with ledger.unit_of_work(read_only=True) as uow:
        recorded, recorded_path = uow.meta.get(STORE_ID_KEY), uow.meta.get(STORE_PATH_KEY)
    # The file is read after the ledger: a binder writes the file before the record,
    # so a record seen here has its file written, even by a run racing this one.
    found = read_store_id(out_dir)
    if recorded is None:
        if found is None and not create:
            raise StoreMismatch(
                f"--out {out_dir} is not a docstokg store (no {_id_file(out_dir)}) and this "
                "ledger fills none yet; run `docstokg run` with this --out first"
            )
        store_id = found if found is not None else ensure_store_id(out_dir)
        with ledger.unit_of_work() as uow:
            recorded = uow.meta.put_if_absent(STORE_ID_KEY, store_id)
            recorded_path = uow.meta.put_if_absent(STORE_PATH_KEY, str(out_dir.resolve()))
            uow.commit()
        found = store_id
    if found is None and recorded_path == str(out_dir.resolve()):
        raise StoreMismatch(
            f"--out {out_dir} is the store this ledger fills, but its id file "
            f"{_id_file(out_dir)} is gone; if the files there are still that store's, "
            f"restore the id: echo {recorded} > {_id_file(out_dir)} (a run then fetches "
            "again whatever is missing); if the folder was emptied for a fresh start, "
            "give it a new ledger with --db"
        )
    if found != recorded:
        what = f"store id {found}" if found is not None else f"no {_id_file(out_dir)}"
        raise StoreMismatch(
            f"this ledger fills the store at {recorded_path} (store id {recorded}), but "
            f"--out {out_dir.resolve()} is another folder ({what}); its records would not "
            f"describe the files there. Point --out at {recorded_path} (or wherever that "
            f"store is mounted on this machine), or give {out_dir} a ledger of its own "
            "with --db"
        )
    return recorded


def _id_file(out_dir: Path) -> str:
    return str(out_dir / STORE_ID_FILE)


NO_FILE_RECORDED = "the ledger records no file for this ended job"


def ended_with_a_file(jobs: Iterable[JobRecord]) -> list[JobRecord]:
    """The jobs that ended with bytes in the store (stored, or a duplicate of stored bytes)."""
    return [job for job in jobs if job.state in _ENDED_WITH_A_FILE]


def stored_file_problem(store: StoredFileChecker, job: JobRecord) -> str | None:
    """What is wrong with an ended job's file, by a ``stat`` (None: it is there, of its size)."""
    if not job.final_path or job.size_bytes is None:
        return NO_FILE_RECORDED
    return store.check_stored(job.final_path, job.size_bytes)


def requeue_for_refetch(ledger: Ledger, job_ids: Collection[str], *, reason: str) -> list[str]:
    """Send jobs whose stored file is missing or wrong back to be fetched again.

    Their recorded steps are abandoned (HEAD, STREAM and FINALIZE run again)
    and each keeps at least one attempt.  Jobs a live lease holds are left
    alone: their holder is working on them.  Returns the ids requeued.
    """
    if not job_ids:
        return []
    with ledger.unit_of_work() as uow:
        requeued = uow.jobs.requeue(job_ids, error=reason, now=uow.now())
        uow.ops.abandon_for_jobs(requeued, error=f"redo: {reason}")
        uow.commit()
    return requeued


@dataclass(frozen=True, slots=True)
class BadFile:
    """A stored file that is not what the ledger says: the job, the file, what is wrong."""

    job_id: str
    state: str
    final_path: str
    problem: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What ``job verify`` found: how many files were re-hashed, which were bad."""

    checked: int
    bad: list[BadFile]
    requeued: list[str]


def verify_store(
    ledger: Ledger,
    store: StoredFileChecker,
    *,
    jobs: int = 1,
    repair: bool = False,
    on_file: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Re-hash every stored artifact against the ledger; with ``repair``, requeue the bad.

    Reads the recorded files in one read-only unit of work, then hashes with
    ``jobs`` threads, holding no transaction meanwhile.  ``on_total`` hears the
    number of files, ``on_file`` the size of each one checked (for progress).
    """
    with ledger.unit_of_work(read_only=True) as uow:
        files = uow.jobs.stored_files()
    if on_total is not None:
        on_total(len(files))

    def check(recorded: StoredFile) -> BadFile | None:
        final_path, sha256, size = recorded.final_path, recorded.sha256, recorded.size_bytes
        if final_path is None or sha256 is None or size is None:
            problem: str | None = NO_FILE_RECORDED
        else:
            problem = store.verify_stored(final_path, sha256, size)
        if on_file is not None:
            on_file(size or 0)
        if problem is None:
            return None
        return BadFile(recorded.job_id, recorded.state, final_path or "", problem)

    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="verify") as pool:
        bad = [found for found in pool.map(check, files) if found is not None]
    requeued: list[str] = []
    if repair and bad:
        requeued = requeue_for_refetch(
            ledger,
            [found.job_id for found in bad],
            reason="stored file missing or corrupt (job verify --repair); fetched again",
        )
    return VerifyReport(checked=len(files), bad=bad, requeued=requeued)


class StoredFileChecker(Protocol):
    """What verification needs of a store (``ArtifactStore`` is one)."""

    def verify_stored(self, final_path: str, sha256: str, size: int) -> str | None: ...

    def check_stored(self, final_path: str, size: int) -> str | None: ...
