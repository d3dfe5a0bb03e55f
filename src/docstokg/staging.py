"""The names of staged files: the one definition, read by the store and the reconciler.

A staged part is ``<job_id>.<epoch>.part`` (one per lease epoch, so a paused
holder and its successor never share a file), or ``<job_id>.part`` for epoch
0 (the ledger off, and older versions).  Beside each part, its checkpoint is
the part's name plus ``.json``: it vouches for the part's first bytes (length,
SHA-256, validator) and alone vouches for nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

PART_SUFFIX = ".part"
#: Appended to a part's name to name its checkpoint.
CHECKPOINT_SUFFIX = ".json"
#: ``.<epoch>`` between a job id and ``.part``: a lease epoch, written without leading zeros.
_EPOCH = re.compile(r"\.[1-9][0-9]{0,18}")
_EPOCHED = re.compile(r"(?P<job_id>.+)\.[1-9][0-9]{0,18}")


def part_name(job_id: str, epoch: int) -> str:
    """The file name of job ``job_id``'s part under lease ``epoch`` (0: no lease)."""
    return f"{job_id}{PART_SUFFIX}" if epoch == 0 else f"{job_id}.{epoch}{PART_SUFFIX}"


def checkpoint_for(part: Path) -> Path:
    """The checkpoint beside a part: ``<job_id>[.<epoch>].part.json``."""
    return part.with_name(part.name + CHECKPOINT_SUFFIX)


def part_for(checkpoint: Path) -> Path:
    """The part a checkpoint vouches for (the inverse of :func:`checkpoint_for`)."""
    return checkpoint.with_name(checkpoint.name.removesuffix(CHECKPOINT_SUFFIX))


def epoch_in(name: str, job_id: str) -> int | None:
    """The epoch of ``name`` if it is a part of ``job_id`` (see :func:`part_name`), else None."""
    if name == f"{job_id}{PART_SUFFIX}":
        return 0
    middle = name[len(job_id) : -len(PART_SUFFIX)]
    if not (name.startswith(job_id) and name.endswith(PART_SUFFIX)) or len(middle) < 2:
        return None
    return int(middle[1:]) if _EPOCH.fullmatch(middle) else None


def part_job_ids(name: str) -> tuple[str, ...]:
    """The job ids a staged part named ``name`` (ending in ``.part``) may belong to.

    ``<job_id>.<epoch>.part`` belongs to ``job_id``.  A job id adopted from a
    v3 ledger may itself end in ``.<digits>``, so such a name may also be that
    job's ``<job_id>.part``: both readings are returned, and the part is kept
    while either job is leased.
    """
    stem = name[: -len(PART_SUFFIX)]
    match = _EPOCHED.fullmatch(stem)
    return (match.group("job_id"), stem) if match else (stem,)
