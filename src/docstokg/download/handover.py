"""Who may write a job's staged bytes, and how a new holder takes up an earlier one's.

The ledger fences every database write with the writer's lease epoch, but a
file checks no token: a worker paused (SIGSTOP, a frozen VM) past its lease
wakes up with its part still open and writes the chunk it had already read.
Had its successor resumed that same file and stored it, the stored artifact
would grow past its SHA-256 name.  A check of the lease before each write
cannot prevent it alone (the pause can fall between check and write), so no
two holders ever write one file:

* **One file per lease epoch.**  The holder with epoch N writes only
  ``<job_id>.<N>.part`` (epoch 0, the ledger off: ``<job_id>.part``); see
  :meth:`docstokg.download.store.ArtifactStore.part_path`.
* **A writer holds ``flock(LOCK_EX | LOCK_NB)`` on its part from open to
  close.**  The lock belongs to the open file description and dies with the
  process (SIGKILL included), so a part that cannot be locked has a writer
  alive.  After taking a lock, the part's name must still lead to the locked
  file; if not, a successor moved it away and the writer stops
  (:class:`PartLost`), as it does when its own part is locked by another.
* **A successor takes over an earlier epoch's part** only as far as its
  checkpoint vouches and a re-hash agrees.  If it can lock that file, its
  writer is gone (or closed it): it renames the file to its own epoch's name
  (one atomic move, so a woken predecessor's own move into the store and this
  one cannot both succeed), checks that the new name leads to the locked file,
  and keeps the lock.  If it cannot, the writer is alive, paused or slow: it
  copies the verified prefix into a new file of its own and leaves the old one
  to its owner, whose writes land in a file nobody reads.
* **A writer checks, before every chunk**, that its name still leads to its
  file and that it may go on (run stopping, lease lost).  A pause between that
  check and the write only delays a write into the writer's own file.
* **Finalizing** moves only the caller's own epoch file into the store, under
  its lock; then the older epochs' parts are unlinked (a paused writer of one
  writes on into an unlinked file).

``flock`` must work across every machine writing into ``--out``.  On Linux,
NFSv4 emulates ``flock`` with POSIX byte-range locks that the server
arbitrates (so parts are opened read-write: such a lock needs a writable
descriptor); NFSv3 without lockd, ``local_lock=all`` mounts and some FUSE
filesystems lock per machine only: do not share ``--out`` across machines there.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from docstokg.download.store import (
    create_staged,
    file_identity,
    hash_fd_prefix,
    names_file,
    names_identity,
    open_staged,
    remove_file,
    staged_size,
    try_lock,
)
from docstokg.errors import PartLost
from docstokg.staging import checkpoint_for

__all__ = [
    "Busy",
    "HeldPart",
    "PartLost",
    "copy_prefix",
    "create_held",
    "hold",
    "take_over",
    "take_over_finished",
]

_COPY_BLOCK = 1024 * 1024


@dataclass(slots=True)
class HeldPart:
    """A part this process holds: open read-write, exclusively locked, reached by ``path``.

    ``identity`` is the held file's (device, inode): an open file keeps its
    own for life, so it is read once and :meth:`check`, run before every
    chunk, costs one ``lstat`` of the name.
    """

    path: Path
    fd: int
    identity: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.identity = file_identity(self.fd)

    def check(self) -> None:
        """Raise :class:`PartLost` unless ``path`` still leads to the file this holds."""
        if not names_identity(self.path, self.identity):
            raise PartLost(self.path, "was moved away or removed while this worker held it")

    def close(self) -> None:
        """Close the file, which releases its lock."""
        os.close(self.fd)


@dataclass(frozen=True, slots=True)
class Busy:
    """An earlier holder's part whose writer is alive; ``fd`` is open on it, for copying."""

    fd: int


def hold(path: Path) -> HeldPart | None:
    """Lock the existing part at ``path`` (this holder's own name); None if there is none.

    A part locked by someone else, or moved between open and lock, is lost:
    :class:`PartLost`.
    """
    fd = open_staged(path, os.O_RDWR)
    if fd is None:
        return None
    return _held(fd, path)


def create_held(path: Path) -> HeldPart:
    """A new, empty part at ``path`` (whatever was there is unlinked), locked."""
    return _held(create_staged(path), path)


def take_over(source: Path, target: Path) -> HeldPart | Busy | None:
    """Take an earlier holder's part at ``source`` for the holder whose part is ``target``.

    Its lock taken: renamed to ``target`` and held (:class:`HeldPart`).  Its
    lock refused: :class:`Busy`, to copy from.  None when nothing can be
    taken: ``source`` is gone (moved into the store, or by another successor),
    or what ``target`` names after the rename is not the locked file (then
    ``target`` is unlinked: it may be a file someone else still writes).
    """
    fd = open_staged(source, os.O_RDWR)
    if fd is None:
        return None
    if not try_lock(fd, source):
        return Busy(fd)
    try:
        os.rename(source, target)
    except FileNotFoundError:
        os.close(fd)
        return None
    if not names_file(target, fd):
        os.close(fd)
        remove_file(target)
        return None
    return HeldPart(target, fd)


def copy_prefix(source_fd: int, target: HeldPart, length: int) -> hashlib._Hash | None:
    """Copy the first ``length`` bytes of ``source_fd`` into ``target`` (cut back to them).

    Returns their hash, None when the source is shorter (its writer cut it
    back meanwhile); the caller compares the hash with the checkpoint.
    """
    hasher = hashlib.sha256()
    os.ftruncate(target.fd, 0)
    copied = 0
    while copied < length:
        block = os.pread(source_fd, min(_COPY_BLOCK, length - copied), copied)
        if not block:
            return None
        os.pwrite(target.fd, block, copied)
        hasher.update(block)
        copied += len(block)
    return hasher


def _held(fd: int, path: Path) -> HeldPart:
    if not try_lock(fd, path):
        os.close(fd)
        raise PartLost(path, "is locked by another writer")
    held = HeldPart(path, fd)
    try:
        held.check()
    except PartLost:
        os.close(fd)
        raise
    return held


def take_over_finished(target: Path, earlier: Sequence[Path], *, sha256: str, size: int) -> bool:
    """Bring an earlier holder's finished part (``size`` bytes hashing to ``sha256``) to ``target``.

    For a holder whose STREAM result was recorded by a predecessor (replayed,
    not run): the bytes are in that predecessor's part.  Moved if its lock is
    free, copied if its writer is alive; re-hashed either way, since nothing
    records which epoch wrote them.  False if no earlier part holds them.
    """
    for source in earlier:
        if staged_size(source) != size:
            continue
        taken = take_over(source, target)
        if taken is None:
            continue
        if isinstance(taken, Busy):
            held = create_held(target)
            try:
                hasher = copy_prefix(taken.fd, held, size)
            finally:
                os.close(taken.fd)
        else:
            held, hasher = taken, hash_fd_prefix(taken.fd, size)
            remove_file(checkpoint_for(source))
        held.close()
        if hasher is not None and hasher.hexdigest() == sha256:
            return True
        remove_file(target)  # not the bytes STREAM recorded
    return False
