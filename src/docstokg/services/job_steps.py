"""The steps of one leased job, each result committed with the start of the next step.

A job is a chain of steps.  Run one at a time, an effect costs two commits:
one to start its op, one to record its result and move the job.  Here each
commit (a *turn*) carries the waiting result of the last effect together with
the start of the next step, so a chain of n effects costs n + 1 commits, and
steps that only write to the ledger join the same turn.  Nothing is
weakened: the next effect runs only after the previous result is committed,
and a crash between an effect and that commit leaves its op IN_PROGRESS,
exactly as a crash between an effect and its own commit would: the next
holder runs it again.

Every turn goes one way.  It is planned from what this holder knows of its
job (its state, and which ops are recorded), applied as one write for the
ops and one for the move, and committed.  A holder starts out knowing its
lease and nothing recorded: the usual case, a job never worked before, costs
no read.  When the writes do not all take, the turn is rolled back, the job
and its ops are read, and the same turn is planned again from the truth,
which tells a replay (an op recorded before) from a takeover (an op left
running by a holder that died), an invalid move, and a lost lease.  How many
steps share a turn is the caller's policy; how a step is recorded is not.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from docstokg.errors import DocstokgError, InvalidTransition, JobNotFound, LeaseLost, LedgerError
from docstokg.keys import op_key
from docstokg.ledger import Lease, Ledger, OpRecord, UnitOfWork
from docstokg.ledger.models import OP_FAILED, OP_IN_PROGRESS, OP_SUCCEEDED
from docstokg.ledger.records import OpWrite
from docstokg.services.effect_results import (
    DEFAULT_MAX_RESULT_BYTES,
    EffectResult,
    Target,
    decoded_result,
    move_of,
    record_failure,
    recorded,
    step_target,
)
from docstokg.services.leasing import check_owner_and_ttl
from docstokg.services.transitions import check_transition, finished_under
from docstokg.states import SUCCESS_STATES, JobState, as_states, is_at_or_past


@dataclass(frozen=True, slots=True)
class LedgerStep:
    """A step whose only effect is a write to the ledger (see :meth:`JobSteps.ledger_steps`).

    ``write`` must do nothing but read and write through the unit of work it
    is given: a turn that does not take is rolled back and planned again, and
    a step found recorded is replayed without calling it.
    """

    kind: str
    opkey: str
    write: Callable[[UnitOfWork, float], Mapping[str, Any]]
    advance_to: Target
    allowed_from: frozenset[JobState]

    @classmethod
    def of(
        cls,
        kind: str,
        opkey: str,
        write: Callable[[UnitOfWork, float], Mapping[str, Any]],
        advance_to: Target | str,
        allowed_from: Collection[JobState | str] | None = None,
    ) -> LedgerStep:
        """A step with states given by name or as :class:`JobState`.

        ``allowed_from`` defaults to the transition table's origins of
        ``advance_to``; a step that chooses its state (``advance_to`` a
        function of its result) must name them.
        """
        if callable(advance_to):
            if allowed_from is None:
                raise InvalidTransition(
                    f"the {kind} step chooses its state from its result: name the states it "
                    "starts from in allowed_from"
                )
            return cls(kind, opkey, write, advance_to, as_states(allowed_from))
        target, origins = move_of(advance_to, allowed_from)
        assert target is not None
        return cls(kind, opkey, write, target, origins)


@dataclass(frozen=True, slots=True)
class NextClaim:
    """A claim to make in the last turn of a job (see :meth:`JobSteps.ledger_steps`).

    The job's worker claims its next job, and starts that job's first step
    (op key ``op_key(first_kind, job_id)``), in the transaction that ends the
    current one: one unit of work less per job.  With ``among``, only one of
    the job ids it returns when the claim is made (a run's own jobs, a window
    at a time); without it, any job of the ledger.
    """

    owner: str
    ttl_s: float
    first_kind: str
    among: Callable[[], Collection[str]] | None = None

    def candidates(self) -> Collection[str] | None:
        """The job ids this claim may take now (None: any)."""
        return None if self.among is None else self.among()


@dataclass(frozen=True, slots=True)
class _Ran:
    """An effect that ran and whose result waits for the next turn."""

    kind: str
    opkey: str
    encoded: str
    advance_to: JobState | None
    allowed_from: frozenset[JobState]


@dataclass(frozen=True, slots=True)
class _Start:
    """The op of an effect about to run."""

    kind: str
    opkey: str
    advance_to: JobState | None
    allowed_from: frozenset[JobState]


@dataclass(slots=True)
class _Knowledge:
    """What this holder knows of its job: where it stands, and its ops by key.

    At first only assumed (the lease's state, no op but this holder's own);
    read from the database when a turn did not take, then kept up to date
    with what this holder writes.
    """

    state: JobState
    ops: dict[str, OpRecord | str]  # a record read, or the status this holder wrote
    holds: bool = True  # the lease is current
    may_read: bool = True  # it holds the lease, or finished the job under it

    def status(self, opkey: str) -> str | None:
        op = self.ops.get(opkey)
        return op if isinstance(op, str) or op is None else op.status


class _NotTaken(Exception):
    """A turn's writes did not all take: plan it again from what the database says."""


@dataclass(slots=True)
class _Draft:
    """One turn being planned: the op rows to write, and the job's one move.

    ``read`` says whether the job's state was read in this very attempt.
    Without it, the state is what this holder assumes, and the moves are
    left to the database to check (the move's condition names the states
    it starts from); with it, a move made before is a replay and any other
    impossible move is refused.
    """

    lease: Lease
    state: JobState
    read: bool
    writes: list[OpWrite] = field(default_factory=list)
    # The states the turn's one move may start from: the first move's origins
    # (the job may stand in any of them; the rest of the chain follows from each).
    moved_from: frozenset[JobState] | None = None
    replayed: dict[str, EffectResult] = field(default_factory=dict)
    results: list[EffectResult] = field(default_factory=list)
    refusal: DocstokgError | None = None

    def move(self, target: JobState | None, allowed_from: Collection[JobState]) -> bool:
        """Add a move to the turn's one move; False (and a refusal) if the job cannot make it."""
        if target is None:
            return True
        if self.read and is_at_or_past(self.state, target):
            return True  # made before: a replay
        first = self.moved_from is None
        if (self.read or not first) and self.state not in allowed_from:
            self.refusal = InvalidTransition(
                f"job {self.lease.job_id} is {self.state}, not one of "
                f"{sorted(state.value for state in allowed_from)}: it cannot move to {target}"
            )
            return False
        if first:
            self.moved_from = frozenset(allowed_from)
        self.state = target
        return True

    @property
    def ended(self) -> bool:
        """Did this turn's move end the job (and with it the lease)?"""
        return self.moved_from is not None and self.state in SUCCESS_STATES


@dataclass(frozen=True, slots=True)
class _Turn:
    replayed: Mapping[str, EffectResult]
    results: list[EffectResult]
    next_job: JobSteps | None


class JobSteps:
    """The steps of one leased job, each result committed with the start of the next.

    Use it as a context manager (or call :meth:`flush` after the last step):
    the last effect's result is committed on the way out.
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
        # claim_and_start and NextClaim): its effect runs without a turn first.
        self._started = started
        self._known = _Knowledge(lease.state, {started: OP_IN_PROGRESS} if started else {})
        self._next_job: JobSteps | None = None

    @property
    def lease(self) -> Lease:
        return self._lease

    @property
    def next_job(self) -> JobSteps | None:
        """The job claimed by the last :meth:`ledger_steps` with ``then_claim``, if one was."""
        return self._next_job

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
        advance_to: JobState | str | None = None,
        allowed_from: Collection[JobState | str] | None = None,
    ) -> EffectResult:
        """Run ``effect_fn`` once for ``opkey``, or replay its recorded result (as run_effect).

        Its result commits with the start of the next step, or at :meth:`flush`.
        """
        target, origins = move_of(advance_to, allowed_from)
        if target is not None:
            check_transition(target, origins)
        if self._started == opkey and self._ran is None:
            self._started = None  # started with the claim: nothing to commit first
        else:
            turn = self._turn(start=_Start(kind, opkey, target, origins))
            if opkey in turn.replayed:
                return turn.replayed[opkey]
        try:
            result = effect_fn()
            encoded, decoded = recorded(result, kind, self._max_result_bytes)
        except Exception as exc:
            self._known.ops[opkey] = OP_FAILED  # not running: a retry takes it over, fenced
            record_failure(self._ledger, self._lease, opkey, f"{type(exc).__name__}: {exc}")
            raise
        self._ran = _Ran(kind, opkey, encoded, target, origins)
        return decoded  # what every replay will return, too

    def ledger_step(
        self,
        *,
        kind: str,
        opkey: str,
        write: Callable[[UnitOfWork, float], Mapping[str, Any]],
        advance_to: Target | str,
        allowed_from: Collection[JobState | str] | None = None,
    ) -> EffectResult:
        """A step whose only effect is a write to the ledger: op, write and move in one transaction.

        ``write(uow, now)`` runs inside the unit of work and returns the step's
        result; ``advance_to`` is the state to move to, or a function of the
        result choosing it.  Because nothing leaves the database, the step is
        exactly-once outright: the op, its write and the move all commit, or
        none does.  A recorded success is replayed, and its move replayed too.
        """
        [result] = self.ledger_steps(LedgerStep.of(kind, opkey, write, advance_to, allowed_from))
        return result

    def ledger_steps(
        self, *steps: LedgerStep, then_claim: NextClaim | None = None
    ) -> list[EffectResult]:
        """Several ledger steps in one turn, with the last effect's waiting result: all or none.

        Each is as :meth:`ledger_step`; a later one sees what the earlier ones
        wrote.  With ``then_claim``, the same turn also claims the worker's
        next job once the steps are recorded: see :attr:`next_job`.
        """
        if then_claim is not None:
            check_owner_and_ttl(then_claim.owner, then_claim.ttl_s)
        self._next_job = None
        turn = self._turn(steps=steps, then_claim=then_claim)
        self._next_job = turn.next_job  # only once its claim is committed
        return turn.results

    def flush(self) -> None:
        """Commit the last effect's result (and its move), if one is waiting."""
        if self._ran is not None:
            self._turn()

    # --- a turn -----------------------------------------------------------------------

    def _turn(
        self,
        *,
        start: _Start | None = None,
        steps: tuple[LedgerStep, ...] = (),
        then_claim: NextClaim | None = None,
    ) -> _Turn:
        """One commit: the waiting result, then ``start`` or ``steps``, then the claim.

        Planned from what this holder knows; if its writes do not all take,
        planned once more from what the database says (see the module's
        docstring), and if even that does not take, the reason is raised.
        """
        try:
            return self._attempt(start, steps, then_claim)
        except _NotTaken:
            return self._attempt(start, steps, then_claim, learn=True)

    def _attempt(
        self,
        start: _Start | None,
        steps: tuple[LedgerStep, ...],
        then_claim: NextClaim | None,
        *,
        learn: bool = False,
    ) -> _Turn:
        lease = self._lease
        with self._ledger.unit_of_work() as uow:
            now = uow.now()
            known = self._learn(uow, now) if learn else self._known
            draft = _Draft(lease, known.state, read=learn)
            self._plan_waiting(draft, known)
            if draft.refusal is None and start is not None:
                self._plan_start(uow, draft, known, start, now, learn=learn)
            if draft.refusal is None and steps:
                self._plan_steps(uow, draft, known, steps, now, learn=learn)
            if draft.refusal is not None and not learn:
                raise _NotTaken  # refuse only on what the database says, not on what was assumed
            following = None
            if draft.refusal is None and then_claim is not None:
                following = self._claim(uow, draft, then_claim, now, learn=learn)
            if not self._apply(uow, draft, now):
                if learn:
                    raise self._why_not_taken(uow, draft, now)
                raise _NotTaken
            uow.commit()
        self._remember(known, draft)
        if draft.refusal is not None:
            raise draft.refusal
        return _Turn(draft.replayed, draft.results, following)

    def _learn(self, uow: UnitOfWork, now: float) -> _Knowledge:
        """Read the job and its ops: the truth the next plan is made from."""
        lease = self._lease
        job = uow.jobs.get(lease.job_id)
        if job is None:
            raise JobNotFound(lease.job_id)
        holds = uow.jobs.holds(lease, now=now)
        ops: dict[str, OpRecord | str] = {op.op_key: op for op in uow.ops.list_for_job(job.job_id)}
        return _Knowledge(job.state, ops, holds, may_read=holds or finished_under(job, lease))

    def _plan_waiting(self, draft: _Draft, known: _Knowledge) -> None:
        """The last effect's result, and its move (an invalid move still keeps the result)."""
        ran = self._ran
        if ran is None:
            return
        if known.status(ran.opkey) == OP_SUCCEEDED:  # recorded already (by a replay of ours)
            op = known.ops[ran.opkey]
            if not isinstance(op, str) and op.lease_epoch != self._lease.epoch:
                raise _lost(self._lease, f"recording op {ran.opkey}: another holder recorded it")
            draft.move(ran.advance_to, ran.allowed_from)
            return
        draft.writes.append(OpWrite.finish(self._lease, ran.opkey, ran.kind, ran.encoded))
        draft.move(ran.advance_to, ran.allowed_from)

    def _plan_start(
        self,
        uow: UnitOfWork,
        draft: _Draft,
        known: _Knowledge,
        start: _Start,
        now: float,
        *,
        learn: bool = False,
    ) -> None:
        """Start ``start``'s op, or replay it if it is recorded."""
        lease = self._lease
        if draft.ended:
            draft.refusal = InvalidTransition(
                f"job {lease.job_id} ended as {draft.state} in this turn: no step may start "
                f"after it (not {start.kind})"
            )
            return
        status = known.status(start.opkey)
        if self._ran is not None and self._ran.opkey == start.opkey:
            draft.replayed[start.opkey] = decoded_result(self._ran.encoded)
            draft.move(start.advance_to, start.allowed_from)
        elif status == OP_SUCCEEDED:
            draft.replayed[start.opkey] = self._replay(
                known, start.opkey, uow=None if learn else uow
            )
            draft.move(start.advance_to, start.allowed_from)
        elif status is None:
            draft.writes.append(OpWrite.start(lease, start.opkey, start.kind))
        elif not self._owns(known, start.opkey) and not uow.ops.start(
            lease, op_key=start.opkey, op_type=start.kind, now=now
        ):
            raise _lost(lease, f"taking over op {start.opkey}")

    def _plan_steps(
        self,
        uow: UnitOfWork,
        draft: _Draft,
        known: _Knowledge,
        steps: tuple[LedgerStep, ...],
        now: float,
        *,
        learn: bool,
    ) -> None:
        """Each ledger step: replayed if recorded, else written, recorded done and moved."""
        lease = self._lease
        for step in steps:
            status = known.status(step.opkey)
            if status == OP_SUCCEEDED:
                replayed = self._replay(known, step.opkey, uow=None if learn else uow)
                draft.results.append(replayed)
                if not draft.move(_target(step, replayed), step.allowed_from):
                    return
                continue
            try:
                encoded, decoded = recorded(step.write(uow, now), step.kind, self._max_result_bytes)
            except Exception as exc:
                if learn:
                    raise
                # The step may be recorded already (then it is replayed, not
                # written) or the lease lost: what the database says decides.
                raise _NotTaken from exc
            target = _target(step, decoded)
            check_transition(target, step.allowed_from)
            if status is None:
                draft.writes.append(OpWrite.done(lease, step.opkey, step.kind, encoded))
            else:  # an op left by a holder that died, or that failed: taken over, then recorded
                if not uow.ops.start(lease, op_key=step.opkey, op_type=step.kind, now=now):
                    raise _lost(lease, f"taking over op {step.opkey}")
                draft.writes.append(OpWrite.finish(lease, step.opkey, step.kind, encoded))
            draft.results.append(decoded)
            if not draft.move(target, step.allowed_from):
                return

    def _claim(
        self, uow: UnitOfWork, draft: _Draft, claim: NextClaim, now: float, *, learn: bool
    ) -> JobSteps | None:
        """Claim the worker's next job and start its first step in this turn."""
        following = uow.jobs.claim(
            owner=claim.owner, ttl_s=claim.ttl_s, now=now, among=claim.candidates()
        )
        if following is None:
            return None
        first = op_key(claim.first_kind, following.job_id)
        if learn:  # that job may have been taken over part-way: start or take over, or replay
            started = uow.ops.start(following, op_key=first, op_type=claim.first_kind, now=now)
            return JobSteps(self._ledger, following, started=first if started else None)
        draft.writes.append(OpWrite.start(following, first, claim.first_kind))
        return JobSteps(self._ledger, following, started=first)

    def _apply(self, uow: UnitOfWork, draft: _Draft, now: float) -> bool:
        """The turn's op rows in one write, and the job's one move; True if all of it took."""
        if draft.writes and not uow.ops.record(draft.writes, now=now):
            return False
        if draft.moved_from is None:
            return True
        return uow.jobs.advance(
            self._lease, to_state=draft.state, allowed_from=draft.moved_from, now=now
        )

    def _why_not_taken(self, uow: UnitOfWork, draft: _Draft, now: float) -> DocstokgError:
        """A turn planned from the truth did not take: the lease is gone, or an op is not ours."""
        lease = self._lease
        kinds = ", ".join(write.op_type for write in draft.writes)
        doing = f"recording {kinds}" if kinds else "moving the job"
        if not uow.jobs.holds(lease, now=now):
            return _lost(lease, doing)
        for write in draft.writes:
            op = uow.ops.get(write.op_key)
            if op is not None and op.job_id != write.lease.job_id:
                return LedgerError(
                    f"op_key {write.op_key} belongs to job {op.job_id}, not to job "
                    f"{write.lease.job_id}"
                )
        return LedgerError(f"job {lease.job_id}: {doing} did not take although its lease holds")

    def _remember(self, known: _Knowledge, draft: _Draft) -> None:
        """After a commit: the job's new state and the ops this holder wrote."""
        for write in draft.writes:
            if write.lease.job_id == self._lease.job_id:
                status = OP_SUCCEEDED if write.result_json is not None else OP_IN_PROGRESS
                known.ops[write.op_key] = status
        known.state = draft.state
        self._known = known
        self._ran = None

    def _replay(self, known: _Knowledge, opkey: str, *, uow: UnitOfWork | None) -> EffectResult:
        """The recorded result of ``opkey``; only a holder of the lease may read it.

        With ``uow`` (a turn planned from what was assumed), memory is not trusted: the
        op may have been reopened, or the lease lost, since it was learned.
        """
        if not known.may_read:
            raise _lost(self._lease, f"running op {opkey}")
        if uow is not None:
            encoded = uow.ops.succeeded_result(opkey)
            if encoded is None or not uow.jobs.holds(self._lease, now=uow.now()):
                raise _NotTaken  # reopened, or the lease is gone: what the database says decides
            return decoded_result(encoded)
        op = known.ops[opkey]
        assert not isinstance(op, str)  # a turn read first holds records only
        if op.result_json is None:
            raise LedgerError(f"op {opkey} succeeded with no result recorded")
        return decoded_result(op.result_json)

    def _owns(self, known: _Knowledge, opkey: str) -> bool:
        """Is ``opkey`` running under this very lease (started earlier by this holder)?"""
        if not known.holds:
            return False  # then only a fenced start may say so, and it will not
        op = known.ops.get(opkey)
        if isinstance(op, str):
            return op == OP_IN_PROGRESS
        return (
            op is not None and op.status == OP_IN_PROGRESS and (op.lease_epoch == self._lease.epoch)
        )


def _target(step: LedgerStep, result: EffectResult) -> JobState:
    return step_target(step.advance_to(result) if callable(step.advance_to) else step.advance_to)


def _lost(lease: Lease, doing: str) -> LeaseLost:
    return LeaseLost(lease.job_id, lease.owner, lease.epoch, doing)
