"""A throwaway Redis for the tests: the machine's ``redis-server``, on a free port, no persistence.

Like :mod:`tests.pgcluster`: a real server (Debian's ``redis-server``), in a
temporary directory, listening on 127.0.0.1 only, with neither RDB snapshots
nor an append-only file (a restart forgets everything, which is what the
host-politeness store must survive), removed on stop.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

START_TIMEOUT_S = 30.0


def find_redis_server() -> Path:
    """``redis-server`` from $DOCSTOKG_REDIS_SERVER or PATH, or a message saying how to get it."""
    candidate = os.environ.get("DOCSTOKG_REDIS_SERVER") or shutil.which("redis-server")
    if candidate and Path(candidate).exists():
        return Path(candidate)
    raise RuntimeError(
        "redis-server was not found on PATH; install it (Debian: apt-get install "
        "redis-server, which ./run.sh test does as root) or set DOCSTOKG_REDIS_SERVER"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ThrowawayRedis:
    """Start with :meth:`start`, stop with :meth:`stop` (or use it as a context manager)."""

    def __init__(self, binary: Path | None = None) -> None:
        self.binary = binary or find_redis_server()
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="docstokg-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> ThrowawayRedis:
        command = [
            str(self.binary),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.root),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.root / "redis.log"),
        ]  # fmt: skip
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """Ping until the server answers (the process started, the port is open)."""
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError as exc:
                    assert self._process is not None
                    if self._process.poll() is not None or time.monotonic() > deadline:
                        log = self.root / "redis.log"
                        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                        raise RuntimeError(
                            f"redis-server did not start on {self.url}:\n{tail}"
                        ) from exc
                    time.sleep(0.05)  # polling for the server to come up, not synchronising
        finally:
            client.close()

    def flush(self) -> None:
        """Forget every key: each test starts with every host ready."""
        with redis.Redis.from_url(self.url) as client:
            client.flushall()

    def stop(self) -> None:
        try:
            if self._process is not None and self._process.poll() is None:
                self._process.terminate()
                self._process.wait(timeout=30)
        finally:
            self._process = None
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> ThrowawayRedis:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
