"""Effects recorded exactly once per op_key.

``run_effect`` is the heart of the exactly-once guarantee:

* a recorded success is replayed from the ledger and the effect is not run;
* otherwise the op is marked IN_PROGRESS under the caller's lease and
  committed, the effect runs outside any transaction, and its result is
  committed by a write fenced by the same lease.

What is exactly-once is the *recorded result*.  The effect body itself is
at-least-once: a holder can die (or lose its lease) after the effect ran and
before its result was recorded, and the next holder then runs it again.  So
effects are written to be idempotent or resumable.  A job's chain of steps,
each result committed with the next step's start, is
:class:`~docstokg.services.job_steps.JobSteps`; the functions here are its
one-step forms.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from docstokg.errors import LeaseLost
from docstokg.keys import op_key
from docstokg.ledger import Lease, Ledger, UnitOfWork
from docstokg.services.effect_results import (
    DEFAULT_MAX_RESULT_BYTES,
    EffectResult,
    decoded_result,
)
from docstokg.services.job_steps import JobSteps, LedgerStep, NextClaim
from docstokg.services.leasing import check_owner_and_ttl
from docstokg.services.transitions import MAX_ERROR_CHARS
from docstokg.states import JobState

__all__ = [
    "DEFAULT_MAX_RESULT_BYTES",
    "EffectResult",
    "JobSteps",
    "LedgerStep",
    "NextClaim",
    "claim_and_start",
    "get_effect_result",
    "redo_effect",
    "run_effect",
    "run_ledger_step",
]


def run_effect(
    ledger: Ledger,
    lease: Lease,
    *,
    kind: str,
    opkey: str,
    effect_fn: Callable[[], Mapping[str, Any]],
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    advance_to: JobState | str | None = None,
    allowed_from: Collection[JobState | str] | None = None,
) -> EffectResult:
    """Run ``effect_fn`` once for ``opkey`` under ``lease``, or replay its recorded result.

    An exception from ``effect_fn`` is recorded (status FAILED, with its text)
    and re-raised; the op runs again on the next call.  A result that is not a
    JSON object, or whose JSON exceeds ``max_result_bytes``, is refused before
    it is stored (``TypeError`` / :class:`EffectResultTooLarge`) and the op is
    recorded as FAILED.  Raises :class:`LeaseLost` if the lease is not current
    when the op starts or when its result is recorded.

    With ``advance_to``, the job also moves to that state (from one of
    ``allowed_from``, as :func:`advance_state` would) in the transaction that
    records the result: the step and its transition commit together, so no
    crash can leave one without the other, and it costs one commit less.
    ``allowed_from`` defaults to the transition table's origins of
    ``advance_to``; states may be given by name.  (:class:`JobSteps` saves
    one more commit per step for a job that runs several.)
    """
    steps = JobSteps(ledger, lease, max_result_bytes=max_result_bytes)
    result = steps.effect(
        kind=kind, opkey=opkey, effect_fn=effect_fn, advance_to=advance_to,
        allowed_from=allowed_from,
    )  # fmt: skip
    steps.flush()
    return result


def run_ledger_step(
    ledger: Ledger,
    lease: Lease,
    *,
    kind: str,
    opkey: str,
    write: Callable[[UnitOfWork, float], Mapping[str, Any]],
    advance_to: JobState | str | Callable[[EffectResult], JobState],
    allowed_from: Collection[JobState | str] | None = None,
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
) -> EffectResult:
    """A step whose only effect is a write to the ledger: op, write and move in one transaction.

    See :meth:`JobSteps.ledger_step`.
    """
    return JobSteps(ledger, lease, max_result_bytes=max_result_bytes).ledger_step(
        kind=kind, opkey=opkey, write=write, advance_to=advance_to, allowed_from=allowed_from
    )


def claim_and_start(
    ledger: Ledger,
    *,
    owner: str,
    ttl_s: float,
    first_kind: str,
    among: Collection[str] | None = None,
) -> JobSteps | None:
    """Lease the next job (one of ``among``, if given) and start its first effect with it.

    The claim and the start of the first step commit together, which saves
    a unit of work per job; the op is ``op_key(first_kind, job_id)``.  Returns the
    job's steps (whose first :meth:`JobSteps.effect` with that op key runs
    at once), or None when no job is claimable, as :func:`lease_next_job`.
    A job taken over part-way (its first op already succeeded) starts
    nothing here; its steps replay as usual.
    """
    claim = NextClaim(owner, ttl_s, first_kind)
    check_owner_and_ttl(owner, ttl_s)
    with ledger.unit_of_work() as uow:
        steps = _claim_within(uow, ledger, claim, now=uow.now(), among=among)
        # Committed even when nothing was granted: the claim may have ended a job
        # whose takeover used its last attempt (see JobRepository.claim).
        uow.commit()
    return steps


def _claim_within(
    uow: UnitOfWork, ledger: Ledger, claim: NextClaim, *, now: float, among: Collection[str] | None
) -> JobSteps | None:
    lease = uow.jobs.claim(owner=claim.owner, ttl_s=claim.ttl_s, now=now, among=among)
    if lease is None:
        return None
    opkey = op_key(claim.first_kind, lease.job_id)
    started = uow.ops.start(lease, op_key=opkey, op_type=claim.first_kind, now=now)
    return JobSteps(ledger, lease, started=opkey if started else None)


def redo_effect(ledger: Ledger, lease: Lease, *, opkey: str, reason: str) -> bool:
    """Reopen a recorded success whose work was lost, so the next :func:`run_effect` runs it.

    For a result that no longer holds (the staged file it describes vanished).
    Fenced by ``lease``; False if the op had not succeeded (nothing to redo).
    """
    with ledger.unit_of_work() as uow:
        now = uow.now()
        if not uow.jobs.holds(lease, now=now):
            raise LeaseLost(lease.job_id, lease.owner, lease.epoch, f"reopening op {opkey}")
        reopened = uow.ops.reopen(lease, op_key=opkey, error=reason[:MAX_ERROR_CHARS], now=now)
        uow.commit()
    return reopened


def get_effect_result(ledger: Ledger, opkey: str) -> EffectResult | None:
    """The recorded result of a succeeded op, or None if it has not succeeded."""
    with ledger.unit_of_work(read_only=True) as uow:
        encoded = uow.ops.succeeded_result(opkey)
    return None if encoded is None else decoded_result(encoded)
