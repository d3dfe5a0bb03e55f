"""The on-disk layout of a run: staged ``.part`` files and content-addressed artifacts.

``DIR/.staging/<job_id>.<epoch>.part`` holds a download in progress, with its
checkpoint ``<job_id>.<epoch>.part.json`` beside it; the finished file moves to
``DIR/artifacts/<sha[:2]>/<sha256>``.  ``epoch`` is the lease epoch of the
job's holder: each grant writes a file of its own (see
:mod:`docstokg.download.handover` for why, and how a holder takes over the
bytes of an earlier one).  Epoch 0, the ledger off, keeps the names of older
versions, ``<job_id>.part`` and ``<job_id>.part.json``, so their staged files
are resumed as they are.  Every path is built from a job id or a
SHA-256 that is checked to be hex, never from manifest strings, so no URL or
artifact id can make a path escape ``DIR``.  Staging and artifacts live on the
same filesystem, so the move is one atomic ``os.replace``.

Nothing under ``DIR`` is trusted to be what its name says: files are opened
without following links (``O_NOFOLLOW``) and checked to be regular files, a
link or device where a file belongs is removed rather than written through,
and a file already at an artifact's address is hashed before it is kept.
Job ids are predictable, so a staging file is written or resumed only if
docstokg made it: a regular file with one link.  A hard link planted there
(its other name outside ``DIR``) is unlinked and a new file created, never
written through, resumed or moved into the store.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import stat
from pathlib import Path, PurePosixPath

from docstokg.errors import PartLost, StoreError, TransientFetchError
from docstokg.staging import checkpoint_for, epoch_in, part_name

# New job ids are hex UUIDs; ids adopted from a v3 ledger may be any short
# name.  Letters, digits, dot, dash, underscore, not starting with a dot: no
# separator, no "..", so no staging path can leave the staging folder.
_JOB_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HASH_BLOCK = 1024 * 1024
# O_NONBLOCK: opening a FIFO planted where a file belongs must not hang the
# worker; it changes nothing for regular files.
_SAFE_FLAGS = (
    getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
)
# What opening something that is not a regular file fails with under _SAFE_FLAGS.
_NOT_REGULAR_ERRNOS = frozenset({errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EMLINK})
#: What to do about a folder planted where docstokg keeps a file (it deletes none it did not make).
MOVE_IT_AWAY = (
    "move it away; the job is retried later, and once its attempts are used up "
    "`docstokg job retry` gives it new ones"
)


class ArtifactStore:
    """DIR/.staging for parts and their checkpoints, DIR/artifacts for content-addressed files."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.staging_dir = self.out_dir / ".staging"
        self.artifacts_dir = self.out_dir / "artifacts"

    def prepare(self) -> None:
        """Create the staging and artifacts folders (idempotent); refuse links and files there."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        _ensure_real_dir(self.staging_dir)
        _ensure_real_dir(self.artifacts_dir)

    def part_path(self, job_id: str, epoch: int = 0) -> Path:
        """Where the holder of job ``job_id`` with lease ``epoch`` stages its download.

        The one definition of a part's name: ``<job_id>.<epoch>.part``, and
        ``<job_id>.part`` for epoch 0 (the ledger off, and older versions).
        Refuses ids that could name another path.
        """
        _check_job_id(job_id)
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(
                f"lease epoch {epoch!r} is not a whole number >= 0; refusing to build a "
                "staging path from it"
            )
        return self.staging_dir / part_name(job_id, epoch)

    def checkpoint_path(self, job_id: str, epoch: int = 0) -> Path:
        """The checkpoint that vouches for the first bytes of ``part_path(job_id, epoch)``."""
        return checkpoint_for(self.part_path(job_id, epoch))

    def parts_of(self, job_id: str) -> list[tuple[int, Path]]:
        """Every staged part of ``job_id`` as (epoch, path), newest epoch first.

        A v3 job id may itself end in ``.<digits>``: then another job's
        ``<job_id>.<n>.part`` is listed here too.  Harmless: its bytes are used
        only where its checkpoint vouches for the same URL, length and
        validator, that is for the same bytes.
        """
        _check_job_id(job_id)
        found: list[tuple[int, Path]] = []
        try:
            entries = list(os.scandir(self.staging_dir))
        except FileNotFoundError:
            return found
        for entry in entries:
            if entry.name.startswith(job_id):
                epoch = epoch_in(entry.name, job_id)
                if epoch is not None:
                    found.append((epoch, self.staging_dir / entry.name))
        return sorted(found, key=lambda item: item[0], reverse=True)

    def earlier_parts(self, job_id: str, epoch: int) -> list[Path]:
        """The parts earlier holders of ``job_id`` (epochs below ``epoch``) left, newest first.

        Epoch 0 (the ledger off) has none: the staging folder is not listed.
        """
        if epoch <= 0:
            _check_job_id(job_id)
            return []
        return [path for number, path in self.parts_of(job_id) if number < epoch]

    def discard_part(self, job_id: str, epoch: int = 0) -> None:
        """Delete the job's parts of epochs up to ``epoch``, and their checkpoints.

        Called when they can never be part of a correct download (the job
        failed for good, or is stored).  A holder still writing one of them
        (paused past its lease) writes on into an unlinked file: nobody reads it.
        """
        for number, part in self.parts_of(job_id):
            if number <= epoch:
                remove_file(part)
                remove_file(checkpoint_for(part))

    def discard_earlier(self, job_id: str, epoch: int) -> None:
        """Delete the parts (and checkpoints) of epochs below ``epoch``: the job is stored."""
        if epoch > 0:
            self.discard_part(job_id, epoch - 1)

    def relpath_for(self, sha256: str) -> str:
        """The artifact's path relative to ``out_dir`` (POSIX): artifacts/<sha[:2]>/<sha>."""
        if not _SHA256.fullmatch(sha256):
            raise ValueError(
                f"{sha256!r} is not a SHA-256 digest (64 lowercase hex digits); refusing "
                "to build an artifact path from it"
            )
        return f"artifacts/{sha256[:2]}/{sha256}"

    def resolve(self, final_path: str) -> Path:
        """The file a recorded ``final_path`` names (relative to ``out_dir`` unless absolute)."""
        path = Path(final_path)
        return path if path.is_absolute() else self.out_dir / path

    def finalize(self, part: Path, *, sha256: str, size: int) -> str:
        """Move a finished part to its content-addressed place; returns the relpath.

        ``part`` is the caller's own epoch's file: it is moved under its lock,
        so no successor can take it over meanwhile (a part locked by another
        is lost: :class:`PartLost`).  Safe to replay: once the rename has
        happened (and the caller crashed before recording it) the part is gone
        and the artifact is there, which is success once the artifact's hash
        is checked.  A regular file already at the address is hashed: the same
        bytes are kept (the part is a duplicate and is removed), other bytes
        are replaced by the part.  A link or device there is replaced, never
        followed.  The part's hash is the one STREAM computed while writing
        it; only its size is checked here, which catches a part that changed since.
        """
        relpath = self.relpath_for(sha256)
        final = self.out_dir / relpath
        try:
            info = part.lstat()
        except FileNotFoundError:
            return self._replayed(part, final, relpath, sha256=sha256, size=size)
        wrong = _unfit(info, size)
        fd = None if wrong is not None else open_staged(part, os.O_RDWR)
        if fd is None:
            if wrong is None and _part_gone(part):  # moved by a successor a moment ago
                return self._replayed(part, final, relpath, sha256=sha256, size=size)
            remove_file(part)
            remove_file(checkpoint_for(part))
            raise TransientFetchError(
                f"staged file {part} {wrong or 'changed while it was stored'}; it was deleted "
                "rather than stored, and the artifact is fetched again"
            )
        try:
            self._store_held(fd, part, final, sha256=sha256, size=size)
        finally:
            os.close(fd)
        remove_file(checkpoint_for(part))
        _fsync_dir(part.parent)
        return relpath

    def _store_held(self, fd: int, part: Path, final: Path, *, sha256: str, size: int) -> None:
        """Lock the part open on ``fd`` and move it to ``final`` (or drop it as a duplicate)."""
        if not try_lock(fd, part):
            raise PartLost(part, "is locked by a newer holder of the job, taking it over")
        held = os.fstat(fd)
        if not names_identity(part, (held.st_dev, held.st_ino)) or held.st_size != size:
            raise TransientFetchError(
                f"staged file {part} changed while it was stored (moved or resized); the "
                "artifact is fetched again"
            )
        os.fsync(fd)
        self._artifact_folder(final.parent)
        there = _lstat(final)
        if there is not None and stat.S_ISDIR(there.st_mode):
            raise TransientFetchError(
                f"{final} is a folder where the artifact {sha256} belongs; docstokg "
                f"never creates one there: {MOVE_IT_AWAY}"
            )
        if there is not None and _holds(final, sha256, size):
            part.unlink()
            return
        # absent, a link, or a stray with other bytes: ours replaces it
        os.replace(part, final)
        _fsync_dir(final.parent)

    def check_stored(self, final_path: str, size: int) -> str | None:
        """Why the stored file at ``final_path`` is not a regular file of ``size`` bytes, or None.

        An ``lstat`` per path component, no hashing: cheap enough for a run to
        re-check every file its manifest already stored.  A path that leaves
        ``out_dir`` (``..``, an absolute path elsewhere) or crosses a link is
        never looked at; its reason says so.
        """
        located = self._stored_file(final_path)
        if isinstance(located, str):
            return located
        try:
            info = located.lstat()
        except FileNotFoundError:
            return "missing"
        if stat.S_ISLNK(info.st_mode):
            return "a link, not a regular file"
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        if info.st_size != size:
            return f"size {info.st_size:,} instead of {size:,}"
        return None

    def verify_stored(self, final_path: str, sha256: str, size: int) -> str | None:
        """Like :meth:`check_stored`, and the file's bytes must also hash to ``sha256``."""
        reason = self.check_stored(final_path, size)
        if reason is not None:
            return reason
        located = self._stored_file(final_path)
        assert not isinstance(located, str)  # check_stored accepted it
        hasher = hash_prefix(located, size)
        if hasher is None:
            return "changed while being hashed"
        actual = hasher.hexdigest()
        if actual != sha256:
            return f"sha256 {actual[:12]} instead of {sha256[:12]}"
        return None

    def _stored_file(self, final_path: str) -> Path | str:
        """The path ``final_path`` names under ``out_dir``, or the reason it is refused."""
        path = PurePosixPath(final_path)
        if path.is_absolute():
            try:
                path = PurePosixPath(os.path.abspath(final_path)).relative_to(
                    os.path.abspath(self.out_dir)
                )
            except ValueError:
                return f"path {final_path!r} is outside {self.out_dir}"
        if not path.parts or ".." in path.parts:
            return f"path {final_path!r} is outside {self.out_dir}"
        folder = self.out_dir
        for name in path.parts[:-1]:
            folder = folder / name
            try:
                info = folder.lstat()
            except FileNotFoundError:
                return "missing"
            if stat.S_ISLNK(info.st_mode):
                return f"{folder} is a link, not a folder"
            if not stat.S_ISDIR(info.st_mode):
                return f"{folder} is not a folder"
        return folder / path.parts[-1]

    def _replayed(self, part: Path, final: Path, relpath: str, *, sha256: str, size: int) -> str:
        """The part is gone: success only if the artifact already holds exactly these bytes."""
        if _holds(final, sha256, size):
            remove_file(checkpoint_for(part))
            return relpath
        raise TransientFetchError(
            f"staged file {part} vanished before it was finalized; the artifact is fetched again"
        )

    def _artifact_folder(self, folder: Path) -> None:
        """Make ``artifacts/<xx>`` a real folder, replacing a link or a file found there."""
        _ensure_real_dir(self.artifacts_dir)
        try:
            info = folder.lstat()
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISDIR(info.st_mode):
                return
            folder.unlink()  # a link (never followed) or a stray file
        folder.mkdir(exist_ok=True)
        # The new folder's own entry must survive a power cut too, or a
        # recorded final_path could name a folder that is gone.
        _fsync_dir(self.artifacts_dir)


def _unfit(info: os.stat_result, size: int) -> str | None:
    """Why a staged file with this ``lstat`` cannot be stored as ``size`` bytes, or None."""
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a link or a device, never followed)"
    if info.st_nlink != 1:
        return f"has {info.st_nlink} hard links (another name shares its bytes)"
    if info.st_size != size:
        return f"holds {info.st_size:,} bytes but the download recorded {size:,}"
    return None


def _part_gone(part: Path) -> bool:
    """Whether nothing is at ``part`` (not even a link)."""
    try:
        part.lstat()
    except FileNotFoundError:
        return True
    return False


def _check_job_id(job_id: str) -> None:
    if not _JOB_ID.fullmatch(job_id) or ".." in job_id:
        raise ValueError(
            f"job_id {job_id!r} is not a safe file name (letters, digits, '.', '-', '_', "
            "not starting with '.', no '..'); refusing to build a staging path from it"
        )


def open_regular(
    path: Path, flags: int, mode: int = 0o644, *, one_link: bool = False
) -> int | None:
    """A descriptor on the regular file at ``path``, never through a link.

    None when something else is there (a link, a folder, a FIFO, a device),
    or, with ``one_link``, a file with another hard link; a missing file
    raises FileNotFoundError unless ``flags`` has ``O_CREAT``.
    """
    try:
        fd = os.open(path, flags | _SAFE_FLAGS, mode)
    except OSError as exc:
        if exc.errno in _NOT_REGULAR_ERRNOS:
            return None
        raise
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode) and (not one_link or info.st_nlink == 1):
        return fd
    os.close(fd)
    return None


def open_existing_regular(path: Path) -> int | None:
    """A read-only descriptor on the regular file at ``path``; None if absent or anything else."""
    try:
        return open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return None


def open_staged(path: Path, flags: int) -> int | None:
    """A descriptor on the staging file at ``path`` if docstokg made it: regular, one link.

    None when it is absent or anything else (a link, a FIFO, a folder, a hard
    link whose other name may be outside ``--out``): nothing there is ours.
    """
    try:
        return open_regular(path, flags, one_link=True)
    except FileNotFoundError:
        return None


def create_staged(path: Path) -> int:
    """A new, empty staging file at ``path``, open read-write; whatever was there is unlinked.

    ``O_EXCL | O_NOFOLLOW``: the descriptor is on a file this call created,
    never on a link, a hard link or a file someone put there meanwhile.
    """
    remove_file(path)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _SAFE_FLAGS, 0o644)
    except FileExistsError:
        raise TransientFetchError(
            f"{path} was created by someone else while docstokg replaced it; nothing was "
            "written (transient: retried later)"
        ) from None


def try_lock(fd: int, path: Path) -> bool:
    """``flock(LOCK_EX | LOCK_NB)`` on ``fd`` (open on ``path``): False if another holds it.

    On an error other than "held" (a filesystem without locks) ``fd`` is
    closed and the attempt fails: writing without the lock is never safe.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        os.close(fd)
        raise TransientFetchError(
            f"cannot lock {path} ({exc.strerror}); docstokg needs a filesystem with "
            "working file locks under --out (a local disk, or NFSv4 with locking): move "
            "--out there (transient: retried later)"
        ) from exc
    return True


def names_file(path: Path, fd: int) -> bool:
    """Whether ``path`` (not followed if a link) is the file open on ``fd``."""
    return names_identity(path, file_identity(fd))


def file_identity(fd: int) -> tuple[int, int]:
    """The (device, inode) of the file open on ``fd``: fixed for as long as it is open."""
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def names_identity(path: Path, identity: tuple[int, int]) -> bool:
    """Whether ``path`` (not followed if a link) is the file of this (device, inode)."""
    try:
        named = os.lstat(path)
    except FileNotFoundError:
        return False
    return (named.st_dev, named.st_ino) == identity


def staged_size(path: Path) -> int | None:
    """The size of the staging file at ``path`` if docstokg made it (see :func:`open_staged`)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) and info.st_nlink == 1 else None


def clear_folder(path: Path) -> None:
    """Remove an empty folder at ``path``; a folder holding files raises (see :func:`remove_file`).

    Run before a download's first request, so a folder that would block the
    part or its checkpoint fails the attempt before any byte is fetched.
    """
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        remove_file(path)


def regular_size(path: Path) -> int | None:
    """The size of the regular file at ``path`` (not followed if a link); None for anything else."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def remove_file(path: Path) -> None:
    """Unlink ``path`` (a file or a link, never what a link points to).

    An empty folder there is removed too (it holds nothing to lose); a folder
    with something in it is not docstokg's to delete, and raises.
    """
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        try:
            path.rmdir()
        except OSError as exc:
            raise TransientFetchError(
                f"{path} is a folder holding files, where docstokg keeps a file of its own; "
                f"it deletes no folder it did not make: {MOVE_IT_AWAY}"
            ) from exc
        return
    path.unlink(missing_ok=True)


def hash_prefix(path: Path, size: int) -> hashlib._Hash | None:
    """SHA-256 state over the first ``size`` bytes of the regular file ``path``.

    None when ``path`` is missing, not a regular file, or shorter than ``size``:
    then no prefix of it can be vouched for.
    """
    fd = open_existing_regular(path)
    if fd is None:
        return None
    try:
        return hash_fd_prefix(fd, size)
    finally:
        os.close(fd)


def hash_fd_prefix(fd: int, size: int) -> hashlib._Hash | None:
    """SHA-256 state over the first ``size`` bytes of the file open on ``fd``; None if shorter."""
    hasher = hashlib.sha256()
    done = 0
    while done < size:
        block = os.pread(fd, min(_HASH_BLOCK, size - done), done)
        if not block:
            return None
        hasher.update(block)
        done += len(block)
    return hasher


def hash_file(path: Path, size: int) -> str:
    """SHA-256 (hex) of the first ``size`` bytes of ``path``; they must all be there."""
    hasher = hash_prefix(path, size)
    if hasher is None:
        raise TransientFetchError(
            f"{path} is not a regular file of at least {size:,} bytes; it changed while "
            "being hashed (transient: retried later)"
        )
    return hasher.hexdigest()


def _holds(final: Path, sha256: str, size: int) -> bool:
    """Whether ``final`` is a regular file (not a link) of ``size`` bytes hashing to ``sha256``."""
    if regular_size(final) != size:
        return False
    hasher = hash_prefix(final, size)
    return hasher is not None and hasher.hexdigest() == sha256


def _lstat(path: Path) -> os.stat_result | None:
    """``lstat`` of ``path``; None if nothing is there."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _ensure_real_dir(folder: Path) -> None:
    """Create ``folder`` if missing; refuse a link or a file standing in its place.

    Looked at first (one ``lstat``, the case of every call but the first), created if absent.
    """
    info = _lstat(folder)
    if info is None:
        try:
            folder.mkdir()
            return
        except FileExistsError:
            info = folder.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise StoreError(
            f"{folder} is a symbolic link (to {os.readlink(folder)!r}); docstokg writes only "
            "into real folders under --out, so that no download lands outside it: replace "
            "the link with a folder, or choose another --out"
        )
    if not stat.S_ISDIR(info.st_mode):
        raise StoreError(
            f"{folder} is not a folder; docstokg keeps its files there: move it away, or "
            "choose another --out"
        )


def _fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (a no-op where directories cannot be opened)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
