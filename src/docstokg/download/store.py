"""The on-disk layout of a run: staged ``.part`` files and content-addressed artifacts.

``DIR/.staging/<job_id>.part`` holds a download in progress; the finished file
moves to ``DIR/artifacts/<sha[:2]>/<sha256>``.  Every path is built from a job
id or a SHA-256 that is checked to be hex, never from manifest strings, so no
URL or artifact id can make a path escape ``DIR``.  Staging and artifacts live
on the same filesystem, so the move is one atomic ``os.replace``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from docstokg.errors import TransientFetchError

# New job ids are hex UUIDs; ids adopted from a v3 ledger may be any short
# name.  Letters, digits, dot, dash, underscore, not starting with a dot: no
# separator, no "..", so no staging path can leave the staging folder.
_JOB_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ArtifactStore:
    """DIR/.staging for parts, DIR/artifacts for content-addressed files."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.staging_dir = self.out_dir / ".staging"
        self.artifacts_dir = self.out_dir / "artifacts"

    def prepare(self) -> None:
        """Create the staging and artifacts directories (idempotent)."""
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)

    def part_path(self, job_id: str) -> Path:
        """Where job ``job_id`` stages its download; refuses ids that could name another path."""
        if not _JOB_ID.fullmatch(job_id) or ".." in job_id:
            raise ValueError(
                f"job_id {job_id!r} is not a safe file name (letters, digits, '.', '-', '_', "
                "not starting with '.', no '..'); refusing to build a staging path from it"
            )
        return self.staging_dir / f"{job_id}.part"

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

        Safe to replay: once the rename has happened (and the caller crashed
        before recording it) the part is gone and the artifact is there, which
        is success.  An artifact that already exists has the same name, so the
        same hash: the part is a duplicate and is simply removed.  The hash is
        the one STREAM computed while writing the part; only its size is
        checked here, which catches a part that changed since.
        """
        relpath = self.relpath_for(sha256)
        final = self.out_dir / relpath
        try:
            part_size = part.stat().st_size
        except FileNotFoundError:
            if _size_of(final) == size:
                return relpath
            raise TransientFetchError(
                f"staged file {part} vanished before it was finalized; the artifact is "
                "fetched again"
            ) from None
        if part_size != size:
            part.unlink(missing_ok=True)
            raise TransientFetchError(
                f"staged file {part} holds {part_size:,} bytes but the download recorded "
                f"{size:,}; it was deleted rather than stored, and the artifact is fetched again"
            )
        _fsync_file(part)
        if not final.parent.is_dir():
            final.parent.mkdir(parents=True, exist_ok=True)
            # The new folder's own entry must survive a power cut too, or a
            # recorded final_path could name a folder that is gone.
            _fsync_dir(self.artifacts_dir)
        if _size_of(final) == size:
            part.unlink()
        else:  # absent (or a stray of the wrong size, which ours replaces)
            os.replace(part, final)
            _fsync_dir(final.parent)
        _fsync_dir(part.parent)
        return relpath


def _size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (a no-op where directories cannot be opened)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
