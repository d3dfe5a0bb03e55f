"""The HTTP and disk work of a job: the bodies of the pipelines' steps.

Both pipelines (ledger on and off) walk the same :class:`Fetcher`, so a run
can switch the ledger on without moving a file.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from docstokg.download.fetch import (
    DownloadLimits,
    Probe,
    Streamed,
    probe,
    resume_point_among,
    stream_to_part,
)
from docstokg.download.handover import take_over_finished
from docstokg.download.politeness import UNGATED, HostGate, StopCheck
from docstokg.download.store import ArtifactStore, regular_size
from docstokg.errors import FetchError

ByteCounter = Callable[[int], None]


class Fetcher:
    """The HTTP and disk work of a job, shared by both pipelines (and all workers).

    ``epoch`` is the lease epoch of the job's holder (0 with the ledger off):
    each holder writes a ``.part`` of its own, so a holder paused past its
    lease writes nothing another reads (see :mod:`docstokg.download.handover`).

    ``politeness`` is the fleet's :class:`~docstokg.download.politeness.HostGate`:
    every request waits for its host's turn there (None: requests go out at
    once, for tests and tools that fetch alone).  The run builds it from the
    configuration and closes it.
    """

    def __init__(
        self,
        client: httpx.Client,
        store: ArtifactStore,
        limits: DownloadLimits,
        *,
        politeness: HostGate | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.limits = limits
        self.politeness = politeness
        self._gate = UNGATED if politeness is None else politeness

    def probe(self, url: str, *, should_stop: StopCheck | None = None) -> Probe:
        """HEAD (or an unread GET); ``should_stop`` ends a wait for the host's turn."""
        return probe(self.client, url, self.limits, gate=self._gate, should_stop=should_stop)

    def can_resume(self, job_id: str, head: Probe, *, epoch: int) -> bool:
        """Would STREAM continue a ``.part`` its checkpoint vouches for (Range + If-Range)?

        Its own, or one an earlier holder of the job left.
        """
        parts = [self.store.part_path(job_id, epoch), *self.store.earlier_parts(job_id, epoch)]
        return resume_point_among(parts, head) > 0

    def stream(
        self,
        job_id: str,
        head: Probe,
        *,
        epoch: int,
        expected_sha256: str | None,
        should_stop: StopCheck,
        on_bytes: ByteCounter,
    ) -> Streamed:
        """Download into the holder's ``.part``, held to the manifest's checksum if it gave one."""
        return stream_to_part(
            self.client,
            head,
            self.store.part_path(job_id, epoch),
            self.limits,
            should_stop=should_stop,
            on_bytes=on_bytes,
            expected_sha256=expected_sha256,
            earlier=self.store.earlier_parts(job_id, epoch),
            gate=self._gate,
        )

    def finalize(self, job_id: str, streamed: Streamed, *, epoch: int) -> str:
        """Store the holder's own ``.part``; then no earlier holder's part is of any use.

        A STREAM replayed from a predecessor's record left its bytes in that
        predecessor's part: they are taken over first.
        """
        part = self.store.part_path(job_id, epoch)
        if regular_size(part) is None:
            take_over_finished(
                part,
                self.store.earlier_parts(job_id, epoch),
                sha256=streamed.sha256,
                size=streamed.size,
            )
        relpath = self.store.finalize(part, sha256=streamed.sha256, size=streamed.size)
        self.store.discard_earlier(job_id, epoch)
        return relpath


def cut_short_by_the_wire(exc: BaseException) -> bool:
    """Whether a failure came from the connection (a read that timed out, a peer gone).

    Seen while the run is stopping, such a failure is the stop's doing: the
    stop is noticed between chunks only, so a read that stalls waits out its
    timeout first.  It is an interruption then, not a failed attempt; an
    answer from the server (a 503, a 429) is not, and keeps its backoff.
    """
    return isinstance(exc, FetchError) and isinstance(exc.__cause__, httpx.TransportError)
