"""Writing a response body into a ``.part`` while hashing and counting it.

Kept apart from the HTTP decisions in :mod:`docstokg.download.fetch`: this is
the one place that touches the staged file, so the rules about when a part is
kept (transient failure, interruption: the next attempt resumes it) and when it
is deleted (over the size limit: no attempt can ever succeed) live together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from docstokg.download.http_errors import HTTPX_ERRORS, translate_httpx_error
from docstokg.errors import DownloadInterrupted, PermanentFetchError, TransientFetchError

if TYPE_CHECKING:
    from docstokg.download.fetch import DownloadLimits

_HASH_BLOCK = 1024 * 1024


def hash_file(path: Path, size: int) -> str:
    """SHA-256 (hex) of the first ``size`` bytes of ``path``; they must all be there."""
    hasher = hashlib.sha256()
    _hash_prefix(path, size, hasher.update)
    return hasher.hexdigest()


class PartWriter:
    """Streams one response into ``part``: hashing, counting, honouring stop requests."""

    def __init__(
        self,
        part: Path,
        limits: DownloadLimits,
        url: str,
        *,
        should_stop: Callable[[], bool],
        on_bytes: Callable[[int], None] | None,
    ) -> None:
        self.part = part
        self.limits = limits
        self.url = url
        self.should_stop = should_stop
        self.on_bytes = on_bytes
        # The hash of the part as the last write left it: a write that continues
        # it takes this up instead of reading the part again.
        self._carried: tuple[int, hashlib._Hash] | None = None

    def write(
        self,
        response: httpx.Response,
        *,
        offset: int,
        expected: int | None,
        at_least: int | None = None,
    ) -> tuple[str, int]:
        """Append the body after the first ``offset`` bytes of the part (0: start over).

        ``expected`` is the size the part must then have, if the server said
        so; ``at_least`` a size it must reach (when only HEAD said it).  A body
        that ends short of either leaves the part in place for a resume.
        Returns the SHA-256 (hex) and size of the whole part.
        """
        if expected is not None and expected > self.limits.max_bytes:
            self.discard()
            raise self._too_large(f"is {expected:,} bytes, more")
        carried, self._carried = self._carried, None
        if offset and carried is not None and carried[0] == offset:
            hasher = carried[1]
        else:
            hasher = hashlib.sha256()
            if offset:
                _hash_prefix(self.part, offset, hasher.update)
        size = offset
        too_large = False
        with self.part.open("ab" if offset else "wb") as out:
            try:
                for chunk in _chunks(response, self.limits.chunk_bytes):
                    if size + len(chunk) > self.limits.max_bytes:
                        too_large = True
                        break
                    out.write(chunk)
                    hasher.update(chunk)
                    size += len(chunk)
                    if self.on_bytes is not None:
                        self.on_bytes(len(chunk))
                    if self.should_stop():
                        out.flush()
                        raise DownloadInterrupted(
                            f"stopped while downloading {self.url} after {size:,} bytes; "
                            f"{self.part} is kept and the next attempt resumes it"
                        )
            except HTTPX_ERRORS as exc:
                out.flush()
                raise translate_httpx_error(
                    exc, self.url, detail=f" after {size:,} of {_of(expected)} bytes"
                ) from exc
            out.flush()
        if too_large:
            self.discard()
            raise self._too_large("sent more bytes")
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
        self._carried = (size, hasher.copy())
        return hasher.hexdigest(), size

    def discard(self) -> None:
        """Delete the part: its bytes cannot be part of a correct download."""
        self.part.unlink(missing_ok=True)

    def _too_large(self, what: str) -> PermanentFetchError:
        return PermanentFetchError(
            f"{self.url} {what} than the max_bytes limit of {self.limits.max_bytes:,}; the "
            f"partial file was deleted (permanent: not retried; raise max_bytes to fetch it)"
        )


def _chunks(response: httpx.Response, chunk_bytes: int) -> Iterator[bytes]:
    """The raw body as it arrives, cut to at most ``chunk_bytes`` per piece.

    Not ``iter_raw(chunk_bytes)``: that holds bytes back until a whole chunk
    has arrived, and loses them when the connection drops, so a resume would
    re-fetch bytes that had already been received.
    """
    for piece in response.iter_raw():
        for start in range(0, len(piece), chunk_bytes):
            yield piece[start : start + chunk_bytes]


def _of(expected: int | None) -> str:
    return "an unknown number of" if expected is None else f"{expected:,}"


def _hash_prefix(path: Path, size: int, update: Callable[[bytes], object]) -> None:
    remaining = size
    with path.open("rb") as source:
        while remaining:
            block = source.read(min(_HASH_BLOCK, remaining))
            if not block:
                raise TransientFetchError(
                    f"{path} is shorter than the {size:,} bytes expected; it changed while "
                    "being hashed (transient: retried later)"
                )
            update(block)
            remaining -= len(block)
