"""A real HTTP server on loopback that serves generated artifacts.

The downloader is tested, benchmarked and demonstrated against real sockets
rather than mocks, because what matters (keep-alive reuse, ranged resumes,
short bodies, retries after 503) only shows up on the wire.  Every artifact can
script the misbehaviour of a real origin: faults before success, a HEAD that is
refused, a body cut short, a redirect loop, a permanent status, a pause in the
middle of the body that a test releases, or a throttled rate.

Stdlib only (``http.server``), HTTP/1.1 with keep-alive, quiet.  Counters are
updated *before* the bytes they count are written, so that once a client holds
a complete response the server's statistics already include it; a test never
needs to sleep before reading them.

Besides the counters, the server keeps a log of every request
(:meth:`ArtifactServer.requests`): path, method, status, the span answered, the
body bytes actually written, when, and the client's User-Agent.  A chaos test
reads it to tell what each of several processes fetched, and when.

Run ``python -m docstokg.testing.server --count N --size BYTES`` to serve N
artifacts at ``/a/{i}`` (body ``generated_body(f"/a/{i}", BYTES)``) from a
separate process; it prints its base URL and serves until killed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import random
import re
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Final, Literal, cast
from urllib.parse import urlsplit

from docstokg.errors import ConfigurationError

CHUNK_SIZE: Final = 64 * 1024
"""Bytes handed to one ``sendall``: large enough to be cheap, small enough to pause or abort."""

DEFAULT_LAST_MODIFIED: Final = "Wed, 21 Oct 2026 07:28:00 GMT"

_POLL_INTERVAL_S: Final = 0.05
"""How often ``serve_forever`` checks for shutdown; bounds how long ``stop()`` takes."""

_STOP_JOIN_TIMEOUT_S: Final = 5.0
"""How long ``stop()`` waits for connection threads after their sockets were shut down."""

_IDLE_TIMEOUT_S: Final = 60.0
"""An idle keep-alive connection is closed after this long, so no thread waits forever."""

_THROTTLE_SLICES_PER_S: Final = 20
"""A throttled body is sent in slices of about 1/20 s of its rate, so the rate is smooth."""

_RANGE_RE: Final = re.compile(r"bytes=(\d+)-(\d*)")

_Unsatisfiable = Literal["unsatisfiable"]
_UNSATISFIABLE: Final[_Unsatisfiable] = "unsatisfiable"


@dataclass
class Fault:
    """One scripted response served instead of the artifact (e.g. 503 with Retry-After)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Artifact:
    """A body to serve and the ways its origin misbehaves.

    ``faults`` are consumed one per request (HEAD or GET), in order, before
    normal service; the list given here is copied by :meth:`ArtifactServer.add`
    and never mutated.  ``truncate_at`` counts bytes of the *requested* span;
    ``pause_after`` is an absolute offset in the body.  ``range_cap`` answers a
    range with at most that many bytes, saying so in Content-Range (as some
    proxies do); ``close_delimited`` sends GET bodies without Content-Length,
    ended by closing the connection (HEAD still announces the length).
    """

    body: bytes
    content_type: str = "application/octet-stream"
    etag: str | None = None
    last_modified: str | None = DEFAULT_LAST_MODIFIED
    ranges: bool = True
    head_status: int | None = None
    faults: list[Fault] = field(default_factory=list)
    truncate_at: int | None = None
    redirect_to: str | None = None
    status: int | None = None
    pause_after: int | None = None
    bytes_per_s: float | None = None
    range_cap: int | None = None
    close_delimited: bool = False


@dataclass(frozen=True)
class PathStats:
    """What the server saw and sent for one path (or, from ``total()``, for all).

    ``body_bytes_sent`` counts artifact body bytes only (not the short text of
    fault or error responses), after truncation and aborted writes.
    """

    head_requests: int = 0
    get_requests: int = 0
    full_gets: int = 0
    range_gets: int = 0
    range_headers: tuple[str, ...] = ()
    if_range_headers: tuple[str, ...] = ()
    body_bytes_sent: int = 0
    faults_served: int = 0


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server answered it, from :meth:`ArtifactServer.requests`.

    ``start``/``stop`` (stop exclusive) is the span of the body the response
    announced (``0, 0`` for HEAD and for fault or error responses, whose short
    text is not artifact body); ``bytes_sent`` counts the body bytes actually
    written, after truncation and aborted writes, so ``bytes_sent < stop -
    start`` means the response was cut short.  Times are ``time.time()``, the
    clock a SQLite ledger records, so a test can compare the two; ``ended_at``
    is None while the response is still being written.  ``user_agent`` tells
    the clients apart (each process of a chaos test sends its own).
    """

    path: str
    method: str
    status: int
    start: int
    stop: int
    bytes_sent: int
    started_at: float
    ended_at: float | None
    user_agent: str | None

    @property
    def cut_short(self) -> bool:
        """True when fewer body bytes went out than the response announced."""
        return self.bytes_sent < self.stop - self.start


@dataclass
class _Request:
    """The mutable twin of :class:`RequestRecord`, only touched under the server's lock."""

    path: str
    method: str
    user_agent: str | None
    started_at: float
    status: int = 0
    start: int = 0
    stop: int = 0
    bytes_sent: int = 0
    ended_at: float | None = None

    def snapshot(self) -> RequestRecord:
        return RequestRecord(
            path=self.path,
            method=self.method,
            status=self.status,
            start=self.start,
            stop=self.stop,
            bytes_sent=self.bytes_sent,
            started_at=self.started_at,
            ended_at=self.ended_at,
            user_agent=self.user_agent,
        )


@dataclass
class _Counters:
    """The mutable twin of :class:`PathStats`, only touched under the server's lock."""

    head_requests: int = 0
    get_requests: int = 0
    full_gets: int = 0
    range_gets: int = 0
    range_headers: list[str] = field(default_factory=list)
    if_range_headers: list[str] = field(default_factory=list)
    body_bytes_sent: int = 0
    faults_served: int = 0

    def snapshot(self) -> PathStats:
        return PathStats(
            head_requests=self.head_requests,
            get_requests=self.get_requests,
            full_gets=self.full_gets,
            range_gets=self.range_gets,
            range_headers=tuple(self.range_headers),
            if_range_headers=tuple(self.if_range_headers),
            body_bytes_sent=self.body_bytes_sent,
            faults_served=self.faults_served,
        )


@dataclass
class _Entry:
    """An added artifact with its resolved ETag and its own queue of pending faults."""

    artifact: Artifact
    etag: str
    faults: deque[Fault]

    def validators(self) -> tuple[str, ...]:
        """The values an ``If-Range`` may carry to still get a 206."""
        if self.artifact.last_modified is None:
            return (self.etag,)
        return (self.etag, self.artifact.last_modified)

    def representation_headers(self) -> dict[str, str]:
        headers = {"ETag": self.etag, "Content-Type": self.artifact.content_type}
        if self.artifact.last_modified is not None:
            headers["Last-Modified"] = self.artifact.last_modified
        if self.artifact.ranges:
            headers["Accept-Ranges"] = "bytes"
        return headers


def generated_body(seed: str, size: int) -> bytes:
    """Deterministic pseudo-random bytes: the same ``seed`` and ``size`` give the same body.

    Random rather than repetitive so that compression or deduplication cannot
    flatter a benchmark; ``random.Random`` does it in C, fast enough for
    thousands of 64 KiB bodies.
    """
    if size < 0:
        raise ConfigurationError(f"a body size must be >= 0, not {size}")
    return random.Random(seed).randbytes(size)


def strong_etag(body: bytes) -> str:
    """The ETag the server gives a body that has none: the first 16 hex digits of its sha256."""
    return f'"{hashlib.sha256(body).hexdigest()[:16]}"'


def _requested_span(header: str, total: int) -> tuple[int, int] | _Unsatisfiable | None:
    """``(start, stop)`` (stop exclusive) for a single ``bytes=N-[M]`` range.

    ``None`` means "ignore the header and send the whole body": HTTP lets a
    server ignore range forms it does not support (suffix and multi-ranges)
    and requires it to ignore syntactically invalid ones (M < N).
    """
    match = _RANGE_RE.fullmatch(header.strip())
    if match is None:
        return None
    start = int(match[1])
    last = int(match[2]) if match[2] else total - 1
    if match[2] and last < start:
        return None
    if start >= total:
        return _UNSATISFIABLE
    return start, min(last, total - 1) + 1


def _scripted_response(
    artifact: Artifact, fault: Fault | None, *, head: bool
) -> tuple[int, dict[str, str]] | None:
    """The status and headers that replace normal service, or None to serve the artifact."""
    if fault is not None:
        return fault.status, fault.headers
    if artifact.status is not None:
        return artifact.status, {}
    if artifact.redirect_to is not None:
        return HTTPStatus.FOUND, {"Location": artifact.redirect_to}
    if head and artifact.head_status is not None:
        refused = artifact.head_status == HTTPStatus.METHOD_NOT_ALLOWED
        return artifact.head_status, {"Allow": "GET"} if refused else {}
    return None


class _HTTPServer(ThreadingHTTPServer):
    """Tracks each connection's socket and thread so ``stop()`` can end them all."""

    daemon_threads = True
    request_queue_size = 128  # several client workers connect at once; 5 would drop SYNs

    def __init__(self, owner: ArtifactServer, address: tuple[str, int]) -> None:
        self.owner = owner
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        sock = cast(socket.socket, request)
        thread = threading.Thread(
            target=self._serve_connection,
            args=(sock, client_address),
            name=f"artifact-connection:{client_address}",
            daemon=True,
        )
        # Registered here, in the accepting thread, so that once serve_forever
        # has returned every connection is known to close_connections().
        with self._connections_lock:
            self._connections[sock] = thread
        self.owner._count_connection()
        thread.start()

    def _serve_connection(self, sock: socket.socket, client_address: Any) -> None:
        try:
            self.process_request_thread(sock, client_address)
        finally:
            with self._connections_lock:
                self._connections.pop(sock, None)

    def close_connections(self, timeout: float) -> None:
        """Wake every connection thread (blocked reads see EOF, writes fail) and join them."""
        with self._connections_lock:
            connections = list(self._connections.items())
        for sock, _ in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for _, thread in connections:
            thread.join(max(0.0, deadline - time.monotonic()))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes; no 40 ms delayed-ACK stall
    timeout = _IDLE_TIMEOUT_S
    _request: _Request  # the entry of the request being served, in the server's log

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing: tests and the demo's progress display own the terminal."""

    def handle(self) -> None:
        # A client that goes away (reset, broken pipe, shutdown by stop()) is
        # normal here, not an error worth a traceback.
        with contextlib.suppress(OSError):
            super().handle()

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    @property
    def _owner(self) -> ArtifactServer:
        return cast(_HTTPServer, self.server).owner

    def _serve(self, *, head: bool) -> None:
        path = urlsplit(self.path).path
        self._request = self._owner._log_request(
            path, "HEAD" if head else "GET", self.headers.get("User-Agent")
        )
        try:
            self._serve_logged(path, head=head)
        finally:
            self._owner._end_request(self._request)

    def _serve_logged(self, path: str, *, head: bool) -> None:
        owner = self._owner
        range_header = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        entry, fault = owner._admit(path, head=head, range_header=range_header, if_range=if_range)
        if entry is None:
            self._send_short(HTTPStatus.NOT_FOUND, {}, head=head)
            return
        scripted = _scripted_response(entry.artifact, fault, head=head)
        if scripted is not None:
            self._send_short(*scripted, head=head)
            return
        self._serve_artifact(path, entry, head=head, range_header=range_header, if_range=if_range)

    def _serve_artifact(
        self,
        path: str,
        entry: _Entry,
        *,
        head: bool,
        range_header: str | None,
        if_range: str | None,
    ) -> None:
        """200 with the whole body, 206 with the requested span, or 416."""
        owner = self._owner
        artifact = entry.artifact
        total = len(artifact.body)
        span: tuple[int, int] | _Unsatisfiable | None = None
        if (
            not head
            and artifact.ranges
            and range_header is not None
            and (if_range is None or if_range in entry.validators())
        ):
            span = _requested_span(range_header, total)
        if span == _UNSATISFIABLE:
            self._send_short(
                HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                {"Content-Range": f"bytes */{total}"},
                head=head,
            )
            return

        headers = entry.representation_headers()
        if isinstance(span, tuple):
            start, stop = span
            if artifact.range_cap is not None:
                stop = min(stop, start + artifact.range_cap)
            status = HTTPStatus.PARTIAL_CONTENT
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{total}"
            if not head:
                owner._bump(path, range_gets=1)
        else:
            start, stop = 0, total
            status = HTTPStatus.OK
            if not head:
                owner._bump(path, full_gets=1)
        owner._answer_request(self._request, status, (0, 0) if head else (start, stop))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if head or not artifact.close_delimited:
            self.send_header("Content-Length", str(stop - start))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True  # the body ends where the connection does
        self.end_headers()
        if not head:
            self._send_body(path, artifact, start, stop)

    def _send_short(self, status: int, headers: dict[str, str], *, head: bool) -> None:
        """A fault or error response: a one-line text body, or just its headers for HEAD."""
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        body = f"{status} {phrase}\n".encode()
        self._owner._answer_request(self._request, status, (0, 0))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_body(self, path: str, artifact: Artifact, start: int, stop: int) -> None:
        """Write ``body[start:stop]``, honouring truncation, the pause point and throttling."""
        owner = self._owner
        limit = stop
        if artifact.truncate_at is not None:
            limit = min(stop, start + max(0, artifact.truncate_at))
        pause_at = artifact.pause_after
        if pause_at is not None and not start <= pause_at < limit:
            pause_at = None  # the pause point is outside what this response sends
        chunk_size = CHUNK_SIZE
        if artifact.bytes_per_s is not None:
            slice_size = int(artifact.bytes_per_s / _THROTTLE_SLICES_PER_S)
            chunk_size = max(1, min(CHUNK_SIZE, slice_size))
        view = memoryview(artifact.body)
        began = time.monotonic()
        position = start
        while position < limit:
            if pause_at is not None and position == pause_at:
                pause_at = None
                if not owner._pause(path):
                    break
            end = min(limit, position + chunk_size)
            if pause_at is not None:
                end = min(end, pause_at)
            # Counted before writing, so a client that has the bytes sees them counted.
            owner._count_sent(path, self._request, end - position)
            try:
                self.wfile.write(view[position:end])
            except OSError:
                owner._count_sent(path, self._request, -(end - position))
                break
            position = end
            if artifact.bytes_per_s is not None and position < limit:
                due = began + (position - start) / artifact.bytes_per_s
                if owner._wait_stopping(due - time.monotonic()):
                    break
        if position < stop:
            # A short body can only be signalled by closing: the client then
            # sees fewer bytes than Content-Length promised.
            self.close_connection = True


class ArtifactServer:
    """Serves added artifacts on ``host:port`` (port 0: any free port) from daemon threads.

    ``add``, ``stats``, ``release`` and friends are thread-safe; ``start`` and
    ``stop`` are meant to be called from one controlling thread.  The socket is
    bound by ``start()``, or earlier by ``add()``/``base_url`` when a URL is
    needed before serving; ``stop()`` (or leaving the ``with`` block) closes it.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._address = (host, port)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._entries: dict[str, _Entry] = {}
        self._counters: dict[str, _Counters] = {}
        self._connections = 0
        self._paused: dict[str, int] = {}
        self._released: set[str] = set()
        self._requests: list[_Request] = []

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> ArtifactServer:
        """Bind (if not yet bound) and serve in a daemon thread; a second call does nothing."""
        if self._stopping.is_set():
            raise RuntimeError("this ArtifactServer was stopped; create a new one")
        if self._thread is None:
            httpd = self._bound()
            self._thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": _POLL_INTERVAL_S},
                name=f"artifact-server:{httpd.server_address[1]}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake every paused sender, end every connection; idempotent."""
        with self._cond:
            if self._stopping.is_set():
                return
            self._stopping.set()
            self._cond.notify_all()
        httpd = self._httpd
        if httpd is None:
            return
        if self._thread is not None:
            httpd.shutdown()
            self._thread.join()
        httpd.close_connections(_STOP_JOIN_TIMEOUT_S)
        httpd.server_close()

    def __enter__(self) -> ArtifactServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _bound(self) -> _HTTPServer:
        if self._httpd is None:
            self._httpd = _HTTPServer(self, self._address)
        return self._httpd

    # -- artifacts -------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` of the bound socket."""
        host, port = self._bound().server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(self, path: str, artifact: Artifact) -> str:
        """Serve ``artifact`` at ``path`` (replacing any previous one); returns its URL.

        A replaced path gets a fresh pause gate: an earlier ``release`` does not
        carry over to the new artifact.
        """
        if not path.startswith("/"):
            raise ConfigurationError(f"an artifact path must start with '/', not {path!r}")
        etag = artifact.etag if artifact.etag is not None else strong_etag(artifact.body)
        entry = _Entry(artifact=artifact, etag=etag, faults=deque(artifact.faults))
        with self._cond:
            self._entries[path] = entry
            self._released.discard(path)
        return self.url(path)

    # -- statistics ------------------------------------------------------------

    def stats(self, path: str) -> PathStats:
        """A snapshot of what was seen at ``path``; all zeros for a path never requested."""
        with self._cond:
            counters = self._counters.get(path)
            return counters.snapshot() if counters is not None else PathStats()

    def total(self) -> PathStats:
        """Every counter summed (and every header list joined) over all paths."""
        with self._cond:
            snapshots = [c.snapshot() for c in self._counters.values()]
        summed: dict[str, Any] = {}
        for f in dataclasses.fields(PathStats):
            values = [getattr(s, f.name) for s in snapshots]
            summed[f.name] = sum(values, ()) if f.name.endswith("_headers") else sum(values)
        return PathStats(**summed)

    def connections(self) -> int:
        """How many TCP connections were accepted (since start or ``reset_stats``)."""
        with self._cond:
            return self._connections

    def requests(self) -> tuple[RequestRecord, ...]:
        """Every request answered (or being answered) since start or ``reset_stats``, in order.

        Unlike the per-path counters, this says which client asked (its
        User-Agent), for which span, when, and how many bytes each response
        really carried: what a test of several competing processes needs to
        check that no finished artifact was fetched again.
        """
        with self._cond:
            return tuple(request.snapshot() for request in self._requests)

    def reset_stats(self) -> None:
        """Zero every counter, including ``connections()``, and empty the request log."""
        with self._cond:
            self._counters.clear()
            self._connections = 0
            self._requests.clear()

    # -- pausing ---------------------------------------------------------------

    def wait_paused(self, path: str, timeout: float = 10.0, *, count: int = 1) -> bool:
        """Block until ``count`` GETs of ``path`` are paused at ``pause_after``; False on timeout.

        A GET whose client died stays paused until :meth:`release`: ``count``
        tells the next one from those.
        """
        with self._cond:
            return self._cond.wait_for(lambda: self._paused.get(path, 0) >= count, timeout)

    def release(self, path: str) -> None:
        """Let paused, and future, GETs of ``path`` continue past ``pause_after``."""
        with self._cond:
            self._released.add(path)
            self._cond.notify_all()

    # -- used by the handler ---------------------------------------------------

    def _admit(
        self, path: str, *, head: bool, range_header: str | None, if_range: str | None
    ) -> tuple[_Entry | None, Fault | None]:
        """Count a request and take its entry and its fault, if one is pending, atomically."""
        with self._cond:
            counters = self._counters.setdefault(path, _Counters())
            if head:
                counters.head_requests += 1
            else:
                counters.get_requests += 1
            if range_header is not None:
                counters.range_headers.append(range_header)
            if if_range is not None:
                counters.if_range_headers.append(if_range)
            entry = self._entries.get(path)
            if entry is None or not entry.faults:
                return entry, None
            counters.faults_served += 1
            return entry, entry.faults.popleft()

    def _bump(self, path: str, **deltas: int) -> None:
        with self._cond:
            counters = self._counters.setdefault(path, _Counters())
            for name, delta in deltas.items():
                setattr(counters, name, getattr(counters, name) + delta)

    def _log_request(self, path: str, method: str, user_agent: str | None) -> _Request:
        request = _Request(path, method, user_agent, started_at=time.time())
        with self._cond:
            self._requests.append(request)
        return request

    def _answer_request(self, request: _Request, status: int, span: tuple[int, int]) -> None:
        with self._cond:
            request.status = int(status)
            request.start, request.stop = span

    def _end_request(self, request: _Request) -> None:
        with self._cond:
            request.ended_at = time.time()

    def _count_sent(self, path: str, request: _Request, count: int) -> None:
        """Count ``count`` body bytes (negative: a write that failed) for the path and request."""
        with self._cond:
            counters = self._counters.setdefault(path, _Counters())
            counters.body_bytes_sent += count
            request.bytes_sent += count

    def _count_connection(self) -> None:
        with self._cond:
            self._connections += 1

    def _pause(self, path: str) -> bool:
        """Hold a sender until ``release(path)`` or ``stop()``; False if the server is stopping."""
        with self._cond:
            self._paused[path] = self._paused.get(path, 0) + 1
            self._cond.notify_all()
            try:
                self._cond.wait_for(lambda: path in self._released or self._stopping.is_set())
            finally:
                self._paused[path] -= 1
            return not self._stopping.is_set()

    def _wait_stopping(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` for throttling, waking at once if the server stops."""
        if seconds <= 0:
            return self._stopping.is_set()
        return self._stopping.wait(seconds)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve ``--count`` generated artifacts at ``/a/{i}`` until killed."""
    parser = argparse.ArgumentParser(
        prog="python -m docstokg.testing.server",
        description="Serve N generated artifacts at /a/{i}; prints the base URL.",
    )
    parser.add_argument("--count", type=int, default=100, help="number of artifacts")
    parser.add_argument("--size", type=int, default=CHUNK_SIZE, help="bytes per artifact")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)

    def _exit_on_term(signum: int, frame: FrameType | None) -> None:
        sys.exit(0)  # unwinds through the with block, which stops the server

    signal.signal(signal.SIGTERM, _exit_on_term)
    server = ArtifactServer(args.host, args.port)
    for i in range(args.count):
        server.add(f"/a/{i}", Artifact(body=generated_body(f"/a/{i}", args.size)))
    with server:
        print(server.base_url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
