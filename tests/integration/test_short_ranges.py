"""A 206 that ends cleanly short of the end its Content-Range announced is not the file.

``Content-Range: bytes 100-199/*`` with no Content-Length: the reply ends
when the server closes the connection, and the total is unknown, so only the
announced range end tells an early close from the end.  A mutation test
loosened that length check and the suite still passed.  The demo server
always announces the total, so this file serves the reply itself, from a
tiny ``http.server`` on loopback that sends exactly that.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from docstokg.demo.server import generated_body
from docstokg.download import DownloadLimits, make_client, probe, stream_to_part
from docstokg.errors import TransientFetchError
from docstokg.states import JobState
from tests.runner_kit import (
    artifact_files,
    make_config,
    part_files,
    run_download,
    write_manifest,
)

BODY = generated_body("short-ranges", 400)
ETAG = '"short-ranges-v1"'
FIRST_GET = 100  # the plain GET announces the whole body and drops after this many bytes
ANNOUNCED = 100  # each 206 announces this many bytes (Content-Range: bytes N-(N+99)/*) ...
SENT = 50  # ... and sends only these, then closes the connection cleanly
LIMITS = DownloadLimits(connect_timeout_s=5.0, read_timeout_s=10.0, chunk_bytes=16)
_RANGE = re.compile(r"bytes=([0-9]+)-")


class _ShortRangeHandler(BaseHTTPRequestHandler):
    """HEAD: the whole body's headers.  GET: cut short; each range reply shorter than it says."""

    protocol_version = "HTTP/1.1"
    server: _ShortRangeServer

    def do_HEAD(self) -> None:
        self._head(200, {"Content-Length": str(len(BODY))})

    def do_GET(self) -> None:
        header = self.headers.get("Range")
        self.server.record(header, self.headers.get("If-Range"))
        match = _RANGE.fullmatch(header or "")
        if match is None:  # the whole body announced, the connection dropped part way
            self._head(200, {"Content-Length": str(len(BODY))})
            self._send_and_close(BODY[:FIRST_GET])
            return
        start = int(match.group(1))
        last = start + ANNOUNCED - 1
        self._head(206, {"Content-Range": f"bytes {start}-{last}/*"})
        self._send_and_close(BODY[start : start + SENT])

    def _head(self, status: int, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", ETAG)
        self.send_header("Content-Type", "application/octet-stream")
        if "Content-Length" not in extra:
            self.send_header("Connection", "close")  # the body ends when the connection does
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()

    def _send_and_close(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads what it needs from ``server.requests``."""


class _ShortRangeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ShortRangeHandler)
        self._lock = threading.Lock()
        self.requests: list[tuple[str | None, str | None]] = []  # (Range, If-Range) per GET

    def record(self, range_header: str | None, if_range: str | None) -> None:
        with self._lock:
            self.requests.append((range_header, if_range))

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/a.bin"


@pytest.fixture
def short_server() -> Iterator[_ShortRangeServer]:
    server = _ShortRangeServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with make_client(LIMITS, max_connections=2) as opened:
        yield opened


def test_a_206_ending_cleanly_before_its_announced_end_is_not_complete(
    short_server: _ShortRangeServer, client: httpx.Client, tmp_path: Path
) -> None:
    part = tmp_path / "out" / ".staging" / "a.part"
    found = probe(client, short_server.url, LIMITS)
    assert found.length == len(BODY)
    with pytest.raises(TransientFetchError):  # the plain GET dropped after 100 bytes
        stream_to_part(client, found, part, LIMITS)
    assert part.read_bytes() == BODY[:FIRST_GET]

    # Content-Range: bytes 100-199/*, 50 bytes, a clean close: not the end of anything.
    with pytest.raises(TransientFetchError, match=f"sent {FIRST_GET + SENT:,} of 200 bytes"):
        stream_to_part(client, found, part, LIMITS)

    assert part.read_bytes() == BODY[: FIRST_GET + SENT]  # kept: the next attempt resumes it
    assert short_server.requests == [(None, None), (f"bytes={FIRST_GET}-", ETAG)]


def test_a_run_never_stores_a_resume_that_ended_short(
    short_server: _ShortRangeServer, tmp_path: Path, db_url: str
) -> None:
    """Each attempt resumes where the last stopped; none is taken for the file."""
    manifest = write_manifest(tmp_path / "manifest.jsonl", [("W1", "pdf", short_server.url)])
    out = tmp_path / "out"

    summary = run_download(manifest, out, make_config(max_attempts=3), db_url=db_url, workers=1)

    (job,) = summary.jobs
    assert (job.state, job.ended, job.attempts) == (JobState.FAILED.value, True, 3)
    assert job.sha256 is None
    assert artifact_files(out) == [], "a short resume was stored as the artifact"
    (part,) = part_files(out)
    assert part.read_bytes() == BODY[: FIRST_GET + 2 * SENT]  # 100, then 150, then 200
    assert [header for header, _ in short_server.requests] == [
        None,
        f"bytes={FIRST_GET}-",
        f"bytes={FIRST_GET + SENT}-",
    ]
