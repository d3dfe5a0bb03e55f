"""Download-layer test helpers shared by the fetch, checkpoint and takeover tests."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from docstokg.download import DownloadLimits, Probe, stream_to_part
from docstokg.errors import DownloadInterrupted
from docstokg.testing.server import ArtifactServer
from tests.runner_kit import BytesReached


def stop_at_pause(
    client: httpx.Client,
    found: Probe,
    part: Path,
    limits: DownloadLimits,
    *,
    server: ArtifactServer,
    path: str,
    pause: int,
) -> DownloadInterrupted:
    """Stream ``found`` into ``part`` and stop once the bytes before the server's pause are written.

    The server holds the body after ``pause`` bytes; the stop is requested once
    all of them are on disk, so the part ends with exactly those bytes (the
    stop is checked before each write).  Returns the interruption raised.
    """
    stop = threading.Event()
    written = BytesReached(pause)
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(
            stream_to_part,
            client,
            found,
            part,
            limits,
            should_stop=stop.is_set,
            on_bytes=written.advance_bytes,
        )
        assert written.reached.wait(timeout=10), f"{written.written:,} of {pause:,} bytes written"
        stop.set()
        server.release(path)
        with pytest.raises(DownloadInterrupted) as interrupted:
            running.result(timeout=30)
    return interrupted.value
