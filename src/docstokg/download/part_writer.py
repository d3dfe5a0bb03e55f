"""Writing a response body into a ``.part`` while hashing, counting and checkpointing it.

Kept apart from the HTTP decisions in :mod:`docstokg.download.fetch`: this is
the one place that touches the staged file, so the rules about when a part is
kept (transient failure, interruption: the next attempt resumes it) and when it
is deleted (over the size limit: no attempt can ever succeed) live together.

Beside every part lies its checkpoint (``<part>.json``): the URL asked
and the total length announced (what the bytes are of), the validator they
were written under, and the length and SHA-256 of a prefix that is on disk.
A resume trusts only what a checkpoint vouches for (see
:func:`docstokg.download.fetch.resume_point`), so the checkpoint is written
before the part changes (removed, when the part is written from zero: then
it vouches for nothing), every ``checkpoint_bytes`` while it grows, whenever
the write stops (any exception), and when the body ends.  The part is written
unbuffered, so a checkpoint never names bytes that are still in this process.

A writer holds its part open and exclusively locked for the whole attempt
(:mod:`docstokg.download.handover`), and before every chunk checks that the
part's name still leads to its file and that it may go on; a writer that lost
its part writes neither bytes nor checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from docstokg.download.handover import HeldPart, create_held, hold
from docstokg.download.http_errors import HTTPX_ERRORS, translate_httpx_error
from docstokg.download.limits import DownloadLimits
from docstokg.download.store import (
    MOVE_IT_AWAY,
    hash_fd_prefix,
    hash_file,
    open_staged,
    remove_file,
)
from docstokg.errors import (
    DownloadInterrupted,
    PartLost,
    PermanentFetchError,
    TransientFetchError,
)
from docstokg.staging import checkpoint_for

__all__ = ["CHECKPOINT_VERSION", "Checkpoint", "PartWriter", "hash_file"]

#: The checkpoint format; a checkpoint of any other version vouches for nothing.
CHECKPOINT_VERSION = 2
_CHECKPOINT_MAX_BYTES = 16 * 1024  # a validator is a header value: far less than this
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NEW_FILE_FLAGS = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What vouches for the first ``length`` bytes of a part.

    ``validator`` is the ``If-Range`` value those bytes were written under
    (None: the server gave none, so they can never be resumed), ``sha256``
    the hash of exactly those bytes.  ``url`` (the URL asked) and ``total``
    (the length HEAD announced, None if it gave none) say what they are a
    prefix of: two resources may share a validator (one Last-Modified, or
    nginx's mtime-size ETags), so a part moved to another job's name must
    not pass for that job's bytes.
    """

    validator: str | None
    length: int
    sha256: str
    url: str
    total: int | None

    def vouches_for(self, url: str, total: int | None, validator: str | None) -> bool:
        """Whether these bytes were written for this URL, total length and (non-None) validator."""
        same_source = (self.url, self.total) == (url, total)
        return same_source and self.validator is not None and self.validator == validator

    def to_json(self) -> dict[str, object]:
        return {
            "version": CHECKPOINT_VERSION,
            "url": self.url,
            "total": self.total,
            "validator": self.validator,
            "length": self.length,
            "sha256": self.sha256,
        }

    @classmethod
    def read(cls, path: Path) -> Checkpoint | None:
        """The checkpoint at ``path``; None if absent, not one docstokg made, unreadable or invalid.

        Anything wrong with it (even JSON nested deep enough to exhaust the
        parser) means only that no bytes are vouched for: the download restarts.
        """
        try:
            raw = _read_staged(path)
        except OSError as exc:
            log.warning("cannot read the checkpoint %s (%s); downloading from zero", path, exc)
            return None
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            return None
        return cls._from_json(data)

    @classmethod
    def _from_json(cls, data: object) -> Checkpoint | None:
        if not isinstance(data, dict) or data.get("version") != CHECKPOINT_VERSION:
            return None
        validator, sha256 = data.get("validator"), data.get("sha256")
        length = _as_size(data.get("length"))
        if validator is not None and not isinstance(validator, str):
            return None
        if length is None or not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            return None
        url, total = data.get("url"), _as_size(data.get("total"))
        if not isinstance(url, str) or (total is None and data.get("total") is not None):
            return None
        return cls(validator, length, sha256, url=url, total=total)

    def write(self, path: Path) -> None:
        """Replace the checkpoint at ``path`` atomically (a new file renamed over it).

        The temporary file is created with ``O_EXCL | O_NOFOLLOW`` under a name
        no other writer uses (:func:`_temporary_name`), and the rename replaces
        whatever is at ``path`` (a link included) without following it.  A
        folder there cannot be replaced: that is an error.  Written with one
        ``os.write`` of ``json.dumps`` (the C encoder), not a text stream: a
        checkpoint is written every MiB of every download.
        """
        data = json.dumps(self.to_json()).encode()
        temporary = _create_temporary(path)
        try:
            _write_all_and_close(temporary, data)
            os.replace(temporary.path, path)
        except IsADirectoryError:
            _unlink_quietly(temporary.path)
            raise TransientFetchError(
                f"{path} is a folder where docstokg keeps a download's checkpoint; it never "
                f"creates one there: {MOVE_IT_AWAY}"
            ) from None
        except BaseException:  # any failure, Ctrl-C included: re-raised as it was
            _unlink_quietly(temporary.path)  # the temporary file is not left behind
            raise


class PartWriter:
    """Streams responses into ``part``: hashing, counting, checkpointing, honouring stop requests.

    One writer serves one attempt (one :func:`stream_to_part` call), whose
    deadlines it enforces over all the replies it writes.
    """

    def __init__(
        self,
        part: Path,
        limits: DownloadLimits,
        url: str,
        *,
        total: int | None,
        should_stop: Callable[[], bool],
        on_bytes: Callable[[int], None] | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.part = part
        self.checkpoint = checkpoint_for(part)
        self.limits = limits
        self.url = url
        self.total = total
        self.should_stop = should_stop
        self.on_bytes = on_bytes
        self._pace = _Pace(limits, url, part, clock)
        # The hash of the part as the last write (or the resume check) left
        # it: a write that continues it takes this up instead of reading it again.
        self._carried: tuple[int, hashlib._Hash] | None = None
        self._held: HeldPart | None = None  # the part, open and locked, until close()

    @property
    def held(self) -> HeldPart | None:
        """The part this writer holds open and locked, if it has opened it yet."""
        return self._held

    def hold_own(self) -> HeldPart | None:
        """Open and lock the part already at this writer's name; None if there is none.

        :class:`PartLost` if another writer holds it locked.
        """
        self._take(hold(self.part))
        return self._held

    def hold_new(self) -> HeldPart:
        """The part held, created empty if this writer holds none yet."""
        if self._held is None:
            self._take(create_held(self.part))
        assert self._held is not None
        return self._held

    def adopt(self, held: HeldPart) -> None:
        """Write into ``held`` from now on: an earlier holder's part, renamed to this one's name."""
        self._take(held)

    def close(self) -> None:
        """Close the part (releasing its lock); the writer may open it again later."""
        self._take(None)

    def carry(self, length: int, hasher: hashlib._Hash) -> None:
        """Take up ``hasher``, the hash of the part's first ``length`` bytes, already verified."""
        self._carried = (length, hasher)

    def prefix_sha256(self, length: int) -> str:
        """SHA-256 (hex) of the part's first ``length`` bytes, from the carried hash if it fits."""
        if self._carried is not None and self._carried[0] == length:
            return self._carried[1].hexdigest()
        if self._held is not None:
            hasher = hash_fd_prefix(self._held.fd, length)
            if hasher is not None:
                return hasher.hexdigest()
        return hash_file(self.part, length)

    def write(
        self,
        response: httpx.Response,
        *,
        offset: int,
        validator: str | None,
        expected: int | None,
        at_least: int | None = None,
    ) -> tuple[str, int]:
        """Write the body after the first ``offset`` bytes of the part (0: start over).

        ``validator`` is what the bytes are written under (recorded in the
        checkpoint); ``expected`` the size the part must then have, if the
        server said so; ``at_least`` a size it must reach (when only HEAD said
        it).  A body that ends short of either leaves the part in place for a
        resume.  Returns the SHA-256 (hex) and size of the whole part.
        """
        if expected is not None and expected > self.limits.max_bytes:
            self.discard()
            raise self._too_large(f"is {expected:,} bytes, more")
        hasher = self._prefix_hasher(offset)
        # Recorded before the part changes: bytes past ``offset`` are not vouched for.
        # From zero nothing is: no checkpoint at all says so, one unlink instead of a write.
        if offset:
            self._checkpoint(validator, offset, hasher)
        else:
            self._unvouch()
        fd = self._open_at(offset)
        size = self._pump(response, fd, hasher, offset=offset, validator=validator, of=expected)
        if size is None:
            self.discard()
            raise self._too_large("sent more bytes")
        self._check_complete(size, expected, at_least)
        self._carried = (size, hasher.copy())
        return hasher.hexdigest(), size

    def discard(self) -> None:
        """Delete the part and its checkpoint: its bytes cannot be part of a correct download."""
        self.close()
        remove_file(self.part)
        remove_file(self.checkpoint)

    def _take(self, held: HeldPart | None) -> None:
        """Hold ``held`` instead of the part held so far (closed, so its lock goes)."""
        if self._held is not None and self._held is not held:
            self._held.close()
        self._held = held

    def _pump(
        self,
        response: httpx.Response,
        fd: int,
        hasher: hashlib._Hash,
        *,
        offset: int,
        validator: str | None,
        of: int | None,
    ) -> int | None:
        """Copy the body into ``fd``; the part's new size, or None if it went over max_bytes.

        Whatever stops the copy (a wire error, a stop request, a deadline, a
        lost lease raised from a callback) first records a checkpoint of the
        bytes written so far, so the next attempt resumes from there.
        """
        size = checkpointed = offset
        ended = False  # the body was copied whole, or went over max_bytes (the part goes)
        try:
            try:
                for chunk in _chunks(response, self.limits.chunk_bytes):
                    if size + len(chunk) > self.limits.max_bytes:
                        ended = True
                        return None
                    if of is not None and size + len(chunk) > of:
                        # Past the end the reply announced: no byte of it is the file's,
                        # and the part stays a prefix the checkpoint can vouch for.
                        raise TransientFetchError(
                            f"server sent more than the {of:,} bytes it announced for "
                            f"{self.url}; {self.part} keeps the {size:,} before them and the "
                            "next attempt resumes it (transient: retried later)"
                        )
                    self._may_write(size)
                    _write_all(fd, chunk)
                    hasher.update(chunk)
                    size += len(chunk)
                    if self.on_bytes is not None:
                        self.on_bytes(len(chunk))
                    if size - checkpointed >= self.limits.checkpoint_bytes:
                        self._checkpoint(validator, size, hasher)
                        checkpointed = size
                    if self.should_stop():
                        raise DownloadInterrupted(
                            f"stopped while downloading {self.url} after {size:,} bytes; "
                            f"{self.part} is kept and the next attempt resumes it"
                        )
                    self._pace.check(len(chunk), size)
                ended = True
            except HTTPX_ERRORS as exc:
                raise translate_httpx_error(
                    exc, self.url, detail=f" after {size:,} of {_of(of)} bytes"
                ) from exc
        finally:
            if not ended:  # cut short by whatever is propagating: keep what is on disk
                self._save_after_stop(validator, size, hasher)
        self._checkpoint(validator, size, hasher)
        return size

    def _may_write(self, size: int) -> None:
        """Before each chunk: the part is still this writer's, and nobody asked it to stop.

        After the write comes the same stop check again: a stop is then seen
        before the next read, which may wait a while.
        """
        if self._held is not None:
            self._held.check()
        if self.should_stop():
            raise DownloadInterrupted(
                f"stopped while downloading {self.url} after {size:,} bytes; "
                f"{self.part} is kept and the next attempt resumes it"
            )

    def _checkpoint(self, validator: str | None, size: int, hasher: hashlib._Hash) -> None:
        """Record that the part's first ``size`` bytes hash to ``hasher`` (for this URL, total).

        Not for a part this writer no longer holds (:class:`PartLost`): its
        checkpoint's name is no longer one anybody resumes from.
        """
        if self._held is not None:
            self._held.check()
        saved = Checkpoint(validator, size, hasher.hexdigest(), url=self.url, total=self.total)
        saved.write(self.checkpoint)

    def _unvouch(self) -> None:
        """Remove the checkpoint before the part is written from zero: it vouches for nothing then.

        A checkpoint of length 0 would say the same; none costs one syscall
        instead of five.  Not for a part this writer no longer holds
        (:class:`PartLost`), as for :meth:`_checkpoint`.
        """
        if self._held is not None:
            self._held.check()
        remove_file(self.checkpoint)

    def _save_after_stop(self, validator: str | None, size: int, hasher: hashlib._Hash) -> None:
        """Checkpoint the bytes written before a failure, without hiding that failure."""
        try:
            self._checkpoint(validator, size, hasher)
        except PartLost:
            log.info("not checkpointing %s: this worker lost it", self.part)
        except (OSError, TransientFetchError) as exc:
            # The previous checkpoint still vouches for a shorter prefix: the
            # next attempt re-fetches a little more, nothing worse.
            log.warning("could not checkpoint %s after %d bytes: %s", self.part, size, exc)

    def _prefix_hasher(self, offset: int) -> hashlib._Hash:
        carried, self._carried = self._carried, None
        if carried is not None and carried[0] == offset:
            return carried[1]
        if not offset:
            return hashlib.sha256()
        hasher = None if self._held is None else hash_fd_prefix(self._held.fd, offset)
        if hasher is None:
            raise TransientFetchError(
                f"{self.part} is shorter than the {offset:,} bytes expected; it changed while "
                "being hashed (transient: retried later)"
            )
        return hasher

    def _open_at(self, offset: int) -> int:
        """The held part, positioned at ``offset`` and cut back to it; never through a link.

        From zero with no part held yet, whatever is at the part's path (a
        link, a FIFO, a hard link to a file outside ``--out``, an earlier part)
        is unlinked and a new file created and locked.  A resume continues only
        the part the resume check held (see :func:`docstokg.download.fetch.stream_to_part`).
        """
        if offset == 0:
            held = self.hold_new()
        elif self._held is None:
            raise TransientFetchError(
                f"{self.part} stopped being a file docstokg made (a link, or another hard link "
                "to it) after it was checked; nothing was written (transient: retried later)"
            )
        else:
            held = self._held
        held.check()
        if os.fstat(held.fd).st_size < offset:
            raise TransientFetchError(
                f"{self.part} is shorter than the {offset:,} bytes checked a moment ago; it "
                "changed meanwhile (transient: retried later)"
            )
        os.ftruncate(held.fd, offset)
        os.lseek(held.fd, offset, os.SEEK_SET)
        return held.fd

    def _check_complete(self, size: int, expected: int | None, at_least: int | None) -> None:
        if expected is not None and size != expected:
            raise TransientFetchError(
                f"server sent {size:,} of {expected:,} bytes for {self.url}; {self.part} is "
                "kept and the next attempt resumes it (transient: retried later)"
            )
        if at_least is not None and size < at_least:
            raise TransientFetchError(
                f"server closed after {size:,} bytes for {self.url}, short of the "
                f"{at_least:,} its HEAD announced; {self.part} is kept and the next attempt "
                "resumes it (transient: retried later)"
            )

    def _too_large(self, what: str) -> PermanentFetchError:
        return PermanentFetchError(
            f"{self.url} {what} than the max_bytes limit of {self.limits.max_bytes:,}; the "
            f"partial file was deleted (permanent: not retried; raise max_bytes to fetch it)"
        )


class _Pace:
    """The attempt's deadline and minimum speed (curl's ``--max-time``, ``--speed-limit/-time``).

    A read timeout bounds the wait for each chunk, not the whole body: a
    server that drips a byte just inside it would hold a worker forever.
    Checked after every chunk; the speed is measured over samples taken at
    most every 1/16 of the window, so memory stays bounded at any rate.
    """

    def __init__(
        self, limits: DownloadLimits, url: str, part: Path, clock: Callable[[], float]
    ) -> None:
        self.limits = limits
        self.url = url
        self.part = part
        self.clock = clock
        self.started = clock()
        self.received = 0
        self.samples: deque[tuple[float, int]] = deque([(self.started, 0)])

    def check(self, chunk: int, size: int) -> None:
        self.received += chunk
        now = self.clock()
        deadline = self.limits.attempt_deadline_s
        if deadline > 0 and now - self.started > deadline:
            raise TransientFetchError(
                f"{self.url} was still downloading after {deadline:g} s, the limit for one "
                f"attempt (attempt_deadline_s); {self.part} is kept ({size:,} bytes) and the "
                "next attempt resumes it (transient: retried later)"
            )
        self._check_speed(now, size)

    def _check_speed(self, now: float, size: int) -> None:
        minimum, window = self.limits.min_speed_bytes_s, self.limits.min_speed_window_s
        if minimum <= 0 or window <= 0:
            return
        while len(self.samples) > 1 and self.samples[1][0] <= now - window:
            self.samples.popleft()
        since, base = self.samples[0]
        if now - since >= window and self.received - base < minimum * window:
            rate = (self.received - base) / (now - since)
            raise TransientFetchError(
                f"{self.url} sent {rate:,.0f} bytes/s over the last {now - since:.3g} s, under "
                f"the minimum of {minimum:g} bytes/s over {window:g} s (min_speed_bytes_s, "
                f"min_speed_window_s); {self.part} is kept ({size:,} bytes) and the next "
                "attempt resumes it (transient: retried later)"
            )
        if now - self.samples[-1][0] >= window / 16:
            self.samples.append((now, self.received))


def _read_staged(path: Path) -> bytes | None:
    """The first bytes of a staging file docstokg made; None if there is none, or it is too big."""
    fd = open_staged(path, os.O_RDONLY)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as source:
        raw = source.read(_CHECKPOINT_MAX_BYTES + 1)
    return None if len(raw) > _CHECKPOINT_MAX_BYTES else raw


def _as_size(value: object) -> int | None:
    """``value`` if it is a byte count (an int >= 0, not a bool), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _of(expected: int | None) -> str:
    return "an unknown number of" if expected is None else f"{expected:,}"


#: With the thread and a counter, names the temporary files of this process apart from
#: any other writer's; a collision anyway (a forked child) falls back to random names.
_PROCESS_TAG = secrets.token_hex(6)
_TEMPORARY_SERIAL = itertools.count()
_TEMPORARY_ATTEMPTS = 8


@dataclass(frozen=True, slots=True)
class _Temporary:
    """A new file this writer created (``O_EXCL``), open on ``fd``: its own to delete."""

    path: Path
    fd: int


def _create_temporary(beside: Path) -> _Temporary:
    """A new hidden file beside ``beside``, never through a link, never over another file.

    ``mkstemp``'s guarantees without its cost (a random name per call): the
    first name tried is unique to this process and thread; only a collision
    draws random ones.
    """
    name = f".{beside.name}.{_PROCESS_TAG}.{threading.get_ident()}.{next(_TEMPORARY_SERIAL)}"
    for _ in range(_TEMPORARY_ATTEMPTS):
        path = beside.parent / f"{name}.tmp"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NEW_FILE_FLAGS, 0o600)
        except FileExistsError:
            name = f".{beside.name}.{secrets.token_hex(8)}"
            continue
        return _Temporary(path, fd)
    raise TransientFetchError(
        f"could not create a temporary file beside {beside}: {_TEMPORARY_ATTEMPTS} names were "
        "all taken; something is creating files in the staging folder (transient: retried later)"
    )


def _write_all_and_close(temporary: _Temporary, data: bytes) -> None:
    try:
        _write_all(temporary.fd, data)
    finally:
        os.close(temporary.fd)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _chunks(response: httpx.Response, chunk_bytes: int) -> Iterator[bytes]:
    """The raw body as it arrives, cut to at most ``chunk_bytes`` per piece.

    Not ``iter_raw(chunk_bytes)``: that holds bytes back until a whole chunk
    has arrived, and loses them when the connection drops, so a resume would
    re-fetch bytes that had already been received.
    """
    for piece in response.iter_raw():
        for start in range(0, len(piece), chunk_bytes):
            yield piece[start : start + chunk_bytes]
