"""Effects recorded exactly once per op_key.

``run_effect`` is the heart of the exactly-once guarantee:

* a recorded success is replayed from the ledger and the effect is not run;
* otherwise the op is marked IN_PROGRESS under the caller's lease and
  committed, the effect runs outside any transaction, and its result is
  committed by a write fenced by the same lease.

What is exactly-once is the *recorded result*.  The effect body itself is
at-least-once: a holder can die (or lose its lease) after the effect ran and
before its result was recorded, and the next holder then runs it again.  So
effects are written to be idempotent or resumable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from docstokg.errors import DocstokgError, EffectResultTooLarge, LeaseLost, LedgerError
from docstokg.keys import canonical_text, op_key
from docstokg.ledger import Lease, Ledger, UnitOfWork
from docstokg.ledger.models import OP_SUCCEEDED
from docstokg.ledger.records import OpWrite
from docstokg.services.leasing import check_owner_and_ttl
from docstokg.services.transitions import (
    MAX_ERROR_CHARS,
    Advance,
    advance_within,
    check_transition,
    finished_under,
)
from docstokg.states import SUCCESS_STATES, JobState

DEFAULT_MAX_RESULT_BYTES = 64 * 1024

EffectResult = dict[str, Any]


def run_effect(
    ledger: Ledger,
    lease: Lease,
    *,
    kind: str,
    opkey: str,
    effect_fn: Callable[[], Mapping[str, Any]],
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    advance_to: JobState | None = None,
    allowed_from: Collection[JobState] = (),
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
    (:class:`JobSteps` saves one more per step for a job that runs several.)
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
    advance_to: JobState | Callable[[EffectResult], JobState],
    allowed_from: Collection[JobState],
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
) -> EffectResult:
    """A step whose only effect is a write to the ledger: op, write and move in one transaction.

    See :meth:`JobSteps.ledger_step`.
    """
    return JobSteps(ledger, lease, max_result_bytes=max_result_bytes).ledger_step(
        kind=kind, opkey=opkey, write=write, advance_to=advance_to, allowed_from=allowed_from
    )


Target = JobState | Callable[[EffectResult], JobState]


@dataclass(frozen=True, slots=True)
class LedgerStep:
    """A step whose only effect is a write to the ledger (see :meth:`JobSteps.ledger_step`).

    ``write`` must do nothing but read and write through the unit of work it
    is given: when the step turns out to be recorded already, its writes are
    rolled back and the recorded result is replayed (so it may be called for
    a step that is then replayed; nothing it wrote remains).
    """

    kind: str
    opkey: str
    write: Callable[[UnitOfWork, float], Mapping[str, Any]]
    advance_to: Target
    allowed_from: frozenset[JobState]


@dataclass(frozen=True, slots=True)
class _Replay:
    """A step that was already recorded: its result, and how to refuse its move if invalid."""

    result: EffectResult
    invalid: Callable[[], None] | None


@dataclass(frozen=True, slots=True)
class _Ran:
    """An effect that ran and whose result waits for the next commit."""

    kind: str
    opkey: str
    encoded: str
    advance_to: JobState | None
    allowed_from: Collection[JobState]


class JobSteps:
    """The steps of one leased job, each result committed with the start of the next step.

    A job is a chain of effects.  Run one at a time, each costs two commits:
    one to start its op, one to record its result and move the job.  Here the
    record of one step joins the start of the next, so a chain of n effects
    costs n + 1 commits instead of 2n, and fewer turns at SQLite's single
    write lock.  Nothing is weakened: the next effect runs only after the
    previous result is committed, and a crash between an effect and that
    commit leaves its op IN_PROGRESS, exactly as a crash between an effect and
    its own commit does: the next holder runs it again.

    In the usual case (nothing recorded before, the lease current) that
    commit is two writes: one upsert records the waiting op and starts the
    next (:meth:`OpRepository.record`), one moves the job.  Whenever that
    does not take in full, the commit is rolled back and made op by op, which
    tells replays, takeovers, invalid moves and lost leases apart.

    Call :meth:`flush` (or leave the ``with`` block) after the last step.
    """

    def __init__(
        self,
        ledger: Ledger,
        lease: Lease,
        *,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        started: str | None = None,
    ) -> None:
        self._ledger = ledger
        self._lease = lease
        self._max_result_bytes = max_result_bytes
        self._ran: _Ran | None = None
        # An op already started under this lease (with the claim: see
        # claim_and_start and NextClaim): its effect runs at once, without a
        # unit of work of its own.
        self._started = started
        self._next_job: JobSteps | None = None

    @property
    def lease(self) -> Lease:
        return self._lease

    def __enter__(self) -> JobSteps:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.flush()
        elif self._ran is not None:
            # Keep what the last effect did if the lease still allows it; the
            # error already on its way is the one the caller must see.
            with suppress(DocstokgError):
                self.flush()

    def effect(
        self,
        *,
        kind: str,
        opkey: str,
        effect_fn: Callable[[], Mapping[str, Any]],
        advance_to: JobState | None = None,
        allowed_from: Collection[JobState] = (),
    ) -> EffectResult:
        """Run ``effect_fn`` once for ``opkey``, or replay its recorded result (as run_effect)."""
        lease = self._lease
        if advance_to is not None:
            check_transition(advance_to, allowed_from)
        if self._started == opkey and self._ran is None:
            self._started = None  # started with the claim: nothing to commit first
        elif not self._record_and_start_at_once(kind, opkey):
            with self._ledger.unit_of_work() as uow:
                now = uow.now()
                self._record_ran(uow, now)
                replay = self._start(uow, kind, opkey, advance_to, allowed_from, now=now)
                uow.commit()
                self._ran = None
            if replay is not None:
                if replay.invalid is not None:
                    replay.invalid()
                return replay.result

        try:
            result = effect_fn()
            encoded, decoded = _recorded(result, kind, self._max_result_bytes)
        except Exception as exc:
            _record_failure(self._ledger, lease, opkey, f"{type(exc).__name__}: {exc}")
            raise
        self._ran = _Ran(kind, opkey, encoded, advance_to, allowed_from)
        return decoded  # what every replay will return, too

    def _record_and_start_at_once(self, kind: str, opkey: str) -> bool:
        """The usual case of the commit before an effect: the last result and this start as one.

        The waiting effect's op is finished and the next op inserted by one
        write, and the job makes the waiting move; False (nothing written)
        unless all of it took, and the caller then goes step by step, which
        tells replays, takeovers, invalid moves and lost leases apart.
        """
        ran, lease = self._ran, self._lease
        if ran is None or ran.opkey == opkey or self._started is not None:
            return False
        if ran.advance_to in SUCCESS_STATES:
            return False  # the move ends the lease: no op may start after it
        with self._ledger.unit_of_work() as uow:
            now = uow.now()
            writes = [
                OpWrite.finish(lease, ran.opkey, ran.kind, ran.encoded),
                OpWrite.start(lease, opkey, kind),
            ]
            if not uow.ops.record(writes, now=now):
                return False
            if ran.advance_to is not None and not uow.jobs.advance(
                lease, to_state=ran.advance_to, allowed_from=ran.allowed_from, now=now
            ):
                return False
            uow.commit()
            self._ran = None
        return True

    def ledger_step(
        self,
        *,
        kind: str,
        opkey: str,
        write: Callable[[UnitOfWork, float], Mapping[str, Any]],
        advance_to: Target,
        allowed_from: Collection[JobState],
    ) -> EffectResult:
        """A step whose only effect is a write to the ledger: op, write and move in one transaction.

        ``write(uow, now)`` runs inside the unit of work and returns the step's
        result; ``advance_to`` is the state to move to, or a function of the
        result choosing it.  Because nothing leaves the database, the step is
        exactly-once outright (not merely at-least-once like an effect):
        either the op, its write and the move all commit, or none does.  A
        recorded success is replayed, and its move replayed too.
        """
        step = LedgerStep(kind, opkey, write, advance_to, frozenset(allowed_from))
        [result] = self.ledger_steps(step)
        return result

    def ledger_steps(
        self, *steps: LedgerStep, then_claim: NextClaim | None = None
    ) -> list[EffectResult]:
        """Several ledger steps, one after the other, in one unit of work: all commit or none.

        Each is as :meth:`ledger_step`; a later one sees what the earlier ones
        wrote.  The last effect's waiting result commits with them.  With
        ``then_claim``, the same unit of work also claims the worker's next
        job once the steps are recorded: see :attr:`next_job`.

        The usual case, steps never run before, takes the short way: each op
        is inserted already SUCCEEDED, and the job makes its whole move (from
        where the waiting effect left it to the last step's state) in one
        write.  Inside one transaction nobody can see the states in between,
        so the rows that commit are the ones the long way writes.  Anything
        else (a step already recorded, a lease in doubt, a move that does not
        take) rolls the short way back and takes the long way, step by step,
        which tells replays, invalid moves and lost leases apart.
        """
        if then_claim is not None:
            check_owner_and_ttl(then_claim.owner, then_claim.ttl_s)
        self._next_job = None
        done = self._steps_at_once(steps, then_claim) if self._chained(steps) else None
        if done is None:
            done = self._steps_one_by_one(steps, then_claim)
        results, self._next_job = done  # the next job only once its claim is committed
        return results

    def _chained(self, steps: tuple[LedgerStep, ...]) -> bool:
        """Can the moves of the waiting effect and ``steps`` be made as one?"""
        if not steps or self._started is not None:
            return False
        reached = self._ran.advance_to if self._ran is not None else None
        for step in steps:
            if reached is not None and reached not in step.allowed_from:
                return False
            reached = step.advance_to if isinstance(step.advance_to, JobState) else None
        return True

    def _steps_at_once(
        self, steps: tuple[LedgerStep, ...], then_claim: NextClaim | None
    ) -> tuple[list[EffectResult], JobSteps | None] | None:
        """The short way of :meth:`ledger_steps`; None (nothing written) if it does not apply."""
        lease, ran = self._lease, self._ran
        moves_from = steps[0].allowed_from
        writes: list[OpWrite] = []
        results: list[EffectResult] = []
        with self._ledger.unit_of_work() as uow:
            now = uow.now()
            if ran is not None:
                writes.append(OpWrite.finish(lease, ran.opkey, ran.kind, ran.encoded))
                if ran.advance_to is not None:
                    moves_from = frozenset(ran.allowed_from)
            target: JobState | None = None
            for step in steps:
                if target is not None and target not in step.allowed_from:
                    return None  # a step chose a state the next does not start from
                try:
                    encoded, decoded = _recorded(
                        step.write(uow, now), step.kind, self._max_result_bytes
                    )
                    target = (
                        step.advance_to(decoded) if callable(step.advance_to) else step.advance_to
                    )
                    check_transition(target, step.allowed_from)
                except Exception:  # noqa: BLE001 - not lost: the long way decides, and raises it
                    # The step may be recorded already (the long way replays it
                    # without writing), or the job finished under this lease.
                    return None
                writes.append(OpWrite.done(lease, step.opkey, step.kind, encoded))
                results.append(decoded)
            assert target is not None  # steps is not empty (see _chained)
            following, first_key = None, None
            if then_claim is not None:
                following = uow.jobs.claim(owner=then_claim.owner, ttl_s=then_claim.ttl_s, now=now)
                if following is not None:
                    first_key = op_key(then_claim.first_kind, following.job_id)
                    writes.append(OpWrite.start(following, first_key, then_claim.first_kind))
            if not uow.ops.record(writes, now=now):
                return None  # a step recorded before (a replay), a lease in doubt, a takeover
            if not uow.jobs.advance(lease, to_state=target, allowed_from=moves_from, now=now):
                return None
            uow.commit()
            self._ran = None
        if following is None:
            return results, None
        return results, JobSteps(self._ledger, following, started=first_key)

    def _steps_one_by_one(
        self, steps: tuple[LedgerStep, ...], then_claim: NextClaim | None
    ) -> tuple[list[EffectResult], JobSteps | None]:
        """The long way of :meth:`ledger_steps`: each op started, recorded and moved on its own."""
        lease = self._lease
        results: list[EffectResult] = []
        claimed: JobSteps | None = None
        with self._ledger.unit_of_work() as uow:
            now = uow.now()
            self._record_ran(uow, now)
            for step in steps:
                replay = self._start(uow, step.kind, step.opkey, step.advance_to,
                                     step.allowed_from, now=now)  # fmt: skip
                if replay is not None:
                    results.append(replay.result)
                    if replay.invalid is not None:  # keep what is recorded, then refuse the move
                        uow.commit()
                        self._ran = None
                        replay.invalid()
                    continue
                encoded, decoded = _recorded(
                    step.write(uow, now), step.kind, self._max_result_bytes
                )
                target = step.advance_to(decoded) if callable(step.advance_to) else step.advance_to
                check_transition(target, step.allowed_from)
                if not uow.ops.succeed(lease, op_key=step.opkey, result_json=encoded, now=now):
                    raise _lost(lease, f"recording the {step.kind} result")
                advance_within(uow, lease, target, step.allowed_from, now=now).raise_if_invalid(
                    lease, target, step.allowed_from
                )
                results.append(decoded)
            if then_claim is not None:
                claimed = _claim_within(uow, self._ledger, then_claim, now=now)
            uow.commit()
            self._ran = None
        return results, claimed

    @property
    def next_job(self) -> JobSteps | None:
        """The job claimed by the last :meth:`ledger_steps` with ``then_claim``, if one was."""
        return self._next_job

    def _start(
        self,
        uow: UnitOfWork,
        kind: str,
        opkey: str,
        advance_to: Target | None,
        allowed_from: Collection[JobState],
        *,
        now: float,
    ) -> _Replay | None:
        """Start ``opkey`` in ``uow``: None if it started, else its recorded result (replayed)."""
        lease = self._lease
        if self._started == opkey:  # started with the claim (see claim_and_start)
            self._started = None
            return None
        if uow.ops.start(lease, op_key=opkey, op_type=kind, now=now):
            return None
        replayed, outcome = _replay_within(uow, lease, opkey, advance_to, allowed_from, now=now)
        if outcome is not Advance.INVALID or advance_to is None:
            return _Replay(replayed, None)
        target = advance_to(replayed) if callable(advance_to) else advance_to

        def refuse() -> None:
            outcome.raise_if_invalid(lease, target, allowed_from)

        return _Replay(replayed, refuse)

    def flush(self) -> None:
        """Commit the last effect's result (and its move), if one is waiting."""
        if self._ran is None:
            return
        with self._ledger.unit_of_work() as uow:
            self._record_ran(uow, uow.now())
            uow.commit()
            self._ran = None

    def _record_ran(self, uow: UnitOfWork, now: float) -> None:
        """Record the waiting result; an invalid move still keeps it (the effect did run)."""
        ran, lease = self._ran, self._lease
        if ran is None:
            return
        if not uow.ops.succeed(lease, op_key=ran.opkey, result_json=ran.encoded, now=now):
            self._ran = None
            raise LeaseLost(
                lease.job_id, lease.owner, lease.epoch, f"recording the {ran.kind} result"
            )
        if ran.advance_to is None:
            return
        outcome = advance_within(uow, lease, ran.advance_to, ran.allowed_from, now=now)
        if outcome is Advance.INVALID:
            uow.commit()
            self._ran = None
            outcome.raise_if_invalid(lease, ran.advance_to, ran.allowed_from)


@dataclass(frozen=True, slots=True)
class NextClaim:
    """A claim to make at the end of a job's last unit of work (see :meth:`JobSteps.ledger_steps`).

    The job's worker claims its next job, and starts that job's first
    effect (op key ``op_key(first_kind, job_id)``), in the transaction that ends the
    current one: one unit of work less per job.
    """

    owner: str
    ttl_s: float
    first_kind: str


def claim_and_start(
    ledger: Ledger,
    *,
    owner: str,
    ttl_s: float,
    first_kind: str,
) -> JobSteps | None:
    """Lease the next job and start its first effect in the same unit of work.

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
        steps = _claim_within(uow, ledger, claim, now=uow.now())
        # Committed even when nothing was granted: the claim may have ended a job
        # whose takeover used its last attempt (see JobRepository.claim).
        uow.commit()
    return steps


def _claim_within(
    uow: UnitOfWork, ledger: Ledger, claim: NextClaim, *, now: float
) -> JobSteps | None:
    lease = uow.jobs.claim(owner=claim.owner, ttl_s=claim.ttl_s, now=now)
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


def _replay_within(
    uow: UnitOfWork,
    lease: Lease,
    opkey: str,
    advance_to: Target | None,
    allowed_from: Collection[JobState],
    *,
    now: float,
) -> tuple[EffectResult, Advance | None]:
    """The op could not start: its recorded success, and the replayed move that went with it."""
    job = uow.jobs.get(lease.job_id)
    may_read = uow.jobs.holds(lease, now=now) or (job is not None and finished_under(job, lease))
    replayed = _replay(uow.ops.get(opkey), may_read, lease, opkey)
    if advance_to is None:
        return replayed, None
    target = advance_to(replayed) if callable(advance_to) else advance_to
    return replayed, advance_within(uow, lease, target, allowed_from, now=now)


def _lost(lease: Lease, doing: str) -> LeaseLost:
    return LeaseLost(lease.job_id, lease.owner, lease.epoch, doing)


def get_effect_result(ledger: Ledger, opkey: str) -> EffectResult | None:
    """The recorded result of a succeeded op, or None if it has not succeeded."""
    with ledger.unit_of_work(read_only=True) as uow:
        encoded = uow.ops.succeeded_result(opkey)
    if encoded is None:
        return None
    decoded: EffectResult = json.loads(encoded)
    return decoded


def _replay(op: Any, holds_lease: bool, lease: Lease, opkey: str) -> EffectResult:
    if not holds_lease:
        raise LeaseLost(lease.job_id, lease.owner, lease.epoch, f"running op {opkey}")
    if op is None or op.job_id != lease.job_id:
        owner = "no job" if op is None else f"job {op.job_id}"
        raise LedgerError(f"op_key {opkey} belongs to {owner}, not to job {lease.job_id}")
    if op.status != OP_SUCCEEDED or op.result_json is None:
        raise LedgerError(f"op {opkey} could neither be started nor replayed (status {op.status})")
    decoded: EffectResult = json.loads(op.result_json)
    return decoded


def _recorded(result: object, kind: str, limit: int) -> tuple[str, EffectResult]:
    """``result`` as the ledger records it (JSON text), and as every replay returns it."""
    if not isinstance(result, Mapping):
        raise TypeError(
            f"the {kind} effect returned {type(result).__name__}, not a dict; effects "
            "return a JSON object describing what they did"
        )
    try:
        encoded = canonical_text(dict(result))  # sorted keys, no spaces, finite numbers
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"the {kind} effect returned a result that is not JSON-serialisable ({exc}); "
            "return str, numbers, bools, None, lists and dicts only"
        ) from exc
    size = len(encoded.encode("utf-8"))
    if size > limit:
        raise EffectResultTooLarge(kind, size, limit)
    decoded: EffectResult = json.loads(encoded)
    return encoded, decoded


def _record_failure(ledger: Ledger, lease: Lease, opkey: str, error: str) -> None:
    """Record the op as FAILED so it runs again; skipped if the lease is gone.

    Without the lease the op stays IN_PROGRESS under an old epoch, which the
    next holder takes over all the same.
    """
    with ledger.unit_of_work() as uow:
        if uow.ops.fail(lease, op_key=opkey, error=error[:MAX_ERROR_CHARS], now=uow.now()):
            uow.commit()
