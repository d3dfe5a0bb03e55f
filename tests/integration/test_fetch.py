"""The HTTP download layer against a real loopback server, writing real files.

Every misbehaviour (refused HEAD, short body, changed ETag, redirect loop,
faults with Retry-After, a pause mid-body) is scripted on the server, so each
test checks what actually went over the wire through the server's statistics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from docstokg.download import (
    Checkpoint,
    DownloadLimits,
    Probe,
    Streamed,
    can_resume,
    checkpoint_for,
    classify_status,
    make_client,
    probe,
    stream_to_part,
)
from docstokg.errors import DownloadInterrupted, PermanentFetchError, TransientFetchError
from docstokg.testing.server import Artifact, ArtifactServer, Fault, generated_body, strong_etag
from tests.download_kit import stop_at_pause

BODY = generated_body("test-fetch", 300_000)
SHA = hashlib.sha256(BODY).hexdigest()
LIMITS = DownloadLimits(connect_timeout_s=5.0, read_timeout_s=10.0, chunk_bytes=16 * 1024)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with make_client(LIMITS, max_connections=4) as client:
        yield client


@pytest.fixture
def part(tmp_path: Path) -> Path:
    return tmp_path / "out" / ".staging" / "0123abcd.part"


def fetch(client: httpx.Client, url: str, part: Path, limits: DownloadLimits = LIMITS) -> Streamed:
    return stream_to_part(client, probe(client, url, limits), part, limits)


def staged(part: Path, data: bytes, url: str, validator: str | None = strong_etag(BODY)) -> None:
    """A part an earlier attempt left at ``url`` (of BODY's length), with its checkpoint."""
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(data)
    sha256 = hashlib.sha256(data).hexdigest()
    Checkpoint(validator, len(data), sha256, url=url, total=len(BODY)).write(checkpoint_for(part))


# -- probe --------------------------------------------------------------------


def test_probe_reports_what_head_says(server: ArtifactServer, client: httpx.Client) -> None:
    url = server.add("/a.bin", Artifact(body=BODY, content_type="application/pdf"))

    found = probe(client, url, LIMITS)

    assert found == Probe(
        url=url,
        status=200,
        length=len(BODY),
        etag=strong_etag(BODY),
        last_modified="Wed, 21 Oct 2026 07:28:00 GMT",
        accept_ranges=True,
        content_type="application/pdf",
        method="HEAD",
        final_url=url,
    )
    assert found.validator == strong_etag(BODY)
    stats = server.stats("/a.bin")
    assert (stats.head_requests, stats.get_requests) == (1, 0)


def test_probe_without_range_support(server: ArtifactServer, client: httpx.Client) -> None:
    url = server.add("/a.bin", Artifact(body=BODY, ranges=False))
    assert probe(client, url, LIMITS).accept_ranges is False


def test_probe_follows_redirects_and_keeps_the_url_it_asked(
    server: ArtifactServer, client: httpx.Client
) -> None:
    server.add("/old", Artifact(body=b"", redirect_to="/new"))
    final = server.add("/new", Artifact(body=BODY))

    found = probe(client, server.url("/old"), LIMITS)

    # STREAM asks the same URL and follows the redirects again (see Probe).
    assert (found.url, found.final_url) == (server.url("/old"), final)
    assert found.length == len(BODY)


@pytest.mark.parametrize("refusal", [405, 501])
def test_refused_head_falls_back_to_an_unread_get(
    server: ArtifactServer, client: httpx.Client, refusal: int
) -> None:
    url = server.add("/a.bin", Artifact(body=BODY, head_status=refusal))

    found = probe(client, url, LIMITS)

    assert found.method == "GET"
    assert (found.status, found.length, found.accept_ranges) == (200, len(BODY), True)
    assert found.etag == strong_etag(BODY)
    stats = server.stats("/a.bin")
    assert (stats.head_requests, stats.get_requests, stats.full_gets) == (1, 1, 1)


def test_probe_refuses_a_file_over_max_bytes(server: ArtifactServer, client: httpx.Client) -> None:
    url = server.add("/big.bin", Artifact(body=BODY))
    small = dataclasses.replace(LIMITS, max_bytes=1000)

    with pytest.raises(PermanentFetchError, match="over the max_bytes limit of 1,000") as info:
        probe(client, url, small)

    assert f"{len(BODY):,} bytes" in str(info.value)
    assert not info.value.retryable


def test_probe_json_round_trip_and_validator_rules() -> None:
    strong = Probe(
        "http://h/x", 200, 10, '"abc"', "Wed, 21 Oct 2026 07:28:00 GMT", True, None, "HEAD"
    )
    assert Probe.from_json(strong.to_json()) == strong
    assert strong.validator == '"abc"'
    weak = dataclasses.replace(strong, etag='W/"abc"')
    assert weak.validator == "Wed, 21 Oct 2026 07:28:00 GMT"
    assert dataclasses.replace(weak, last_modified=None).validator is None
    # A validator that cannot be sent back as an ASCII header is passed over.
    latin = dataclasses.replace(strong, etag='"caf\xe9"')
    assert latin.validator == "Wed, 21 Oct 2026 07:28:00 GMT"
    assert dataclasses.replace(latin, last_modified="Mi\xe9, 21 Okt").validator is None
    with pytest.raises(ValueError, match="length=True"):
        Probe.from_json({**strong.to_json(), "length": True})
    older = {key: value for key, value in strong.to_json().items() if key != "final_url"}
    assert Probe.from_json(older) == strong  # recorded before final_url existed


def test_streamed_json_round_trip() -> None:
    streamed = Streamed(sha256=SHA, size=3, resumed_from=1, content_type=None)
    assert Streamed.from_json(streamed.to_json()) == streamed


# -- statuses and transport errors ---------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (503, "2", 2.0),
        (500, None, None),
        (408, None, None),
        (429, "7", 7.0),
        (503, "soon", None),
        (503, "\xb2", None),  # "²": str.isdigit() says yes, int() says no
    ],
)
def test_transient_statuses_carry_retry_after(
    server: ArtifactServer,
    client: httpx.Client,
    status: int,
    retry_after: str | None,
    expected: float | None,
) -> None:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    url = server.add("/a.bin", Artifact(body=BODY, faults=[Fault(status, headers)]))

    with pytest.raises(TransientFetchError, match=f"HTTP {status} ") as info:
        probe(client, url, LIMITS)

    assert info.value.retryable
    assert info.value.retry_after_s == expected
    assert url in str(info.value)
    assert probe(client, url, LIMITS).status == 200  # the fault was served once


def test_retry_after_as_an_http_date(server: ArtifactServer, client: httpx.Client) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    url = server.add("/a.bin", Artifact(body=BODY, faults=[Fault(429, {"Retry-After": when})]))

    with pytest.raises(TransientFetchError, match="HTTP 429 Too Many Requests") as info:
        probe(client, url, LIMITS)

    assert info.value.retry_after_s is not None
    assert 100 < info.value.retry_after_s <= 120


@pytest.mark.parametrize(
    ("status", "phrase"), [(404, "Not Found"), (403, "Forbidden"), (410, "Gone")]
)
def test_permanent_statuses_fail_at_once(
    server: ArtifactServer, client: httpx.Client, part: Path, status: int, phrase: str
) -> None:
    url = server.add("/a.bin", Artifact(body=BODY, status=status))

    with pytest.raises(PermanentFetchError) as info:
        probe(client, url, LIMITS)
    assert str(info.value) == f"HTTP {status} {phrase} for {url} (permanent: not retried)"

    stale = Probe(url, 200, len(BODY), None, None, False, None, "HEAD")
    with pytest.raises(PermanentFetchError, match=f"HTTP {status} {phrase}"):
        stream_to_part(client, stale, part, LIMITS)
    assert not part.exists()


def test_classify_status_directly() -> None:
    headers = httpx.Headers({"Retry-After": "3"})
    assert classify_status(206, headers, "http://h/x") is None
    assert isinstance(classify_status(304, headers, "http://h/x"), PermanentFetchError)
    unknown = classify_status(599, httpx.Headers(), "http://h/x")
    assert isinstance(unknown, TransientFetchError)
    assert unknown.retry_after_s is None
    assert classify_status(502, headers, "http://h/x").retry_after_s == 3.0  # type: ignore[union-attr]


def test_redirect_loop_is_permanent(server: ArtifactServer, client: httpx.Client) -> None:
    server.add("/ping", Artifact(body=b"", redirect_to="/pong"))
    server.add("/pong", Artifact(body=b"", redirect_to="/ping"))

    with pytest.raises(PermanentFetchError, match=r"too many redirects .*max_redirects=5"):
        probe(client, server.url("/ping"), LIMITS)

    assert server.stats("/ping").head_requests + server.stats("/pong").head_requests == 6


def test_bad_scheme_is_permanent(client: httpx.Client) -> None:
    with pytest.raises(PermanentFetchError, match="bad scheme"):
        probe(client, "ftp://127.0.0.1/a.bin", LIMITS)
    with pytest.raises(PermanentFetchError, match="bad scheme"):
        probe(client, "a.bin", LIMITS)


def test_connection_refused_is_transient(client: httpx.Client, part: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and now has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/a.bin"

    with pytest.raises(TransientFetchError, match="ConnectError") as info:
        probe(client, url, LIMITS)
    assert info.value.retryable

    stale = Probe(url, 200, 10, None, None, False, None, "HEAD")
    with pytest.raises(TransientFetchError, match="ConnectError"):
        stream_to_part(client, stale, part, LIMITS)


# -- streaming ----------------------------------------------------------------


def test_fresh_download_hashes_what_it_writes(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    url = server.add("/a.bin", Artifact(body=BODY))
    seen: list[int] = []

    result = stream_to_part(client, probe(client, url, LIMITS), part, LIMITS, on_bytes=seen.append)

    assert result == Streamed(SHA, len(BODY), 0, "application/octet-stream")
    assert part.read_bytes() == BODY
    assert sum(seen) == len(BODY)
    assert max(seen) <= LIMITS.chunk_bytes
    stats = server.stats("/a.bin")
    assert (stats.full_gets, stats.range_gets, stats.range_headers) == (1, 0, ())


def test_an_empty_body_is_a_valid_download(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    url = server.add("/empty", Artifact(body=b""))
    result = fetch(client, url, part)
    assert (result.size, result.sha256) == (0, hashlib.sha256(b"").hexdigest())
    assert part.read_bytes() == b""


def test_resume_appends_after_the_existing_bytes(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    keep = 123_457
    url = server.add("/a.bin", Artifact(body=BODY))
    staged(part, BODY[:keep], url)
    seen: list[int] = []

    result = stream_to_part(client, probe(client, url, LIMITS), part, LIMITS, on_bytes=seen.append)

    assert (result.sha256, result.size, result.resumed_from) == (SHA, len(BODY), keep)
    assert part.read_bytes() == BODY
    assert sum(seen) == len(BODY) - keep
    stats = server.stats("/a.bin")
    assert (stats.range_gets, stats.full_gets) == (1, 0)
    assert stats.range_headers == (f"bytes={keep}-",)
    assert stats.if_range_headers == (strong_etag(BODY),)
    assert stats.body_bytes_sent == len(BODY) - keep


def test_resume_uses_last_modified_when_the_etag_is_weak(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    url = server.add("/a.bin", Artifact(body=BODY, etag='W/"weak"'))
    staged(part, BODY[:1000], url, "Wed, 21 Oct 2026 07:28:00 GMT")

    result = fetch(client, url, part)

    assert (result.sha256, result.resumed_from) == (SHA, 1000)
    assert server.stats("/a.bin").if_range_headers == ("Wed, 21 Oct 2026 07:28:00 GMT",)


def test_no_resume_without_range_support(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    url = server.add("/a.bin", Artifact(body=BODY, ranges=False))
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage that must not survive" * 100)

    result = fetch(client, url, part)

    assert (result.sha256, result.size, result.resumed_from) == (SHA, len(BODY), 0)
    assert part.read_bytes() == BODY
    stats = server.stats("/a.bin")
    assert (stats.full_gets, stats.range_headers) == (1, ())


def test_a_server_that_ignores_range_gets_a_fresh_start(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    """The probe claimed ranges, the GET ignores them: the 200 body replaces the part."""
    url = server.add("/a.bin", Artifact(body=BODY, ranges=False))
    staged(part, b"x" * 5000, url)
    claims = dataclasses.replace(probe(client, url, LIMITS), accept_ranges=True)

    result = stream_to_part(client, claims, part, LIMITS)

    assert (result.sha256, result.resumed_from) == (SHA, 0)
    assert part.read_bytes() == BODY
    stats = server.stats("/a.bin")
    assert (stats.get_requests, stats.full_gets, stats.range_headers) == (1, 1, ("bytes=5000-",))


def test_if_range_mismatch_restarts_from_zero(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    """The part holds an older version; If-Range carries its ETag, so the server sends all."""
    url = server.add("/a.bin", Artifact(body=BODY))
    staged(part, generated_body("the old version", 200_000), url, '"old-version"')
    old = dataclasses.replace(probe(client, url, LIMITS), etag='"old-version"')

    result = stream_to_part(client, old, part, LIMITS)

    assert (result.sha256, result.size, result.resumed_from) == (SHA, len(BODY), 0)
    assert part.read_bytes() == BODY
    stats = server.stats("/a.bin")
    assert stats.if_range_headers == ('"old-version"',)
    assert (stats.range_gets, stats.full_gets) == (0, 1)


def test_a_complete_part_is_recognised_by_416(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    url = server.add("/a.bin", Artifact(body=BODY))
    staged(part, BODY, url)

    result = fetch(client, url, part)

    assert (result.sha256, result.size, result.resumed_from) == (SHA, len(BODY), len(BODY))
    stats = server.stats("/a.bin")
    assert stats.range_headers == (f"bytes={len(BODY)}-",)
    assert stats.body_bytes_sent == 0


def test_a_part_longer_than_the_file_is_restarted(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    url = server.add("/a.bin", Artifact(body=BODY))
    part.parent.mkdir(parents=True)
    part.write_bytes(BODY + b"trailing junk")

    result = fetch(client, url, part)

    assert (result.sha256, result.resumed_from) == (SHA, 0)
    assert part.read_bytes() == BODY


@pytest.mark.parametrize(
    ("have", "length", "ranges", "validator", "expected"),
    [
        (1000, 2000, True, '"e"', True),
        (2000, 2000, True, '"e"', True),  # complete: the server answers 416
        (1000, None, True, '"e"', True),
        (0, 2000, True, '"e"', False),  # nothing to continue
        (2001, 2000, True, '"e"', False),  # longer than the file: start over
        (1000, 2000, False, '"e"', False),
        (1000, 2000, True, None, False),
    ],
)
def test_can_resume_needs_bytes_ranges_a_validator_and_a_part_that_fits(
    have: int, length: int | None, ranges: bool, validator: str | None, expected: bool
) -> None:
    head = Probe("http://h/x", 200, length, validator, None, ranges, None, "HEAD")
    assert can_resume(head, have) is expected


def test_range_replies_capped_short_of_the_end_are_followed_by_requests_for_the_rest(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    """A proxy caps each range reply: one attempt asks again until the file is whole."""
    cap = 120_000
    url = server.add("/a.bin", Artifact(body=BODY, range_cap=cap))
    found = probe(client, url, LIMITS)
    staged(part, BODY[:10_000], url)

    result = stream_to_part(client, found, part, LIMITS)

    assert (result.sha256, result.size, result.resumed_from) == (SHA, len(BODY), 10_000)
    assert part.read_bytes() == BODY
    stats = server.stats("/a.bin")
    assert stats.range_headers == ("bytes=10000-", "bytes=130000-", "bytes=250000-")
    assert stats.full_gets == 0


def test_a_range_reply_cut_short_of_its_own_end_keeps_the_part(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    """Its Content-Range promised more than came: the part waits for the next attempt."""
    url = server.add("/a.bin", Artifact(body=BODY, truncate_at=50_000))
    found = probe(client, url, LIMITS)
    staged(part, BODY[:10_000], url)

    with pytest.raises(TransientFetchError, match=f"after 60,000 of {len(BODY):,} bytes"):
        stream_to_part(client, found, part, LIMITS)

    assert part.read_bytes() == BODY[:60_000]


def test_a_body_without_content_length_cut_short_is_not_taken_for_the_file(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    """Closing the connection ends such a body; HEAD's length tells an early close from the end."""
    cut = 100_000
    url = server.add("/a.bin", Artifact(body=BODY, close_delimited=True, truncate_at=cut))
    found = probe(client, url, LIMITS)
    assert found.length == len(BODY)

    with pytest.raises(
        TransientFetchError, match=f"closed after {cut:,} bytes .* short of the {len(BODY):,}"
    ):
        stream_to_part(client, found, part, LIMITS)

    assert part.read_bytes() == BODY[:cut]  # kept for the next attempt
    server.add("/a.bin", Artifact(body=BODY, close_delimited=True))
    result = stream_to_part(client, found, part, LIMITS)
    assert (result.sha256, result.size) == (SHA, len(BODY))


def test_a_body_without_content_length_of_another_version_is_taken_whole(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    """HEAD's length vouches only for the version HEAD saw: a changed file is not held to it."""
    url = server.add("/a.bin", Artifact(body=BODY[:1000]))
    found = probe(client, url, LIMITS)
    server.add("/a.bin", Artifact(body=BODY, close_delimited=True))

    result = stream_to_part(client, found, part, LIMITS)

    assert (result.sha256, result.size) == (SHA, len(BODY))


def test_a_head_that_understates_the_length_does_not_stop_a_body_without_one(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    """HEAD's length is a floor for such a body, not its size: some servers answer HEAD with 0."""
    url = server.add("/a.bin", Artifact(body=BODY, close_delimited=True))
    understated = dataclasses.replace(probe(client, url, LIMITS), length=0)

    result = stream_to_part(client, understated, part, LIMITS)

    assert (result.sha256, result.size) == (SHA, len(BODY))


def test_stream_follows_the_redirects_again_instead_of_reusing_heads_target(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    """HEAD's result is replayed on later attempts; by then its redirect target may be gone."""
    server.add("/old", Artifact(body=b"", redirect_to="/signed-1"))
    server.add("/signed-1", Artifact(body=BODY))
    found = probe(client, server.url("/old"), LIMITS)
    server.add("/old", Artifact(body=b"", redirect_to="/signed-2"))
    server.add("/signed-1", Artifact(body=b"", status=403))  # expired
    server.add("/signed-2", Artifact(body=BODY))

    result = stream_to_part(client, found, part, LIMITS)

    assert (result.sha256, result.size) == (SHA, len(BODY))
    assert server.stats("/signed-1").get_requests == 0
    assert server.stats("/signed-2").full_gets == 1


def test_a_validator_that_is_not_ascii_restarts_instead_of_resuming(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    """httpx cannot send it back in If-Range; starting over is always safe."""
    url = server.add("/a.bin", Artifact(body=BODY, etag='"caf\xe9"', last_modified=None))
    found = probe(client, url, LIMITS)
    assert (found.etag, found.validator) == ('"caf\xe9"', None)
    part.parent.mkdir(parents=True)
    part.write_bytes(BODY[:5000])

    result = stream_to_part(client, found, part, LIMITS)

    assert (result.sha256, result.size, result.resumed_from) == (SHA, len(BODY), 0)
    stats = server.stats("/a.bin")
    assert (stats.full_gets, stats.range_headers) == (1, ())


def test_short_body_keeps_the_part_and_a_later_attempt_resumes_it(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    cut = 100_000
    url = server.add("/a.bin", Artifact(body=BODY, truncate_at=cut))
    found = probe(client, url, LIMITS)

    with pytest.raises(TransientFetchError, match=f"after {cut:,} of {len(BODY):,} bytes") as info:
        stream_to_part(client, found, part, LIMITS)

    assert info.value.retryable
    assert part.read_bytes() == BODY[:cut]

    server.add("/a.bin", Artifact(body=BODY))  # the origin recovers
    result = stream_to_part(client, found, part, LIMITS)

    assert (result.sha256, result.size, result.resumed_from) == (SHA, len(BODY), cut)
    assert part.read_bytes() == BODY
    assert server.stats("/a.bin").range_headers == (f"bytes={cut}-",)


def test_a_transient_status_on_the_get_keeps_the_part(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    url = server.add("/a.bin", Artifact(body=BODY))
    found = probe(client, url, LIMITS)
    staged(part, BODY[:777], url)
    server.add("/a.bin", Artifact(body=BODY, faults=[Fault(503, {"Retry-After": "1"})]))

    with pytest.raises(TransientFetchError, match="HTTP 503") as info:
        stream_to_part(client, found, part, LIMITS)

    assert info.value.retry_after_s == 1.0
    assert part.read_bytes() == BODY[:777]
    assert stream_to_part(client, found, part, LIMITS).resumed_from == 777


def test_a_body_over_max_bytes_is_refused_and_its_part_deleted(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    url = server.add("/a.bin", Artifact(body=BODY))
    found = probe(client, url, LIMITS)
    part.parent.mkdir(parents=True)
    part.write_bytes(BODY[:1000])
    small = dataclasses.replace(LIMITS, max_bytes=50_000)

    with pytest.raises(PermanentFetchError, match="is 300,000 bytes, more than the max_bytes"):
        stream_to_part(client, found, part, small)

    assert not part.exists()


def test_a_body_without_length_is_counted_against_max_bytes(
    client: httpx.Client, part: Path
) -> None:
    """No Content-Length (chunked): the limit is enforced on the bytes as they arrive."""
    chunk = b"y" * 10_000
    body = b"".join(b"%x\r\n%b\r\n" % (len(chunk), chunk) for _ in range(10)) + b"0\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    small = dataclasses.replace(LIMITS, max_bytes=45_000)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/chunked"
        with ThreadPoolExecutor(max_workers=1) as pool:
            served = pool.submit(_answer_once, listener, head + body)
            unknown = Probe(url, 200, None, None, None, False, None, "HEAD")
            with pytest.raises(PermanentFetchError, match="sent more bytes than the max_bytes"):
                stream_to_part(client, unknown, part, small)
            served.result(timeout=10)

    assert not part.exists()


def _answer_once(listener: socket.socket, response: bytes) -> None:
    """Accept one connection, read its request head, send ``response`` and hang up."""
    connection, _ = listener.accept()
    with connection:
        received = b""
        while b"\r\n\r\n" not in received:
            data = connection.recv(4096)
            if not data:
                return
            received += data
        with contextlib.suppress(OSError):  # the client may hang up once it has enough
            connection.sendall(response)


def test_should_stop_interrupts_between_chunks_and_keeps_the_part(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    pause = 65_536
    url = server.add("/a.bin", Artifact(body=BODY, pause_after=pause))
    found = probe(client, url, LIMITS)

    interrupted = stop_at_pause(
        client, found, part, LIMITS, server=server, path="/a.bin", pause=pause
    )

    assert "is kept" in str(interrupted)
    kept = part.stat().st_size
    assert kept == pause  # the stop is seen before the next chunk is written
    assert part.read_bytes() == BODY[:kept]

    result = stream_to_part(client, found, part, LIMITS)
    assert (result.sha256, result.resumed_from) == (SHA, kept)


def test_should_stop_before_starting_fetches_nothing(
    server: ArtifactServer, client: httpx.Client, part: Path
) -> None:
    url = server.add("/a.bin", Artifact(body=BODY))
    found = probe(client, url, LIMITS)

    with pytest.raises(DownloadInterrupted):
        stream_to_part(client, found, part, LIMITS, should_stop=lambda: True)

    assert server.stats("/a.bin").get_requests == 0
