"""The bounds every download is held to: read by the fetcher and the part writer alike."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DownloadLimits:
    """The bounds every download is held to (from the run's configuration)."""

    max_bytes: int = 2 * 1024**3
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    max_redirects: int = 5
    chunk_bytes: int = 64 * 1024
    user_agent: str = "docstokg/0.1"
    #: A checkpoint is written every this many bytes: what a SIGKILL can cost at most.
    checkpoint_bytes: int = 1024**2
    #: Fewer than ``min_speed_bytes_s * min_speed_window_s`` bytes over the last
    #: ``min_speed_window_s`` seconds fail the attempt (transient); 0 disables.
    min_speed_bytes_s: float = 1024.0
    min_speed_window_s: float = 60.0
    #: One attempt's stream may not last longer (transient failure); 0 disables.
    attempt_deadline_s: float = 3600.0
