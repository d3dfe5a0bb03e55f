"""The download layer: HTTP fetching into staged parts, and the content-addressed store.

It knows nothing of the ledger: the pipeline calls these functions as the
effects of its HEAD, STREAM and FINALIZE steps and records what they return.
"""

from docstokg.download.fetch import (
    DownloadLimits,
    Probe,
    Streamed,
    can_resume,
    make_client,
    probe,
    stream_to_part,
)
from docstokg.download.http_errors import classify_status, parse_retry_after
from docstokg.download.store import ArtifactStore

__all__ = [
    "ArtifactStore",
    "DownloadLimits",
    "Probe",
    "Streamed",
    "can_resume",
    "classify_status",
    "make_client",
    "parse_retry_after",
    "probe",
    "stream_to_part",
]
