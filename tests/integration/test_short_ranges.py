"""Range replies that do not continue the part are never taken for the file.

``Content-Range: bytes 100-199/*`` with no Content-Length: the reply ends
when the server closes the connection, and the total is unknown, so only the
announced range end tells an early close from the end.  A 206 that starts
before the part ends (``bytes 50-149/*`` for ``bytes=100-``) would splice
bytes twice into it; a 416 for a range inside the file does not mean the
part is complete.  Mutation tests loosened each of these checks and the
suite still passed.  The demo server always answers ranges correctly, so
this file serves the replies itself, from a tiny ``http.server`` on
loopback that sends exactly them.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from docstokg.download import DownloadLimits, make_client, probe, stream_to_part
from docstokg.errors import TransientFetchError
from docstokg.states import JobState
from docstokg.testing.server import generated_body
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
BACK = 50  # a "wrong-start" 206 starts this many bytes before the offset asked for
# How the server answers ``Range: bytes=N-`` (see _RangeHandler.do_GET).
SHORT_206 = "short-206"
WRONG_START = "wrong-start"
INSIDE_416 = "416-inside"
OVERRUN = "overrun"  # a 206 that sends OVER bytes past the end it announces
OVER = 100
LIMITS = DownloadLimits(connect_timeout_s=5.0, read_timeout_s=10.0, chunk_bytes=16)
_RANGE = re.compile(r"bytes=([0-9]+)-")


class _RangeHandler(BaseHTTPRequestHandler):
    """HEAD: the whole body's headers.  GET: see :meth:`do_GET`."""

    protocol_version = "HTTP/1.1"
    server: _ScriptedServer

    def do_HEAD(self) -> None:
        self._head(200, {"Content-Length": str(len(BODY))})

    def do_GET(self) -> None:
        """The first plain GET drops after FIRST_GET bytes, later ones send the whole body.

        ``Range: bytes=N-`` is answered as ``server.range_reply`` says: a 206
        shorter than it announces (SHORT_206), a 206 starting BACK bytes before
        N (WRONG_START), a 416 although N is inside the file (INSIDE_416), or
        a 206 that goes on OVER bytes past the end it announces (OVERRUN).
        """
        header = self.headers.get("Range")
        plain_gets = self.server.record(header, self.headers.get("If-Range"))
        match = _RANGE.fullmatch(header or "")
        if match is None:
            self._head(200, {"Content-Length": str(len(BODY))})
            if plain_gets == 1:  # the whole body announced, the connection dropped part way
                self._send_and_close(BODY[:FIRST_GET])
            else:
                self._send_and_close(BODY)
            return
        start = int(match.group(1))
        if self.server.range_reply == INSIDE_416:
            self._head(416, {"Content-Range": f"bytes */{len(BODY)}", "Content-Length": "0"})
            self._send_and_close(b"")
        elif self.server.range_reply == OVERRUN:
            last = start + ANNOUNCED - 1
            self._head(206, {"Content-Range": f"bytes {start}-{last}/*"})
            self._send_and_close(BODY[start : last + 1] + b"X" * OVER)
        elif self.server.range_reply == WRONG_START:
            first, last = start - BACK, start - BACK + ANNOUNCED - 1
            self._head(206, {"Content-Range": f"bytes {first}-{last}/*"})
            self._send_and_close(BODY[first : last + 1])  # exactly the range it announces
        else:
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


class _ScriptedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, range_reply: str) -> None:
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.range_reply = range_reply
        self._lock = threading.Lock()
        self.requests: list[tuple[str | None, str | None]] = []  # (Range, If-Range) per GET

    def record(self, range_header: str | None, if_range: str | None) -> int:
        """Remember one GET; how many plain (unranged) GETs there have been, this one included."""
        with self._lock:
            self.requests.append((range_header, if_range))
            return sum(header is None for header, _ in self.requests)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/a.bin"


@pytest.fixture
def serve() -> Iterator[Callable[[str], _ScriptedServer]]:
    """Start a server answering ranges as its argument says; all stopped after the test."""
    started: list[tuple[_ScriptedServer, threading.Thread]] = []

    def start(range_reply: str) -> _ScriptedServer:
        server = _ScriptedServer(range_reply)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        started.append((server, thread))
        return server

    try:
        yield start
    finally:
        for server, thread in started:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)


@pytest.fixture
def short_server(serve: Callable[[str], _ScriptedServer]) -> _ScriptedServer:
    return serve(SHORT_206)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with make_client(LIMITS, max_connections=2) as opened:
        yield opened


def test_a_206_ending_cleanly_before_its_announced_end_is_not_complete(
    short_server: _ScriptedServer, client: httpx.Client, tmp_path: Path
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
    short_server: _ScriptedServer, tmp_path: Path, db_url: str
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


@pytest.mark.parametrize("range_reply", [WRONG_START, INSIDE_416])
def test_a_range_reply_that_does_not_continue_the_part_restarts_the_download(
    serve: Callable[[str], _ScriptedServer],
    client: httpx.Client,
    tmp_path: Path,
    range_reply: str,
) -> None:
    """``bytes=100-`` answered ``206 bytes 50-149/*``, or ``416`` with the file 400 bytes long.

    Neither carries the bytes after the part's 100: appending the 206 would
    put bytes 50-99 in twice, and taking the 416 for "already complete" would
    store 100 bytes of 400.  Either way the part is dropped and a plain GET
    fetches the file.
    """
    server = serve(range_reply)
    part = tmp_path / "out" / ".staging" / "a.part"
    found = probe(client, server.url, LIMITS)
    with pytest.raises(TransientFetchError):  # the first plain GET drops after 100 bytes
        stream_to_part(client, found, part, LIMITS)
    assert part.read_bytes() == BODY[:FIRST_GET]

    streamed = stream_to_part(client, found, part, LIMITS)

    assert part.read_bytes() == BODY
    assert (streamed.sha256, streamed.size, streamed.resumed_from) == (
        hashlib.sha256(BODY).hexdigest(),
        len(BODY),
        0,
    )
    assert server.requests == [(None, None), (f"bytes={FIRST_GET}-", ETAG), (None, None)]


def test_a_206_that_runs_past_its_announced_end_vouches_for_none_of_the_excess(
    serve: Callable[[str], _ScriptedServer], client: httpx.Client, tmp_path: Path
) -> None:
    """Bytes past the announced end are no part of the file: never written, never vouched for."""
    server = serve(OVERRUN)
    part = tmp_path / "out" / ".staging" / "0123abcd.part"
    found = probe(client, server.url, LIMITS)
    with pytest.raises(TransientFetchError):
        stream_to_part(client, found, part, LIMITS)  # the plain GET drops after FIRST_GET

    with pytest.raises(TransientFetchError, match="more than"):
        stream_to_part(client, found, part, LIMITS)

    kept = part.read_bytes()
    assert BODY.startswith(kept), "the part is no longer a prefix of the file"
    checkpoint = part.with_name(part.name + ".json").read_text()
    assert f'"length": {len(kept)}' in checkpoint or f'"length":{len(kept)}' in checkpoint
    assert len(kept) <= FIRST_GET + ANNOUNCED
