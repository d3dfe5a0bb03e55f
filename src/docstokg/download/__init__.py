"""The download layer: HTTP fetching into staged parts, and the content-addressed store.

It knows nothing of the ledger: the pipelines call :class:`Fetcher` for the
effects of their HEAD, STREAM and FINALIZE steps and record what it returns.
It is the only layer that speaks httpx.
"""

from docstokg.download.fetch import (
    DownloadLimits,
    Probe,
    Streamed,
    can_resume,
    make_client,
    pick_validator,
    probe,
    resume_point,
    resume_point_among,
    stream_to_part,
)
from docstokg.download.fetcher import ByteCounter, Fetcher, cut_short_by_the_wire
from docstokg.download.handover import take_over_finished
from docstokg.download.http_errors import classify_status, parse_retry_after
from docstokg.download.part_writer import Checkpoint
from docstokg.download.politeness import (
    CooldownStore,
    HostGate,
    HostRules,
    InProcessCooldownStore,
    StopCheck,
    open_cooldown_store,
)
from docstokg.download.store import ArtifactStore, regular_size
from docstokg.errors import PartLost
from docstokg.staging import checkpoint_for

__all__ = [
    "ArtifactStore",
    "ByteCounter",
    "Checkpoint",
    "CooldownStore",
    "DownloadLimits",
    "Fetcher",
    "HostGate",
    "HostRules",
    "InProcessCooldownStore",
    "PartLost",
    "Probe",
    "StopCheck",
    "Streamed",
    "can_resume",
    "checkpoint_for",
    "classify_status",
    "cut_short_by_the_wire",
    "make_client",
    "open_cooldown_store",
    "parse_retry_after",
    "pick_validator",
    "probe",
    "regular_size",
    "resume_point",
    "resume_point_among",
    "stream_to_part",
    "take_over_finished",
]
