"""One job through the steps of :data:`docstokg.run.steps.PIPELINE`, with the ledger or without.

Two pipelines walk the same table of steps, whose bodies do the HTTP and
disk work through the :class:`~docstokg.download.Fetcher`:

* :class:`LedgerPipeline` (the ledger on) runs each step through the
  services' :class:`JobSteps`: effects, whose recorded results are replayed
  after a crash instead of being fetched again, and ledger steps, which
  commit with their op and move in one transaction.  Each step's result
  commits with the start of the next.  It knows nothing of SQL or HTTP.
* :class:`PlainPipeline` (the ledger off) runs the same bodies straight
  through and remembers nothing beyond this process.

Both put the bytes in the same place, so a run can switch the ledger on
without moving a file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Any

from docstokg.download import ByteCounter, Fetcher, StopCheck, cut_short_by_the_wire
from docstokg.errors import (
    DocstokgError,
    DownloadInterrupted,
    FetchError,
    LeaseLost,
)
from docstokg.keys import op_key
from docstokg.ledger import Lease, Ledger
from docstokg.run.steps import PIPELINE, JobContext, PlainDedupe, Step, StepResult
from docstokg.services import (
    Backoff,
    JobSteps,
    LedgerStep,
    NextClaim,
    advance_state,
    claim_and_start,
    fail_job,
    get_job,
    redo_effect,
    release_lease,
)
from docstokg.services.content import deciding
from docstokg.states import JobState

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

    def __init__(
        self,
        ledger: Ledger,
        fetcher: Fetcher,
        *,
        backoff: Backoff,
        steps: Sequence[Step] = PIPELINE,
    ) -> None:
        self._ledger = ledger
        self._fetcher = fetcher
        self._backoff = backoff
        self._table = tuple(steps)

    def claim(
        self, *, owner: str, ttl_s: float, among: Collection[str] | None = None
    ) -> JobSteps | None:
        """Lease a job for ``owner`` (one of ``among``), its first step started with it; or None."""
        return claim_and_start(
            self._ledger, owner=owner, ttl_s=ttl_s, first_kind=self._first, among=among
        )

    def next_claim(
        self, *, owner: str, ttl_s: float, among: Callable[[], Collection[str]] | None = None
    ) -> NextClaim:
        """What :meth:`process` needs to claim the worker's next job as the current one ends."""
        return NextClaim(owner, ttl_s, self._first, among)

    @property
    def _first(self) -> str:
        return self._table[0].kind

    def process(
        self,
        steps: JobSteps,
        *,
        should_stop: StopCheck,
        on_bytes: ByteCounter,
        then_claim: NextClaim | None = None,
    ) -> JobOutcome:
        """The claimed job through every step of the table (see :meth:`claim`).

        With ``then_claim``, a job that ends stored or duplicate also claims
        the worker's next job in its last commit: ``steps.next_job``.
        """
        lease = steps.lease
        target = Target(lease.job_id, lease.work_id, lease.artifact_id, lease.canonical_url)
        job = JobContext(
            job_id=lease.job_id,
            url=lease.canonical_url,
            epoch=lease.epoch,
            expected_sha256=lease.expected_sha256,
            fetcher=self._fetcher,
            should_stop=should_stop,
            on_bytes=on_bytes,
            mark_resumable=lambda: self._mark_resumable(lease),
            redo=lambda kind, reason: self._redo(lease, kind, reason),
            lease=lease,
        )
        try:
            with steps:
                ended = self._walk(steps, job, then_claim)
        except DownloadInterrupted as exc:
            return self._hand_back(lease, target, str(exc))
        except LeaseLost as exc:
            return JobOutcome(target, Outcome.LOST, error=str(exc))
        except (FetchError, OSError) as exc:
            return self._after_error(lease, target, exc, stopping=should_stop())
        return _ended(target, job, ended)

    def _walk(self, steps: JobSteps, job: JobContext, then_claim: NextClaim | None) -> JobState:
        """Each step in turn; consecutive ledger steps share a unit of work.  The state reached."""
        reached = JobState.LEASED
        batch: list[Step] = []
        for step in self._table:
            if step.effect is not None:
                if batch:
                    reached = self._ledger_steps(steps, job, batch, None)
                    batch = []
                result = steps.effect(
                    kind=step.kind,
                    opkey=op_key(step.kind, job.job_id),
                    effect_fn=partial(step.effect, job),
                    advance_to=step.reached({}),
                    allowed_from=step.allowed_from,
                )
                job.results[step.kind] = result
                reached = step.reached(result)
            else:
                batch.append(step)
        if batch:
            reached = self._ledger_steps(steps, job, batch, then_claim)
        return reached

    def _ledger_steps(
        self, steps: JobSteps, job: JobContext, batch: list[Step], then_claim: NextClaim | None
    ) -> JobState:
        """Ledger steps in one unit of work (decided again if another job won the content)."""
        lease = job.held()
        ledger_steps = [
            LedgerStep(
                step.kind,
                op_key(step.kind, lease.job_id),
                _write_of(step, job),
                step.target,
                step.allowed_from,
            )
            for step in batch
        ]
        results = deciding(lambda: steps.ledger_steps(*ledger_steps, then_claim=then_claim))
        for step, result in zip(batch, results, strict=True):
            job.results[step.kind] = result
        return batch[-1].reached(results[-1])

    def _mark_resumable(self, lease: Lease) -> None:
        advance_state(self._ledger, lease, to_state=JobState.RESUME_OK)

    def _redo(self, lease: Lease, kind: str, reason: str) -> None:
        redo_effect(self._ledger, lease, opkey=op_key(kind, lease.job_id), reason=reason)

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

    def __init__(self, fetcher: Fetcher, *, steps: Sequence[Step] = PIPELINE) -> None:
        self._fetcher = fetcher
        self._table = tuple(steps)
        self._dedupe = PlainDedupe()

    def process(
        self, target: Target, *, should_stop: StopCheck, on_bytes: ByteCounter
    ) -> JobOutcome:
        job = JobContext(
            job_id=target.job_id,
            url=target.url,
            epoch=PLAIN_EPOCH,
            expected_sha256=target.expected_sha256,
            fetcher=self._fetcher,
            should_stop=should_stop,
            on_bytes=on_bytes,
            mark_resumable=_nothing,
            redo=lambda kind, reason: None,
        )
        reached = JobState.LEASED
        try:
            for step in self._table:
                result = (
                    step.effect(job) if step.effect is not None else _plain(step, job, self._dedupe)
                )
                job.results[step.kind] = result
                reached = step.reached(result)
        except DownloadInterrupted as exc:
            return JobOutcome(target, Outcome.INTERRUPTED, error=str(exc))
        except FetchError as exc:
            if should_stop() and cut_short_by_the_wire(exc):
                return JobOutcome(target, Outcome.INTERRUPTED, error=f"stopped: {exc.reason}")
            outcome = Outcome.RETRY if exc.retryable else Outcome.FAILED
            return JobOutcome(target, outcome, error=exc.reason, retry_after_s=exc.retry_after_s)
        except OSError as exc:
            return JobOutcome(target, Outcome.RETRY, error=f"{type(exc).__name__}: {exc}")
        return _ended(target, job, reached)


def _write_of(step: Step, job: JobContext) -> Callable[[Any, float], Mapping[str, Any]]:
    assert step.write is not None
    return step.write(job)


def _plain(step: Step, job: JobContext, dedupe: PlainDedupe) -> StepResult:
    """A step's body with the ledger off: the effect itself, or the ledger step's stand-in."""
    if step.effect is not None:
        return step.effect(job)
    assert step.plain is not None
    return step.plain(job, dedupe)


def _nothing() -> None:
    """Marking a part resumable has no record to make with the ledger off."""


def _ended(target: Target, job: JobContext, reached: JobState) -> JobOutcome:
    """The outcome of a job that walked every step: stored, or a duplicate of a stored one."""
    content = job.content()
    return JobOutcome(
        target,
        Outcome.STORED if reached is JobState.DEDUPED else Outcome.DUPLICATE,
        sha256=content.sha256,
        size_bytes=content.size_bytes,
        final_path=content.final_path,
    )
