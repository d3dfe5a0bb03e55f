"""A loopback HTTP server that holds every download for a while: many downloads in flight.

The fleet benchmark and its short test need a thousand downloads under way at
once, each taking about as long as a slow origin's (``hold_s``, 2 s by
default), without the server becoming the bottleneck.  One asyncio event loop
serves them all: a held response is a sleeping coroutine, not a thread, so a
thousand cost next to nothing.  (:mod:`docstokg.testing.server` scripts
misbehaviour per artifact with a thread per connection; this one does one
thing, at scale.)

It serves ``count`` generated artifacts at ``/a/{i}`` (the same bodies as
``python -m docstokg.testing.server``: ``generated_body(f"/a/{i}", size)``).
HEAD answers at once; GET sends its headers and body after ``hold_s``.  Every
request is counted *before* its response is written, per path and method, and
``GET /_stats`` answers the counts as JSON, so a benchmark in another process
can check that each artifact was fetched once.

Run ``python -m docstokg.testing.slow_server --count N --size BYTES --hold 2``;
it prints its base URL and serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Final

from docstokg.errors import ConfigurationError
from docstokg.testing.server import DEFAULT_LAST_MODIFIED, generated_body, strong_etag

STATS_PATH: Final = "/_stats"
_BACKLOG: Final = 4096  # a thousand clients connecting at once must not be refused
_MAX_HEADER_BYTES: Final = 64 * 1024
_START_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class SlowStats:
    """What the server answered so far."""

    gets: dict[str, int]  # GETs answered (or being held) per path
    heads: dict[str, int]
    max_in_flight: int  # the most GETs held at once
    connections: int  # TCP connections accepted
    first_get_at: float | None = None  # epoch seconds: the first GET arrived
    last_sent_at: float | None = None  # epoch seconds: the last GET's body was written

    def to_json(self) -> dict[str, object]:
        return {
            "gets": self.gets,
            "heads": self.heads,
            "max_in_flight": self.max_in_flight,
            "connections": self.connections,
            "first_get_at": self.first_get_at,
            "last_sent_at": self.last_sent_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> SlowStats:
        gets, heads = data["gets"], data["heads"]
        max_in_flight, connections = data["max_in_flight"], data["connections"]
        if not (
            isinstance(gets, dict)
            and isinstance(heads, dict)
            and isinstance(max_in_flight, int)
            and isinstance(connections, int)
        ):
            raise ConfigurationError(f"{STATS_PATH} answered an unexpected shape: {data!r}")
        first, last = data.get("first_get_at"), data.get("last_sent_at")
        return cls(
            {str(k): int(v) for k, v in gets.items()},
            {str(k): int(v) for k, v in heads.items()},
            max_in_flight,
            connections,
            float(first) if isinstance(first, int | float) else None,
            float(last) if isinstance(last, int | float) else None,
        )


class SlowServer:
    """Serves ``count`` artifacts of ``size`` bytes, holding each GET ``hold_s`` seconds.

    Use it as a context manager: it runs its event loop in a thread of its own.
    """

    def __init__(
        self,
        count: int,
        size: int,
        *,
        hold_s: float = 2.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if count < 1 or size < 0 or hold_s < 0:
            raise ConfigurationError(
                f"SlowServer needs count >= 1, size >= 0 and hold_s >= 0; got count={count}, "
                f"size={size}, hold_s={hold_s}"
            )
        self._bodies = {f"/a/{i}": generated_body(f"/a/{i}", size) for i in range(count)}
        self._etags = {path: strong_etag(body) for path, body in self._bodies.items()}
        self._hold_s = hold_s
        self._host, self._port = host, port
        self._gets: Counter[str] = Counter()
        self._heads: Counter[str] = Counter()
        self._in_flight = 0
        self._max_in_flight = 0
        self._connections = 0
        self._first_get_at: float | None = None
        self._last_sent_at: float | None = None
        self._lock = threading.Lock()  # the counters are read from other threads
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._bound_port: int | None = None
        self._failure: BaseException | None = None

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> SlowServer:
        self._thread = threading.Thread(target=self._run, name="slow-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S) or self._bound_port is None:
            raise ConfigurationError(
                f"the slow server did not start on {self._host}:{self._port}: {self._failure!r}"
            )
        return self

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(_START_TIMEOUT_S)

    def __enter__(self) -> SlowServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._bound_port is None:
            raise ConfigurationError("the slow server is not started; call start() first")
        return f"http://{self._host}:{self._bound_port}"

    def stats(self) -> SlowStats:
        with self._lock:
            return SlowStats(
                dict(self._gets),
                dict(self._heads),
                self._max_in_flight,
                self._connections,
                self._first_get_at,
                self._last_sent_at,
            )

    # -- the event loop -----------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except OSError as exc:  # the port is taken, say: start() reports it
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(
            self._connection, self._host, self._port, backlog=_BACKLOG, limit=_MAX_HEADER_BYTES
        )
        self._bound_port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
            # Held responses are dropped with their connections: the loop ends here.

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self._connections += 1
        try:
            while await self._answer_one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False once the connection should close."""
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target = [*request_line.split(" "), "", ""][:2]
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines if line)
        }
        keep_alive = headers.get("connection", "").lower() != "close"
        path = target.split("?", 1)[0]
        if path == STATS_PATH and method == "GET":
            body = json.dumps(self.stats().to_json()).encode()
            await _send(writer, 200, {"Content-Type": "application/json"}, body, keep_alive)
            return keep_alive
        found = self._bodies.get(path)
        if found is None or method not in ("GET", "HEAD"):
            status = 404 if found is None else 405
            await _send(writer, status, {}, b"", keep_alive)
            return keep_alive
        representation = {
            "Content-Type": "application/octet-stream",
            "ETag": self._etags[path],
            "Last-Modified": DEFAULT_LAST_MODIFIED,
            "Accept-Ranges": "none",
        }
        if method == "HEAD":
            self._count(self._heads, path)
            await _send(writer, 200, representation, found, keep_alive, head=True)
            return keep_alive
        await self._held_get(writer, path, representation, found, keep_alive)
        return keep_alive

    async def _held_get(
        self,
        writer: asyncio.StreamWriter,
        path: str,
        headers: dict[str, str],
        body: bytes,
        keep_alive: bool,
    ) -> None:
        with self._lock:
            self._gets[path] += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            if self._first_get_at is None:
                self._first_get_at = time.time()
        try:
            await asyncio.sleep(self._hold_s)
            await _send(writer, 200, headers, body, keep_alive)
        finally:
            with self._lock:
                self._in_flight -= 1
                self._last_sent_at = time.time()

    def _count(self, counter: Counter[str], path: str) -> None:
        with self._lock:
            counter[path] += 1


async def _send(
    writer: asyncio.StreamWriter,
    status: int,
    headers: dict[str, str],
    body: bytes,
    keep_alive: bool,
    *,
    head: bool = False,
) -> None:
    lines = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if not head:
        writer.write(body)
    await writer.drain()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve ``--count`` artifacts at ``/a/{i}``, each GET held ``--hold`` seconds, until killed."""
    parser = argparse.ArgumentParser(
        prog="python -m docstokg.testing.slow_server",
        description="Serve N generated artifacts at /a/{i}, holding each GET; prints the base URL.",
    )
    parser.add_argument("--count", type=int, default=1000, help="number of artifacts")
    parser.add_argument("--size", type=int, default=4096, help="bytes per artifact")
    parser.add_argument("--hold", type=float, default=2.0, help="seconds each GET is held")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)

    def _exit_on_term(signum: int, frame: FrameType | None) -> None:
        sys.exit(0)  # unwinds through the with block, which stops the server

    signal.signal(signal.SIGTERM, _exit_on_term)
    server = SlowServer(args.count, args.size, hold_s=args.hold, host=args.host, port=args.port)
    with server:
        print(server.base_url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
