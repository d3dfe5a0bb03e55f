"""One job through HEAD → STREAM → FINALIZE → INDEX → DEDUPE.

:class:`~docstokg.download.Fetcher` holds the HTTP and disk work: the bodies of the steps.  Two
pipelines walk them:

* :class:`LedgerPipeline` (the ledger on) runs each step through the
  services' :class:`JobSteps`: HEAD, STREAM and FINALIZE as effects, whose
  recorded results are replayed after a crash instead of being fetched
  again; INDEX and DEDUPE as one-transaction ledger steps.  Each step's
  result commits with the start of the next.  It knows nothing of SQL or HTTP.
* :class:`PlainPipeline` (the ledger off) runs the same bodies straight
  through and remembers nothing beyond this process.

Both put the bytes in the same place, so a run can switch the ledger on
without moving a file.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from enum import StrEnum

from docstokg.download import (
    ByteCounter,
    Fetcher,
    Probe,
    StopCheck,
    Streamed,
    cut_short_by_the_wire,
)
from docstokg.errors import (
    DocstokgError,
    DownloadInterrupted,
    FetchError,
    LeaseLost,
    TransientFetchError,
)
from docstokg.keys import op_key
from docstokg.ledger import Lease, Ledger
from docstokg.services import (
    Backoff,
    JobSteps,
    NextClaim,
    StoredContent,
    advance_state,
    claim_and_start,
    fail_job,
    get_job,
    index_and_dedupe_steps,
    redo_effect,
    release_lease,
)
from docstokg.states import JobState

HEAD, STREAM, FINALIZE = "HEAD", "STREAM", "FINALIZE"
#: The lease epoch of the ledger-off pipeline: its parts keep their old names.
PLAIN_EPOCH = 0
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Target:
    """One artifact to fetch, as the manifest named it."""

    job_id: str
    work_id: str
    artifact_id: str
    url: str
    expected_sha256: str | None = None  # the manifest's checksum: other bytes fail for good


class Outcome(StrEnum):
    """How one pass over a job ended, for this worker."""

    STORED = "stored"  # its bytes are in the store, this job owns them (DEDUPED)
    DUPLICATE = "duplicate"  # its content was already stored by another job
    FAILED = "failed"  # no attempt left (a permanent error, or retries used up)
    RETRY = "retry"  # a transient error: another attempt will come after a backoff
    INTERRUPTED = "interrupted"  # the run is stopping; the job was handed back
    LOST = "lost"  # the lease was lost to another worker, which carries on


@dataclass(frozen=True, slots=True)
class JobOutcome:
    target: Target
    outcome: Outcome
    sha256: str | None = None
    size_bytes: int | None = None
    final_path: str | None = None
    error: str | None = None
    retry_after_s: float | None = None


class LedgerPipeline:
    """A leased job through every step, each recorded in the ledger and replayed after a crash."""

    def __init__(self, ledger: Ledger, fetcher: Fetcher, *, backoff: Backoff) -> None:
        self._ledger = ledger
        self._fetcher = fetcher
        self._backoff = backoff

    def claim(self, *, owner: str, ttl_s: float) -> JobSteps | None:
        """Lease the next job for ``owner``, its HEAD started in the same commit; None if none."""
        return claim_and_start(self._ledger, owner=owner, ttl_s=ttl_s, first_kind=HEAD)

    @staticmethod
    def next_claim(*, owner: str, ttl_s: float) -> NextClaim:
        """What :meth:`process` needs to claim the worker's next job as the current one ends."""
        return NextClaim(owner, ttl_s, HEAD)

    def process(
        self,
        steps: JobSteps,
        *,
        should_stop: StopCheck,
        on_bytes: ByteCounter,
        then_claim: NextClaim | None = None,
    ) -> JobOutcome:
        """The claimed job through every step (see :meth:`claim`).

        With ``then_claim``, a job that ends stored or duplicate also claims
        the worker's next job in its last commit: ``steps.next_job``.
        """
        lease = steps.lease
        target = Target(lease.job_id, lease.work_id, lease.artifact_id, lease.canonical_url)
        try:
            with steps:
                content = self._fetch_and_store(steps, should_stop, on_bytes)
                decided = index_and_dedupe_steps(steps, content, then_claim=then_claim)
        except DownloadInterrupted as exc:
            return self._hand_back(lease, target, str(exc))
        except LeaseLost as exc:
            return JobOutcome(target, Outcome.LOST, error=str(exc))
        except (FetchError, OSError) as exc:
            return self._after_error(lease, target, exc, stopping=should_stop())
        outcome = Outcome.STORED if decided["outcome"] == JobState.DEDUPED else Outcome.DUPLICATE
        return JobOutcome(
            target,
            outcome,
            sha256=content.sha256,
            size_bytes=content.size_bytes,
            final_path=content.final_path,
        )

    def _after_error(
        self, lease: Lease, target: Target, exc: FetchError | OSError, *, stopping: bool
    ) -> JobOutcome:
        """Record a failed attempt, unless the run's stop is what cut the step short."""
        if isinstance(exc, FetchError):
            reason, retryable, retry_after_s = exc.reason, exc.retryable, exc.retry_after_s
        else:  # the disk, not the server: a full disk may have room later
            reason, retryable, retry_after_s = f"{type(exc).__name__}: {exc}", True, None
        if stopping and cut_short_by_the_wire(exc):
            return self._hand_back(lease, target, f"stopped: {reason}")
        failed = self._fail(lease, target, reason, retryable, retry_after_s)
        if failed.outcome is Outcome.FAILED and not retryable:
            # Out of attempts, and recorded so under our lease (a lost lease
            # would be LOST: the new holder may be resuming this very file).
            self._fetcher.store.discard_part(lease.job_id, lease.epoch)
        return failed

    def _hand_back(self, lease: Lease, target: Target, reason: str) -> JobOutcome:
        """Release a job the run stops in: another worker can resume its .part at once."""
        released = release_lease(self._ledger, lease)
        return JobOutcome(target, Outcome.INTERRUPTED if released else Outcome.LOST, error=reason)

    @staticmethod
    def interrupted(lease: Lease, reason: str) -> JobOutcome:
        """The outcome of a job cut short by something outside it (the database), handed back."""
        target = Target(lease.job_id, lease.work_id, lease.artifact_id, lease.canonical_url)
        return JobOutcome(target, Outcome.INTERRUPTED, error=reason)

    def give_up(self, lease: Lease, exc: Exception) -> JobOutcome:
        """A job broke in a way no step expects (a bug): record it as a failure and go on.

        The traceback goes to the log; the job uses an attempt, so a job that
        breaks every time ends FAILED with the error for an operator to see,
        instead of taking its worker, and the run, down.  If even recording
        fails (the database is gone), the original error propagates.
        """
        target = Target(lease.job_id, lease.work_id, lease.artifact_id, lease.canonical_url)
        log.exception("job %s failed unexpectedly", lease.job_id, exc_info=exc)
        try:
            return self._fail(
                lease, target, f"internal error: {type(exc).__name__}: {exc}", True, None
            )
        except DocstokgError as recording:
            raise exc from recording

    def _fetch_and_store(
        self, steps: JobSteps, should_stop: StopCheck, on_bytes: ByteCounter
    ) -> StoredContent:
        """HEAD, STREAM and FINALIZE, each result committed with the start of the next."""
        lease = steps.lease
        job_id, url = lease.job_id, lease.canonical_url
        head = Probe.from_json(
            steps.effect(
                kind=HEAD,
                opkey=op_key(HEAD, job_id),
                effect_fn=lambda: self._fetcher.probe(url).to_json(),
                advance_to=JobState.HEAD_DONE,
                allowed_from={JobState.LEASED},
            )
        )

        def stream() -> dict[str, object]:
            if self._fetcher.can_resume(job_id, head, epoch=lease.epoch):
                advance_state(
                    self._ledger,
                    lease,
                    to_state=JobState.RESUME_OK,
                    allowed_from={JobState.HEAD_DONE},
                )
            # The manifest's URL, which is what newer HEAD results record too: older
            # ones recorded where the redirects led, which may have expired since.
            asked = replace(head, url=url)
            return self._fetcher.stream(
                job_id,
                asked,
                epoch=lease.epoch,
                expected_sha256=lease.expected_sha256,
                should_stop=should_stop,
                on_bytes=on_bytes,
            ).to_json()

        stream_key = op_key(STREAM, job_id)
        streamed = Streamed.from_json(
            steps.effect(
                kind=STREAM,
                opkey=stream_key,
                effect_fn=stream,
                advance_to=JobState.STREAMING,
                allowed_from={JobState.HEAD_DONE, JobState.RESUME_OK},
            )
        )
        try:
            stored = steps.effect(
                kind=FINALIZE,
                opkey=op_key(FINALIZE, job_id),
                effect_fn=lambda: {
                    "final_path": self._fetcher.finalize(job_id, streamed, epoch=lease.epoch)
                },
                advance_to=JobState.FINALIZED,
                allowed_from={JobState.STREAMING},
            )
        except TransientFetchError as exc:
            # The staged bytes STREAM recorded are gone: its success no longer
            # holds, so the next attempt downloads again instead of replaying it.
            redo_effect(self._ledger, lease, opkey=stream_key, reason=exc.reason)
            raise
        return StoredContent(
            sha256=streamed.sha256,
            size_bytes=streamed.size,
            final_path=str(stored["final_path"]),
            content_type=streamed.content_type or head.content_type,
        )

    def _fail(
        self,
        lease: Lease,
        target: Target,
        reason: str,
        retryable: bool,
        retry_after_s: float | None,
    ) -> JobOutcome:
        try:
            fail_job(
                self._ledger,
                lease,
                error=reason,
                retryable=retryable,
                backoff=self._backoff,
                retry_after_s=retry_after_s,
            )
        except LeaseLost as exc:
            return JobOutcome(target, Outcome.LOST, error=str(exc))
        job = get_job(self._ledger, lease.job_id)
        exhausted = job is None or job.exhausted
        return JobOutcome(
            target,
            Outcome.FAILED if exhausted else Outcome.RETRY,
            error=job.last_error if job is not None and job.last_error else reason,
            retry_after_s=retry_after_s,
        )


class PlainPipeline:
    """The same steps with the ledger off: nothing is recorded, nothing is replayed.

    Duplicates are recognised within this process only (by SHA-256); the
    content-addressed store keeps one copy of identical bytes either way.
    """

    def __init__(self, fetcher: Fetcher) -> None:
        self._fetcher = fetcher
        self._owners: dict[str, str] = {}
        self._lock = threading.Lock()

    def process(
        self, target: Target, *, should_stop: StopCheck, on_bytes: ByteCounter
    ) -> JobOutcome:
        try:
            head = self._fetcher.probe(target.url)
            streamed = self._fetcher.stream(
                target.job_id,
                head,
                epoch=PLAIN_EPOCH,
                expected_sha256=target.expected_sha256,
                should_stop=should_stop,
                on_bytes=on_bytes,
            )
            final_path = self._fetcher.finalize(target.job_id, streamed, epoch=PLAIN_EPOCH)
        except DownloadInterrupted as exc:
            return JobOutcome(target, Outcome.INTERRUPTED, error=str(exc))
        except FetchError as exc:
            if should_stop() and cut_short_by_the_wire(exc):
                return JobOutcome(target, Outcome.INTERRUPTED, error=f"stopped: {exc.reason}")
            outcome = Outcome.RETRY if exc.retryable else Outcome.FAILED
            return JobOutcome(target, outcome, error=exc.reason, retry_after_s=exc.retry_after_s)
        except OSError as exc:
            return JobOutcome(target, Outcome.RETRY, error=f"{type(exc).__name__}: {exc}")
        with self._lock:
            owner = self._owners.setdefault(streamed.sha256, target.job_id)
        return JobOutcome(
            target,
            Outcome.STORED if owner == target.job_id else Outcome.DUPLICATE,
            sha256=streamed.sha256,
            size_bytes=streamed.size,
            final_path=final_path,
        )
