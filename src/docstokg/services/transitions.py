"""State moves, fenced by the lease: forward along the table, or to FAILED."""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum

from docstokg.errors import InvalidTransition, JobNotFound, LeaseLost
from docstokg.ledger import JobRecord, Lease, Ledger, UnitOfWork
from docstokg.states import (
    SUCCESS_STATES,
    JobState,
    as_state,
    as_states,
    is_allowed,
    is_at_or_past,
    origins,
)

# Error texts are kept whole up to this length (plain text, so a cut is harmless).
MAX_ERROR_CHARS = 4_000


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: ``base_s * 2**(attempt-1)``, capped, times 0.5 to 1.

    The jitter spreads out jobs that failed together (a server outage) so
    they do not all come back at the same second.
    """

    base_s: float = 2.0
    cap_s: float = 600.0

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """The wait before the next attempt; at least a server's Retry-After, capped at cap_s."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** max(attempt - 1, 0))
        delay = ceiling * random.uniform(0.5, 1.0)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.cap_s))
        return delay


DEFAULT_BACKOFF = Backoff()


def advance_state(
    ledger: Ledger,
    lease: Lease,
    *,
    to_state: JobState | str,
    allowed_from: Collection[JobState | str] | None = None,
) -> bool:
    """Move the job to ``to_state``; True if it moved.

    States may be given as :class:`JobState` or by name (``"HEAD_DONE"``).
    ``allowed_from`` defaults to every state the transition table moves to
    ``to_state`` from (see :func:`docstokg.states.origins`).

    False if the job already is at or past ``to_state`` on its path: the move
    is being replayed after a crash.  :class:`InvalidTransition` for any other
    move, :class:`LeaseLost` if ``lease`` is not the job's current lease,
    :class:`~docstokg.errors.UnknownState` for a name that is not a state.
    """
    to_state = as_state(to_state)
    allowed_from = origins({to_state}) if allowed_from is None else as_states(allowed_from)
    check_transition(to_state, allowed_from)
    if to_state is JobState.FAILED:
        # Through fail_job's bookkeeping, so a move to FAILED uses an attempt
        # and waits out a backoff like any other failure.
        return _fail(ledger, lease, error="moved to FAILED", retryable=True,
                     backoff=DEFAULT_BACKOFF, allowed_from=allowed_from)  # fmt: skip
    with ledger.unit_of_work() as uow:
        outcome = advance_within(uow, lease, to_state, allowed_from, now=uow.now())
        if outcome is Advance.MOVED:
            uow.commit()
    return outcome.raise_if_invalid(lease, to_state, allowed_from)


class Advance(Enum):
    """What a fenced move found."""

    MOVED = "moved"
    REPLAYED = "replayed"  # the job already is at or past the target
    INVALID = "invalid"  # the job is somewhere the move does not start from

    def raise_if_invalid(
        self, lease: Lease, to_state: JobState, allowed_from: Collection[JobState]
    ) -> bool:
        """True if moved, False if replayed; raises for an invalid move."""
        if self is Advance.INVALID:
            raise InvalidTransition(
                f"job {lease.job_id} is not in any of "
                f"{sorted(state.value for state in allowed_from)}: it cannot move to {to_state}"
            )
        return self is Advance.MOVED


def check_transition(to_state: JobState, allowed_from: Collection[JobState]) -> None:
    """Refuse, before touching anything, a move the transition table does not have."""
    if not allowed_from:
        raise InvalidTransition(f"a move to {to_state} needs at least one state to start from")
    for origin in allowed_from:
        if not is_allowed(origin, to_state):
            raise InvalidTransition(
                f"the transition table has no move {origin} → {to_state}; "
                f"allowed from {origin}: {sorted(s.value for s in _next_states(origin))}"
            )


def advance_within(
    uow: UnitOfWork,
    lease: Lease,
    to_state: JobState,
    allowed_from: Collection[JobState],
    *,
    now: float,
) -> Advance:
    """The fenced move inside ``uow``; raises :class:`LeaseLost` if the lease is gone."""
    if uow.jobs.advance(lease, to_state=to_state, allowed_from=allowed_from, now=now):
        return Advance.MOVED
    job = uow.jobs.get(lease.job_id)
    if job is None:
        raise JobNotFound(lease.job_id)
    if not (uow.jobs.holds(lease, now=now) or finished_under(job, lease)):
        raise LeaseLost(lease.job_id, lease.owner, lease.epoch, f"moving to {to_state}")
    return Advance.REPLAYED if is_at_or_past(job.state, to_state) else Advance.INVALID


def finished_under(job: JobRecord, lease: Lease) -> bool:
    """Did this very lease finish the job?  (Finishing ends the lease but keeps its epoch.)

    Its holder may then replay the last steps and be told they are done; a
    holder of an older epoch is told it lost the job.
    """
    return job.state in SUCCESS_STATES and job.lease_epoch == lease.epoch


def fail_job(
    ledger: Ledger,
    lease: Lease,
    *,
    error: str,
    retryable: bool,
    backoff: Backoff = DEFAULT_BACKOFF,
    retry_after_s: float | None = None,
) -> None:
    """FAILED with ``error``: one attempt used, next try after a backoff, lease released.

    ``retryable=False`` (a 404, a file too large) uses up every attempt at
    once.  ``retry_after_s`` (a server's Retry-After) delays the next try at
    least that long, capped at the backoff's ``cap_s`` so that a hostile
    header cannot park a job for days.  A job whose attempts are used up stays
    FAILED, with its last error, until an operator gives it a new budget; a
    retryable error that used the last attempt is recorded with
    ``"; no attempt left (n of n used)"`` after it (see :func:`out_of_attempts`).
    """
    _fail(ledger, lease, error=error, retryable=retryable, backoff=backoff, allowed_from=None,
          retry_after_s=retry_after_s)  # fmt: skip


def out_of_attempts(error: str, used: int, budget: int) -> str:
    """``error`` as recorded once no attempt is left: its own words may promise a retry."""
    ended = f"; no attempt left ({used} of {budget} used)"
    return error[: MAX_ERROR_CHARS - len(ended)] + ended


def _fail(
    ledger: Ledger,
    lease: Lease,
    *,
    error: str,
    retryable: bool,
    backoff: Backoff,
    allowed_from: Collection[JobState] | None,
    retry_after_s: float | None = None,
) -> bool:
    with ledger.unit_of_work() as uow:
        now = uow.now()
        job = uow.jobs.get(lease.job_id)
        if job is None:
            raise JobNotFound(lease.job_id)
        if finished_under(job, lease):
            raise InvalidTransition(f"job {lease.job_id} already ended as {job.state}")
        if not uow.jobs.holds(lease, now=now):
            raise LeaseLost(lease.job_id, lease.owner, lease.epoch, "failing the job")
        if allowed_from is not None:
            if job.state is JobState.FAILED:
                return False  # a replayed move
            if job.state not in allowed_from:
                raise InvalidTransition(
                    f"job {lease.job_id} is {job.state}, not one of "
                    f"{sorted(state.value for state in allowed_from)}: it cannot move to FAILED"
                )
        attempt = job.attempts + 1
        retry_at = None
        text = error[:MAX_ERROR_CHARS]
        if retryable and attempt < job.max_attempts:
            retry_at = now + backoff.delay_s(attempt, retry_after_s)
        elif retryable:
            text = out_of_attempts(error, attempt, job.max_attempts)
        recorded = uow.jobs.fail(
            lease,
            error=text,
            exhaust=not retryable,
            next_attempt_at=retry_at,
            now=now,
        )
        if recorded is None:
            raise LeaseLost(lease.job_id, lease.owner, lease.epoch, "failing the job")
        uow.commit()
    return True


def _next_states(state: JobState) -> set[JobState]:
    return {target for target in JobState if is_allowed(state, target)}


def record_job_result(
    ledger: Ledger,
    lease: Lease,
    *,
    sha256: str,
    final_path: str,
    size_bytes: int,
    content_type: str | None = None,
) -> None:
    """Record where the job's bytes are (fenced): what reconcile_jobs checks on disk.

    ``final_path`` is absolute, or relative to the run's output folder.
    """
    with ledger.unit_of_work() as uow:
        recorded = uow.jobs.record_result(
            lease,
            sha256=sha256,
            final_path=final_path,
            size_bytes=size_bytes,
            content_type=content_type,
            now=uow.now(),
        )
        if not recorded:
            raise LeaseLost(lease.job_id, lease.owner, lease.epoch, "recording the job's result")
        uow.commit()
