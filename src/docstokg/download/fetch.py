"""Fetching one artifact over HTTP: probe it, then stream it into a ``.part``.

Both steps run again after a crash (effects are at-least-once), so both are
safe to repeat: :func:`probe` only asks, and :func:`stream_to_part` resumes
the ``.part`` an earlier attempt left behind (``Range`` + ``If-Range``) or,
when the server cannot vouch that the bytes are still the same, starts over.
Bodies are read raw (``Accept-Encoding: identity``): ranges, lengths and the
SHA-256 all refer to the bytes exactly as the server stores them.

A part is resumed only as far as its checkpoint vouches for it (see
:mod:`docstokg.download.part_writer`): written for the same URL and announced
length, under the validator the server gives now, still hashing as it did
when the checkpoint was written, and a file docstokg made (one link).  So a
part left by an older version, or edited, truncated, hard-linked or swapped
with another job's between runs, is never continued: the download starts
over.  A resumed download that does not hash as the manifest says is not
final either: it may be the splice, so it restarts from zero.

Each lease epoch writes a part of its own, held under an exclusive lock for
the whole attempt; a new holder takes up an earlier epoch's part by moving it
(its writer is gone) or by copying its verified prefix (its writer is alive,
perhaps paused past its lease): :mod:`docstokg.download.handover` says why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx

from docstokg.download.handover import Busy, copy_prefix, take_over
from docstokg.download.http_errors import (
    HTTPX_ERRORS,
    classify_status,
    is_ascii_digits,
    translate_httpx_error,
)
from docstokg.download.limits import DownloadLimits
from docstokg.download.part_writer import Checkpoint, PartWriter
from docstokg.download.politeness import UNGATED, Gate, StopCheck
from docstokg.download.store import (
    clear_folder,
    hash_fd_prefix,
    remove_file,
    staged_size,
)
from docstokg.errors import (
    ChecksumMismatch,
    DownloadInterrupted,
    PermanentFetchError,
    TransientFetchError,
)
from docstokg.staging import checkpoint_for

__all__ = [
    "DownloadLimits",
    "Probe",
    "Streamed",
    "can_resume",
    "classify_status",
    "make_client",
    "pick_validator",
    "probe",
    "resume_point",
    "resume_point_among",
    "stream_to_part",
]

#: HEAD refusals after which the same facts are learned from a GET instead.
HEAD_REFUSED = frozenset({405, 501})
_T = TypeVar("_T")
_CONTENT_RANGE = re.compile(r"bytes\s+([0-9]+)-([0-9]+)/([0-9]+|\*)", re.IGNORECASE)
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Probe:
    """What HEAD (or the GET fallback) learned; recorded as the HEAD op's result.

    ``url`` is the URL asked, and the one STREAM asks too, following the
    redirects again: HEAD's result is replayed on every later attempt, and a
    redirect target (a signed, short-lived URL, say) may have expired by then.
    ``final_url``, where the redirects led when HEAD ran, is for people to read.
    """

    url: str
    status: int
    length: int | None
    etag: str | None
    last_modified: str | None
    accept_ranges: bool
    content_type: str | None
    method: str
    final_url: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "url": self.url,
            "status": self.status,
            "length": self.length,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "accept_ranges": self.accept_ranges,
            "content_type": self.content_type,
            "method": self.method,
            "final_url": self.final_url,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Probe:
        return cls(
            url=_get(data, "url", str),
            status=_get(data, "status", int),
            length=_get_optional(data, "length", int),
            etag=_get_optional(data, "etag", str),
            last_modified=_get_optional(data, "last_modified", str),
            accept_ranges=_get(data, "accept_ranges", bool),
            content_type=_get_optional(data, "content_type", str),
            method=_get(data, "method", str),
            final_url=_get_optional(data, "final_url", str),  # absent in older records
        )

    @property
    def validator(self) -> str | None:
        """The ``If-Range`` value for what HEAD saw (see :func:`pick_validator`)."""
        return pick_validator(self.etag, self.last_modified)


@dataclass(frozen=True, slots=True)
class Streamed:
    """The finished ``.part``: its hash and size; recorded as the STREAM op's result."""

    sha256: str
    size: int
    resumed_from: int
    content_type: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "sha256": self.sha256,
            "size": self.size,
            "resumed_from": self.resumed_from,
            "content_type": self.content_type,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Streamed:
        return cls(
            sha256=_get(data, "sha256", str),
            size=_get(data, "size", int),
            resumed_from=_get(data, "resumed_from", int),
            content_type=_get_optional(data, "content_type", str),
        )


def make_client(limits: DownloadLimits, *, max_connections: int = 16) -> httpx.Client:
    """One client for the whole run: redirects, timeouts and a pool sized for the workers."""
    return httpx.Client(
        follow_redirects=True,
        max_redirects=limits.max_redirects,
        timeout=httpx.Timeout(
            connect=limits.connect_timeout_s,
            read=limits.read_timeout_s,
            write=limits.read_timeout_s,
            pool=limits.connect_timeout_s,
        ),
        headers={"User-Agent": limits.user_agent, "Accept-Encoding": "identity"},
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
    )


def probe(
    client: httpx.Client,
    url: str,
    limits: DownloadLimits,
    *,
    gate: Gate = UNGATED,
    should_stop: StopCheck | None = None,
) -> Probe:
    """Ask for the artifact's headers; fall back to an unread GET if HEAD is refused.

    Each request waits for its turn at ``gate`` (see
    :mod:`docstokg.download.politeness`); ``should_stop`` ends that wait.
    """
    _check_scheme(url)
    try:
        with gate.request(url, should_stop) as turn:
            response = client.head(url)
            turn.answered(response)
        if response.status_code in HEAD_REFUSED:
            with gate.request(url, should_stop) as turn, client.stream("GET", url) as streamed:
                turn.answered(streamed)  # the body is never read
                return _probe_from(streamed, url, limits, method="GET")
        return _probe_from(response, url, limits, method="HEAD")
    except HTTPX_ERRORS as exc:
        raise translate_httpx_error(exc, url, max_redirects=limits.max_redirects) from exc


def stream_to_part(
    client: httpx.Client,
    probe: Probe,
    part: Path,
    limits: DownloadLimits,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    on_bytes: Callable[[int], None] | None = None,
    expected_sha256: str | None = None,
    earlier: Sequence[Path] = (),
    gate: Gate = UNGATED,
) -> Streamed:
    """Download ``probe.url`` into ``part``, resuming what an earlier attempt left there.

    ``part`` is this holder's own (its lease epoch's, see
    :meth:`~docstokg.download.store.ArtifactStore.part_path`), held locked
    until this returns; ``earlier`` the parts of earlier epochs, newest first.
    When ``part`` holds no vouched bytes, the newest earlier part that does is
    taken over (moved, or its prefix copied: :mod:`docstokg.download.handover`).
    A part another writer holds, or one moved away meanwhile, ends the attempt
    with :class:`~docstokg.download.store.PartLost`.

    The part is kept on a transient failure or an interruption (the next
    attempt resumes it) and deleted when it cannot succeed (over
    ``max_bytes``, or not hashing to ``expected_sha256``).  Resuming needs a
    checkpoint that vouches for the part's first bytes (:func:`resume_point`,
    re-hashed here), range support and the same validator, so the server can
    refuse (with a full 200) if the content changed meanwhile.  A range reply
    that ends short of the file (a proxy capping ranges) is followed, in the
    same attempt, by a request for the rest.  A folder holding files at the
    part's or the checkpoint's path fails the attempt before any request.
    Every request waits for its turn at ``gate`` (host politeness), for as
    long as the host needs or until ``should_stop``.
    """
    if should_stop():
        raise DownloadInterrupted(f"stopped before downloading {probe.url}; nothing was fetched")
    part.parent.mkdir(parents=True, exist_ok=True)
    clear_folder(part)
    clear_folder(checkpoint_for(part))
    writer = PartWriter(
        part, limits, probe.url, total=probe.length, should_stop=should_stop, on_bytes=on_bytes
    )
    try:
        streamed = _download(client, probe, writer, earlier, gate=gate, should_stop=should_stop)
        if expected_sha256 is not None:
            _check_sha256(streamed, expected_sha256.strip().lower(), probe.url, writer)
    except HTTPX_ERRORS as exc:
        raise translate_httpx_error(exc, probe.url, max_redirects=limits.max_redirects) from exc
    finally:
        writer.close()
    return streamed


def _check_sha256(streamed: Streamed, expected: str, url: str, writer: PartWriter) -> None:
    """Discard a part that does not hash to ``expected``; only a whole fresh download is final.

    A resumed part could still be wrong in its kept prefix (a checkpoint can
    only vouch for what was written, not for what was meant), so its mismatch
    is transient: the next attempt downloads everything and decides.
    """
    if streamed.sha256 == expected:
        return
    writer.discard()
    if streamed.resumed_from == 0:
        raise ChecksumMismatch(url, expected, streamed.sha256)
    raise TransientFetchError(
        f"{url}: the resumed download (its first {streamed.resumed_from:,} bytes kept from "
        f"an earlier attempt) hashed to {streamed.sha256}, not the expected sha256 "
        f"{expected}; the resumed download did not match, so the part was deleted and the "
        "next attempt restarts from zero (transient: retried later)"
    )


def resume_point(part: Path, checkpoint: Path, probe: Probe) -> int:
    """How many bytes of ``part`` a resume would keep (0: start over), without hashing them.

    Only what ``checkpoint`` vouches for: it must be valid, name the URL,
    total length and validator ``probe`` has now, the part must be a file
    docstokg made (regular, one link) and hold at least its length (bytes
    past it were never vouched for and are cut off); then
    :func:`can_resume` decides.  :func:`stream_to_part` also re-hashes those
    bytes before it trusts them; a pipeline uses this to tell whether a
    resume is planned.
    """
    saved = _vouching(part, checkpoint, probe)
    return 0 if saved is None else saved.length


def resume_point_among(parts: Sequence[Path], probe: Probe) -> int:
    """:func:`resume_point` of the first of ``parts`` whose checkpoint vouches for it (else 0).

    ``parts`` as :func:`stream_to_part` looks at them: the holder's own, then
    earlier epochs' newest first.
    """
    for part in parts:
        have = resume_point(part, checkpoint_for(part), probe)
        if have:
            return have
    return 0


def can_resume(probe: Probe, have: int) -> bool:
    """Whether :func:`stream_to_part` asks to continue a part of ``have`` bytes (Range + If-Range).

    It needs bytes to continue, range support, a validator the server can
    check them against, and a part no longer than the file HEAD announced.
    """
    fits = probe.length is None or have <= probe.length
    return have > 0 and probe.accept_ranges and probe.validator is not None and fits


def pick_validator(etag: str | None, last_modified: str | None) -> str | None:
    """The ``If-Range`` value for these headers: a strong ETag, else Last-Modified, else None.

    A weak ETag (``W/...``) may not be used in If-Range (RFC 9110 13.1.5): it
    does not promise byte-identical content.  A value that is not ASCII (an
    ETag may legally carry such bytes) cannot be sent back as a header, so it
    is passed over: without a validator the download starts over instead of
    resuming, which is always safe.
    """
    strong_etag = etag if etag and not etag.startswith("W/") else None
    for candidate in (strong_etag, last_modified):
        if candidate and candidate.isascii():
            return candidate
    return None


def _vouching(part: Path, checkpoint: Path, probe: Probe) -> Checkpoint | None:
    """The checkpoint, if a resume may rely on it for this probe (see :func:`resume_point`)."""
    saved = Checkpoint.read(checkpoint)
    if saved is None or not saved.vouches_for(probe.url, probe.length, probe.validator):
        return None
    size = staged_size(part)
    if size is None or size < saved.length or not can_resume(probe, saved.length):
        return None
    return saved


def _take_up(
    writer: PartWriter, probe: Probe, earlier: Sequence[Path]
) -> tuple[int, hashlib._Hash | None]:
    """The resume point and the hash of the bytes before it, re-read from disk and checked.

    The writer's own part if its checkpoint vouches for it; else the newest
    earlier epoch's part that is vouched for, taken over.  Bytes that no
    longer hash as their checkpoint says are not resumed: 0, start over.
    """
    own = writer.hold_own()
    saved = _vouching(writer.part, writer.checkpoint, probe)
    if own is not None and saved is not None:
        return _checked(writer.part, own.fd, saved)
    for source in earlier:
        saved = _vouching(source, checkpoint_for(source), probe)
        if saved is not None:
            return _take_over(writer, source, saved)
    return 0, None


def _take_over(
    writer: PartWriter, source: Path, saved: Checkpoint
) -> tuple[int, hashlib._Hash | None]:
    """Continue from an earlier holder's part: moved if its writer is gone, else copied."""
    remove_file(writer.checkpoint)  # the part is about to change: nothing vouches for it now
    taken = take_over(source, writer.part)
    if taken is None:  # gone meanwhile (stored, or taken by another): start over
        return 0, None
    if isinstance(taken, Busy):
        return _copy_from(writer, source, taken, saved)
    writer.adopt(taken)
    saved.write(writer.checkpoint)
    remove_file(checkpoint_for(source))
    log.info("took over %s (its writer is gone) as %s", source, writer.part)
    return _checked(writer.part, taken.fd, saved)


def _copy_from(
    writer: PartWriter, source: Path, busy: Busy, saved: Checkpoint
) -> tuple[int, hashlib._Hash | None]:
    """Copy the vouched prefix of a part whose writer is alive (paused or slow) into ours."""
    try:
        hasher = copy_prefix(busy.fd, writer.hold_new(), saved.length)
    finally:
        os.close(busy.fd)
    if hasher is None or hasher.hexdigest() != saved.sha256:
        _mismatch(source, saved)
        return 0, None
    saved.write(writer.checkpoint)
    log.info("copied %d vouched bytes of %s (its writer is alive)", saved.length, source)
    return saved.length, hasher


def _checked(part: Path, fd: int, saved: Checkpoint) -> tuple[int, hashlib._Hash | None]:
    """``saved.length`` and the hash of that prefix of ``fd``, if it still hashes as vouched."""
    hasher = hash_fd_prefix(fd, saved.length)
    if hasher is None or hasher.hexdigest() != saved.sha256:
        _mismatch(part, saved)
        return 0, None
    return saved.length, hasher


def _mismatch(part: Path, saved: Checkpoint) -> None:
    log.warning(
        "the first %d bytes of %s no longer match its checkpoint; downloading it again",
        saved.length,
        part,
    )


def _download(
    client: httpx.Client,
    probe: Probe,
    writer: PartWriter,
    earlier: Sequence[Path],
    *,
    gate: Gate,
    should_stop: StopCheck,
) -> Streamed:
    have, hasher = _take_up(writer, probe, earlier)
    resumed_from = have
    if hasher is not None:
        writer.carry(have, hasher)
    # A verified prefix was written under probe.validator (see _vouching).
    validator = probe.validator
    while validator is not None and can_resume(probe, have):
        headers = {"Range": f"bytes={have}-", "If-Range": validator}
        with (
            gate.request(probe.url, should_stop) as turn,
            client.stream("GET", probe.url, headers=headers) as response,
        ):
            turn.answered(response)
            resumed = _resume(response, writer, probe, have, validator)
        if resumed is None:
            break  # start over with a plain GET
        streamed, total = resumed
        if total is None or streamed.size >= total:
            if streamed.resumed_from == have:  # continued, perhaps over several replies
                streamed = dataclasses.replace(streamed, resumed_from=resumed_from)
            return streamed
        have = streamed.size  # every reply adds at least one byte: this ends
    with gate.request(probe.url, should_stop) as turn, client.stream("GET", probe.url) as response:
        turn.answered(response)
        if response.status_code == 206:
            raise TransientFetchError(
                f"{probe.url} answered a plain GET with 206 Partial Content; retried later"
            )
        _raise_for_status(response, probe.url)
        return _whole(writer, response, probe)


def _resume(
    response: httpx.Response, writer: PartWriter, probe: Probe, have: int, validator: str
) -> tuple[Streamed, int | None] | None:
    """Continue from a ranged answer; None means "start over with a plain GET".

    Returns the part as it now stands, and the whole file's size when a 206
    announced it (the part may still be short of it: see :func:`stream_to_part`).
    """
    status = response.status_code
    if status == 200:  # If-Range did not match, or ranges ignored: this is the whole body
        return _whole(writer, response, probe), None
    if status == 416:
        total = probe.length if probe.length is not None else _range_total(response)
        if total == have:  # everything is already here, and verified
            return Streamed(writer.prefix_sha256(have), have, have, probe.content_type), None
        writer.discard()
        return None
    _raise_for_status(response, probe.url)
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if status != 206 or match is None or not _continues(match, response, probe, have):
        return None  # an answer we cannot safely append; the plain GET truncates the part
    # This reply must run to the end of the range it announced, and no further.
    reply_end = int(match.group(2)) + 1
    sha256, size = writer.write(response, offset=have, validator=validator, expected=reply_end)
    streamed = Streamed(sha256, size, have, response.headers.get("Content-Type"))
    total = None if match.group(3) == "*" else int(match.group(3))
    return streamed, total


def _continues(match: re.Match[str], response: httpx.Response, probe: Probe, have: int) -> bool:
    """Whether a 206 carries the bytes right after ours, of the same representation.

    ``match`` is its Content-Range.  If-Range already asks the server for
    this; checking the Content-Range start, the ETag and the total as well
    protects against servers that honour Range but ignore If-Range.
    """
    if int(match.group(1)) != have or int(match.group(2)) < have:
        return False
    etag = response.headers.get("ETag")
    if probe.etag is not None and etag is not None and etag != probe.etag:
        return False
    total = match.group(3)
    return probe.length is None or total == "*" or int(total) == probe.length


def _whole(writer: PartWriter, response: httpx.Response, probe: Probe) -> Streamed:
    """A full (200) body into the part, held to its Content-Length.

    Without one (and not chunked, whose end h11 checks) the body ends when the
    connection closes, and a connection that drops early would pass for the
    end of the file: such a body must reach at least the length HEAD gave for
    the same version.  At least, not exactly: a HEAD that understates (some
    answer 0) must not make the file impossible to fetch.  The bytes are
    checkpointed under this response's own validator: the version they are.
    """
    length = _content_length(response)
    at_least = None
    chunked = "chunked" in response.headers.get("Transfer-Encoding", "").lower()
    if length is None and not chunked:
        validator = probe.validator
        same_version = validator is not None and validator in (
            response.headers.get("ETag"),
            response.headers.get("Last-Modified"),
        )
        at_least = probe.length if same_version else None
    written_under = pick_validator(
        response.headers.get("ETag"), response.headers.get("Last-Modified")
    )
    sha256, size = writer.write(
        response, offset=0, validator=written_under, expected=length, at_least=at_least
    )
    return Streamed(sha256, size, 0, response.headers.get("Content-Type"))


def _probe_from(
    response: httpx.Response, url: str, limits: DownloadLimits, *, method: str
) -> Probe:
    _raise_for_status(response, url)
    length = _content_length(response)
    if length is not None and length > limits.max_bytes:
        raise PermanentFetchError(
            f"{url} is {length:,} bytes, over the max_bytes limit of {limits.max_bytes:,} "
            "(permanent: not retried; raise max_bytes to fetch it)"
        )
    ranges = response.headers.get("Accept-Ranges", "")
    return Probe(
        url=url,
        status=response.status_code,
        length=length,
        etag=response.headers.get("ETag"),
        last_modified=response.headers.get("Last-Modified"),
        accept_ranges="bytes" in (token.strip().lower() for token in ranges.split(",")),
        content_type=response.headers.get("Content-Type"),
        method=method,
        final_url=str(response.url),
    )


def _raise_for_status(response: httpx.Response, url: str) -> None:
    error = classify_status(response.status_code, response.headers, str(response.url) or url)
    if error is not None:
        raise error


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value is not None and is_ascii_digits(value.strip()) else None


def _range_total(response: httpx.Response) -> int | None:
    match = re.fullmatch(r"bytes\s+\*/([0-9]+)", response.headers.get("Content-Range", "").strip())
    return int(match.group(1)) if match else None


def _check_scheme(url: str) -> None:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in ("http", "https"):
        raise PermanentFetchError(
            f"bad scheme in {url!r}: only http:// and https:// URLs can be fetched "
            "(permanent: not retried)"
        )


def _get(data: Mapping[str, object], key: str, kind: type[_T]) -> _T:
    value = data.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(
            f"recorded download result has {key}={value!r}, not a {kind.__name__}; the "
            "ledger row was not written by this version of docstokg (re-run the step)"
        )
    return value


def _get_optional(data: Mapping[str, object], key: str, kind: type[_T]) -> _T | None:
    return None if data.get(key) is None else _get(data, key, kind)
