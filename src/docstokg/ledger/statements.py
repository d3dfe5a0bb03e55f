"""The ledger's SQL: every statement it runs, named, built once at import, grouped by table.

Repositories and reports only call these; none builds SQL of its own.  Each
is a :class:`~docstokg.ledger.prepared.Prepared` (a Core statement, or one per
dialect where SQLite and PostgreSQL differ), run by the one executor of
:mod:`docstokg.ledger.prepared`: compiled once per dialect, then a call costs
binding parameters and one round trip.

Sections: what every table's statements share (columns, the lease fence),
then ``_meta``, ``artifact_jobs``, ``artifact_ops``, the operators' reports
(read-only, over both tables) and the database itself.  The predicates of the
partial indexes are the very objects :mod:`docstokg.ledger.models` declares
the indexes with, so a query that must walk an index says so in its WHERE.

Every write a lease holder makes carries :data:`LEASE_IS_CURRENT`: the job
must still name the holder (owner and epoch) and the lease must not have
expired.  The row count of that conditional write is the truth about whether
the holder still owns the job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from functools import cache
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Double,
    Executable,
    Float,
    Integer,
    Table,
    TableClause,
    Text,
    TextClause,
    and_,
    bindparam,
    case,
    cast,
    column,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

from docstokg.ledger.models import (
    FAILED_JOBS,
    IN_PROGRESS_OPS,
    NOT_FINISHED_JOBS,
    OP_ABANDONED,
    OP_FAILED,
    OP_IN_PROGRESS,
    OP_SUCCEEDED,
    RETRIED_OPS,
    TIMED_OPS,
    UNHEALTHY_OPS,
    jobs_table,
    manifest_jobs_table,
    meta_table,
    ops_table,
)
from docstokg.ledger.prepared import Prepared
from docstokg.ledger.records import JobRecord, OpRecord
from docstokg.states import RESTART_ON_GRANT, SUCCESS_STATES, JobState

jobs = jobs_table.c
ops = ops_table.c
members = manifest_jobs_table.c
DIALECTS: dict[str, Any] = {"sqlite": sqlite, "postgresql": postgresql}


def per_dialect(build: Callable[[Any], Executable]) -> Prepared:
    """One named statement whose Core form, ``build(dialect module)``, differs per dialect."""
    return Prepared({name: build(dialect) for name, dialect in DIALECTS.items()})


# === shared by the tables' statements =====================================================

# Selected in the records' field order, so a row maps onto a record positionally.
JOB_COLUMNS = tuple(jobs[field.name] for field in fields(JobRecord))
OP_COLUMNS = tuple(ops[field.name] for field in fields(OpRecord))
JOB_TRIPLE = ("work_id", "artifact_id", "canonical_url")
PLAN_COLUMNS = (
    "job_id", *JOB_TRIPLE, "state", "created_at", "updated_at", "idempotency_key", "max_attempts",
    "expected_sha256",
)  # fmt: skip

LEASE_IS_CURRENT: ColumnElement[bool] = and_(
    jobs.job_id == bindparam("b_job_id"),
    jobs.lease_owner == bindparam("owner"),
    jobs.lease_epoch == bindparam("epoch"),
    jobs.lease_until >= bindparam("now"),
)
# The ledger's clock, bound by every statement that reads or writes a time.
_now = bindparam("now", type_=jobs.updated_at.type)
_op_epoch = bindparam("epoch", type_=Integer)

# === _meta: facts about the ledger ========================================================

GET_META = Prepared(select(meta_table.c.value).where(meta_table.c.key == bindparam("b_key")))
# The first writer of a fact wins; a racing second one reads the first's value.
PUT_META_IF_ABSENT = per_dialect(
    lambda dialect: (
        dialect.insert(meta_table)
        .values(key=bindparam("b_key"), value=bindparam("b_value"))
        .on_conflict_do_nothing(index_elements=["key"])
    )
)

# === artifact_jobs ========================================================================

# --- reading ------------------------------------------------------------------------------

GET_JOB = Prepared(select(*JOB_COLUMNS).where(jobs.job_id == bindparam("b_job_id")))
GET_JOB_BY_KEY = Prepared(select(*JOB_COLUMNS).where(jobs.idempotency_key == bindparam("b_key")))
JOBS_BY_ID = Prepared(
    select(*JOB_COLUMNS).where(jobs.job_id.in_(bindparam("job_ids", expanding=True)))
)
JOBS_IN_STATE = Prepared(
    select(*JOB_COLUMNS)
    .where(jobs.state == bindparam("b_state"))
    .order_by(jobs.created_at, jobs.job_id)
    .limit(bindparam("b_limit", type_=Integer))
    .offset(bindparam("b_offset", type_=Integer))
)
JOBS_PER_STATE = Prepared(select(jobs.state, func.count()).group_by(jobs.state))
FIND_BY_TRIPLE = Prepared(
    select(jobs.job_id).where(*(jobs[name] == bindparam(name) for name in JOB_TRIPLE))
)
JOB_EXISTS = Prepared(select(literal(1)).where(jobs.job_id == bindparam("b_job_id")))

# --- planning -----------------------------------------------------------------------------

_plan_values = {name: bindparam(name, type_=jobs[name].type) for name in PLAN_COLUMNS}
# No conflict target: job_id, idempotency_key and the triple all identify the
# same job, and two planners racing on it may collide on any of the three
# first (PostgreSQL raises for a violation outside a named arbiter).  A
# conflict that is not a repeat of the triple is caught by plan()'s lookup.
PLAN_ONE = per_dialect(
    lambda dialect: (
        dialect.insert(jobs_table)
        .values(_plan_values)
        .on_conflict_do_nothing()
        .returning(jobs.job_id)
    )
)
# Run once per row by the driver's executemany loop.
SQLITE_PLAN_MANY = Prepared(sqlite.insert(jobs_table).values(_plan_values).on_conflict_do_nothing())

_unnested = (
    func.unnest(
        *(
            bindparam(f"{name}_values", type_=postgresql.ARRAY(jobs[name].type))
            for name in PLAN_COLUMNS
        )
    )
    .table_valued(*PLAN_COLUMNS)
    .render_derived()
)
POSTGRESQL_PLAN_MANY = Prepared(
    postgresql.insert(jobs_table)
    .from_select(PLAN_COLUMNS, select(*(_unnested.c[name] for name in PLAN_COLUMNS)))
    .on_conflict_do_nothing()
    .returning(jobs.job_id)
)

# --- manifests ----------------------------------------------------------------------------


def _member(job_id: ColumnElement[str]) -> ColumnElement[bool]:
    """``job_id`` is one of the jobs of the manifest bound as ``manifest``."""
    return job_id.in_(select(members.job_id).where(members.manifest == bindparam("manifest")))


# Existing jobs only (a foreign key would refuse the others): an id that is not
# planned is not a member of anything.
ADD_TO_MANIFEST = per_dialect(
    lambda dialect: (
        dialect.insert(manifest_jobs_table)
        .from_select(
            ["manifest", "job_id", "added_at"],
            select(bindparam("manifest", type_=Text), jobs.job_id, _now).where(
                jobs.job_id.in_(bindparam("job_ids", expanding=True))
            ),
        )
        .on_conflict_do_nothing()
    )
)
MANIFEST_SIZES = Prepared(
    select(members.manifest, func.count()).group_by(members.manifest).order_by(members.manifest)
)
MANIFESTS_OF_JOB = Prepared(
    select(members.manifest)
    .where(members.job_id == bindparam("b_job_id"))
    .order_by(members.manifest)
)

# --- leases ---------------------------------------------------------------------------

_restart_states = tuple(state.value for state in RESTART_ON_GRANT)
# The literal predicate lets the planner use the partial index ix_artifact_jobs_claim.
_CLAIMABLE: ColumnElement[bool] = and_(
    NOT_FINISHED_JOBS,
    or_(jobs.lease_until.is_(None), jobs.lease_until < _now),
    or_(
        jobs.state != JobState.FAILED.value,
        and_(
            jobs.attempts < jobs.max_attempts,
            or_(jobs.next_attempt_at.is_(None), jobs.next_attempt_at <= _now),
        ),
    ),
)
_LEASE_RETURNING = (
    jobs.job_id,
    jobs.lease_owner,
    jobs.lease_epoch,
    jobs.lease_until,
    jobs.work_id,
    jobs.artifact_id,
    jobs.canonical_url,
    jobs.state,
    jobs.expected_sha256,
)


# The step a job in each state was running: what a takeover names as lost.
_STEP_OF_STATE = {
    JobState.LEASED: "HEAD",
    JobState.HEAD_DONE: "STREAM",
    JobState.RESUME_OK: "STREAM",
    JobState.STREAMING: "FINALIZE",
    JobState.FINALIZED: "INDEX",
    JobState.INDEXED: "DEDUPE",
}
# A lease that expired with its owner still named: the holder died, hung or
# was paused mid-step.  Taking such a job over costs it an attempt, so a job
# that kills its worker every time ends FAILED instead of being retried forever.
_WORKER_LOST: ColumnElement[bool] = and_(jobs.lease_owner.is_not(None), jobs.lease_until < _now)
_LOST_ERROR = case(
    *(
        (jobs.state == state.value, f"worker lost during {step} (lease expired)")
        for state, step in _STEP_OF_STATE.items()
    ),
    else_=literal("worker lost (lease expired)"),
)
# The takeover used the job's last attempt: it ends FAILED, leased to nobody.
_LOST_FOR_GOOD: ColumnElement[bool] = and_(_WORKER_LOST, jobs.attempts + 1 >= jobs.max_attempts)


def _after_worker_lost(granted: dict[str, Any]) -> dict[str, Any]:
    """The values a claim or a cleanup writes: ``granted`` unless the takeover exhausted the job."""
    return {
        "attempts": case((_WORKER_LOST, jobs.attempts + 1), else_=jobs.attempts),
        "last_error": case((_WORKER_LOST, _LOST_ERROR), else_=jobs.last_error),
        **{
            column: value if value is exhausted else case((_LOST_FOR_GOOD, exhausted), else_=value)
            for column, (value, exhausted) in granted.items()
        },
        "updated_at": _now,
    }


# The jobs of one manifest (bound as ``manifest``), for the reports limited to them.
IN_MANIFEST = _member(jobs.job_id)
# A claim among the caller's candidates (a run's own jobs, a window at a time): a
# primary-key probe per candidate, whatever the size of the ledger or of the manifest.
_AMONG_CANDIDATES = jobs.job_id.in_(bindparam("candidates", expanding=True))


def _claim(name: str, *, among: bool = False) -> Any:
    claimable = and_(_CLAIMABLE, _AMONG_CANDIDATES) if among else _CLAIMABLE
    oldest = select(jobs.job_id).where(claimable).order_by(jobs.created_at, jobs.job_id).limit(1)
    if name == "postgresql":
        # Workers skip rows another claim holds instead of queueing behind it.
        oldest = oldest.with_for_update(skip_locked=True)
    granted_state = case(
        (or_(*(jobs.state == state for state in _restart_states)), JobState.LEASED.value),
        else_=jobs.state,
    )
    return (
        update(jobs_table)
        # The claim re-checks the predicate on the row it updates: a job that
        # changed since the subquery looked (finished, leased) is not taken.
        .where(jobs.job_id == oldest.scalar_subquery(), _CLAIMABLE)
        .values(
            # A takeover that used the last attempt ends the job FAILED and
            # leased to nobody: the caller sees no owner and claims again.
            **_after_worker_lost(
                {
                    "lease_owner": (bindparam("owner"), None),
                    "lease_until": (
                        _now + bindparam("ttl_s", type_=jobs.lease_until.type),
                        None,
                    ),
                    "state": (granted_state, JobState.FAILED.value),
                }
            ),
            lease_epoch=jobs.lease_epoch + 1,
        )
        .returning(*_LEASE_RETURNING)
    )


CLAIM = Prepared({name: _claim(name) for name in DIALECTS})
CLAIM_AMONG = Prepared({name: _claim(name, among=True) for name in DIALECTS})
RENEW = Prepared(
    update(jobs_table)
    .where(
        jobs.job_id == bindparam("b_job_id"),
        jobs.lease_owner == bindparam("owner"),
        jobs.lease_epoch == bindparam("epoch"),
        NOT_FINISHED_JOBS,
    )
    .values(lease_until=_now + bindparam("ttl_s", type_=jobs.lease_until.type))
    .returning(jobs.lease_until)
)
RELEASE = Prepared(
    update(jobs_table)
    .where(
        jobs.job_id == bindparam("b_job_id"),
        jobs.lease_owner == bindparam("owner"),
        jobs.lease_epoch == bindparam("epoch"),
    )
    .values(lease_owner=None, lease_until=None)
)
# Every lease of one worker: what it hands back after a COMMIT whose fate it
# could not learn (a claim that may have taken a job it never heard of).
RELEASE_OWNER = Prepared(
    update(jobs_table)
    .where(jobs.lease_owner == bindparam("owner"))
    .values(lease_owner=None, lease_until=None)
)
HOLDS_LEASE = Prepared(select(literal(1)).where(LEASE_IS_CURRENT))
# One slot per state, so the statement compiles once: unused slots repeat a state.
ADVANCE_FROM_SLOTS = tuple(f"from_{n}" for n in range(len(JobState)))
ADVANCE = Prepared(
    update(jobs_table)
    .where(LEASE_IS_CURRENT, jobs.state.in_([bindparam(slot) for slot in ADVANCE_FROM_SLOTS]))
    .values(
        state=bindparam("to_state"),
        updated_at=_now,
        # A finished job keeps no lease, so no further write can pass the fence.
        lease_owner=case((bindparam("finishes", type_=Boolean), None), else_=jobs.lease_owner),
        lease_until=case((bindparam("finishes", type_=Boolean), None), else_=jobs.lease_until),
    )
)
FAIL = Prepared(
    update(jobs_table)
    .where(LEASE_IS_CURRENT)
    .values(
        state=JobState.FAILED.value,
        # A permanent failure uses up every attempt at once.
        attempts=case(
            (
                and_(bindparam("exhaust", type_=Boolean), jobs.attempts + 1 < jobs.max_attempts),
                jobs.max_attempts,
            ),
            else_=jobs.attempts + 1,
        ),
        last_error=bindparam("b_error"),
        next_attempt_at=bindparam("b_next_attempt_at", type_=jobs.next_attempt_at.type),
        lease_owner=None,
        lease_until=None,
        updated_at=_now,
    )
    .returning(jobs.attempts, jobs.max_attempts)
)
RECORD_RESULT = Prepared(
    update(jobs_table)
    .where(LEASE_IS_CURRENT)
    .values(
        sha256=bindparam("b_sha256"),
        final_path=bindparam("b_final_path"),
        size_bytes=bindparam("b_size_bytes"),
        content_type=bindparam("b_content_type"),
        updated_at=_now,
    )
)
# The job that owns a content: the one DEDUPED job with this sha256 (at most
# one, by the unique partial index uq_artifact_jobs_stored_content).
STORED_COPY = Prepared(
    select(jobs.job_id, jobs.final_path)
    .where(
        jobs.sha256 == bindparam("b_sha256"),
        jobs.state == JobState.DEDUPED.value,
        jobs.job_id != bindparam("b_job_id"),
    )
    .limit(1)
)
UNFINISHED_AMONG = Prepared(
    select(jobs.job_id).where(
        jobs.job_id.in_(bindparam("job_ids", expanding=True)), NOT_FINISHED_JOBS
    )
)
COUNT_UNFINISHED = Prepared(
    select(func.count())
    .select_from(jobs_table)
    .where(jobs.job_id.in_(bindparam("job_ids", expanding=True)), NOT_FINISHED_JOBS)
)
EXPIRE_STALE_LEASES = Prepared(
    update(jobs_table)
    .where(jobs.lease_until < _now)
    .values(
        **_after_worker_lost(
            {
                "lease_owner": (None, None),
                "lease_until": (None, None),
                "state": (jobs.state, JobState.FAILED.value),
            }
        )
    )
    .returning(jobs.job_id)
)
LIVE_LEASES = Prepared(
    select(jobs.job_id).where(
        jobs.job_id.in_(bindparam("job_ids", expanding=True)), jobs.lease_until >= _now
    )
)
NOT_LIVE: ColumnElement[bool] = or_(jobs.lease_until.is_(None), jobs.lease_until < _now)
FINALIZED_FILES = Prepared(
    select(jobs.job_id, jobs.final_path).where(
        jobs.state.in_([JobState.FINALIZED.value, JobState.INDEXED.value]),
        jobs.final_path.is_not(None),
        NOT_LIVE,
    )
)
# Jobs whose file is in the store, as the ledger records it: a run and `job
# verify` hold the disk to these rows.
_HOLDS_A_FILE = (
    JobState.FINALIZED.value,
    JobState.INDEXED.value,
    JobState.DEDUPED.value,
    JobState.SKIPPED_DUPLICATE.value,
)
STORED_FILES = Prepared(
    select(jobs.job_id, jobs.state, jobs.sha256, jobs.final_path, jobs.size_bytes)
    .where(jobs.state.in_([JobState.DEDUPED.value, JobState.SKIPPED_DUPLICATE.value]))
    .order_by(jobs.job_id)
)
REQUEUE = Prepared(
    update(jobs_table)
    .where(
        jobs.job_id.in_(bindparam("job_ids", expanding=True)),
        jobs.state.in_(_HOLDS_A_FILE),
        NOT_LIVE,
    )
    .values(
        state=JobState.FAILED.value,
        last_error=bindparam("b_error"),
        # The lost file is not the job's failure: it keeps at least one attempt.
        attempts=case(
            (jobs.attempts >= jobs.max_attempts, jobs.max_attempts - 1), else_=jobs.attempts
        ),
        next_attempt_at=_now,
        sha256=None,
        final_path=None,
        size_bytes=None,
        # A new epoch fences out the last holder: even an expired lease that
        # nobody took over can no longer be renewed and write to the job.
        lease_owner=None,
        lease_until=None,
        lease_epoch=jobs.lease_epoch + 1,
        updated_at=_now,
    )
    .returning(jobs.job_id)
)

EXPIRED_LEASES = Prepared(select(jobs.job_id).where(jobs.lease_until < _now))

# --- operators' repairs -------------------------------------------------------------------

_EXHAUSTED: tuple[ColumnElement[bool], ...] = (
    jobs.state == JobState.FAILED.value,
    jobs.attempts >= jobs.max_attempts,
)
# A fresh attempt budget: the job is claimable again at once (last_error is kept).
_REFILL_VALUES = {"attempts": 0, "next_attempt_at": _now, "updated_at": _now}
REFILL_ALL_EXHAUSTED = Prepared(
    update(jobs_table).where(*_EXHAUSTED).values(**_REFILL_VALUES).returning(jobs.job_id)
)
# The manifest is the source of a job's expected checksum: a changed one replaces it.
SET_EXPECTED_SHA256 = Prepared(
    update(jobs_table)
    .where(jobs.job_id == bindparam("b_job_id"))
    .values(expected_sha256=bindparam("b_expected"), updated_at=_now)
)
REFILL_EXHAUSTED = Prepared(
    update(jobs_table)
    .where(jobs.job_id.in_(bindparam("job_ids", expanding=True)), *_EXHAUSTED)
    .values(**_REFILL_VALUES)
    .returning(jobs.job_id)
)

# === artifact_ops =========================================================================

GET_OP = Prepared(select(*OP_COLUMNS).where(ops.op_key == bindparam("b_op_key")))
OPS_OF_JOB = Prepared(
    select(*OP_COLUMNS)
    .where(ops.job_id == bindparam("b_job_id"))
    .order_by(ops.started_at, ops.op_key)
)

# The op row is written only if its job exists: no foreign-key error to decode.
ADD_OP = per_dialect(
    lambda dialect: (
        dialect.insert(ops_table)
        .from_select(
            ["op_key", "job_id", "op_type", "started_at"],
            select(
                bindparam("b_op_key", type_=Text),
                jobs.job_id,
                bindparam("b_op_type", type_=Text),
                bindparam("b_started_at", type_=ops.started_at.type),
            ).where(jobs.job_id == bindparam("b_job_id")),
        )
        .on_conflict_do_nothing(index_elements=["op_key"])
        .returning(ops.op_key)
    )
)
# An op's result, recorded once (unfenced): only an op not finished yet takes it.
FINISH_OP = Prepared(
    update(ops_table)
    .where(ops.op_key == bindparam("b_op_key"), ops.finished_at.is_(None))
    .values(
        finished_at=_now,
        duration_s=_now - ops.started_at,
        result_code=bindparam("b_result_code"),
        result_json=bindparam("b_result_json"),
        status=bindparam("b_status"),
    )
)

# --- effects ------------------------------------------------------------------------------

# Inserted only if the lease is current: one statement starts a new op.
START_OP = per_dialect(
    lambda dialect: (
        dialect.insert(ops_table)
        .from_select(
            ["op_key", "job_id", "op_type", "started_at", "status", "attempt", "lease_epoch"],
            select(
                bindparam("b_op_key", type_=Text),
                jobs.job_id,
                bindparam("b_op_type", type_=Text),
                _now,
                literal(OP_IN_PROGRESS),
                literal(1),
                jobs.lease_epoch,
            ).where(LEASE_IS_CURRENT),
        )
        .on_conflict_do_nothing(index_elements=["op_key"])
    )
)
# --- ops recorded together -----------------------------------------------------------
#
# The columns a proposed op row carries, in order.  Per row: the op, its
# status (IN_PROGRESS to start it, SUCCEEDED with its result to record it),
# and the lease that must be current on its job for the row to count.  A
# success proposed without a duration finishes a running op (its duration is
# then measured from its start); one with duration 0 is a new op done at once.
_PROPOSED = (
    ("op_key", Text), ("op_type", Text), ("status", Text), ("finished_at", Float),
    ("duration_s", Float), ("result_code", Text), ("result_json", Text),
    ("job_id", Text), ("owner", Text), ("epoch", Integer),
)  # fmt: skip


@cache
def proposed_names(row: int) -> tuple[str, ...]:
    """The parameter names of proposed row ``row`` (``p{row}_{field}``), in field order."""
    return tuple(f"p{row}_{name}" for name, _ in _PROPOSED)


def _record_ops(dialect: Any, rows: int) -> Any:
    """One write for ``rows`` op rows: starts, and successes (of running or of new ops).

    Each proposed row counts only if its job's lease is current.  A new op is
    inserted as proposed; an op that exists conflicts, and takes a proposed
    finish only if it is running (or abandoned) under the same lease epoch,
    exactly as SUCCEED_OP would record it.  Anything else leaves the row as it
    was, so ``rows`` changed rows means every one took: the caller relies on
    that and, short of it, rolls back and goes one op at a time.  (Were a
    running op's row gone, which no holder's write can cause, its finish would
    be inserted: recorded once all the same, without a duration.)
    """
    proposed = union_all(
        *(
            select(
                *(
                    _proposed(param, kind).label(name)
                    for param, (name, kind) in zip(proposed_names(n), _PROPOSED, strict=True)
                )
            )
            for n in range(rows)
        )
    ).subquery("proposed")
    insert = dialect.insert(ops_table).from_select(
        [
            "op_key", "job_id", "op_type", "started_at", "status", "attempt", "lease_epoch",
            "finished_at", "duration_s", "result_code", "result_json",
        ],
        select(
            proposed.c.op_key, jobs.job_id, proposed.c.op_type, _now, proposed.c.status,
            literal(1), jobs.lease_epoch, proposed.c.finished_at, proposed.c.duration_s,
            proposed.c.result_code, proposed.c.result_json,
        ).where(
            jobs.job_id == proposed.c.job_id,
            jobs.lease_owner == proposed.c.owner,
            jobs.lease_epoch == proposed.c.epoch,
            jobs.lease_until >= _now,
        ),
    )  # fmt: skip
    excluded = insert.excluded
    return insert.on_conflict_do_update(
        index_elements=["op_key"],
        set_={
            "status": excluded.status,
            "finished_at": excluded.finished_at,
            "duration_s": excluded.finished_at - ops.started_at,
            "result_code": excluded.result_code,
            "result_json": excluded.result_json,
        },
        where=and_(
            excluded.status == OP_SUCCEEDED,
            excluded.duration_s.is_(None),  # a finish; a new op done at once never updates
            or_(ops.status == OP_IN_PROGRESS, ops.status == OP_ABANDONED),
            ops.lease_epoch == excluded.lease_epoch,
        ),
    )


def _proposed(param: str, kind: Any) -> ColumnElement[Any]:
    """A proposed value; numbers cast, so a column of NULLs has a type on PostgreSQL."""
    value = bindparam(param, type_=kind)
    return cast(value, Double) if kind is Float else value


@cache
def record_ops(rows: int) -> Prepared:
    """The statement recording ``rows`` proposed op rows at once, built on first use."""
    return per_dialect(lambda dialect: _record_ops(dialect, rows))


_job_lease_is_current = exists(select(jobs.job_id).where(LEASE_IS_CURRENT))
# Taking over an op that is not a success: its holder died, lost the lease, or failed.
RESTART_OP = Prepared(
    update(ops_table)
    .where(
        ops.op_key == bindparam("b_op_key"),
        ops.job_id == bindparam("b_job_id"),
        ops.status != OP_SUCCEEDED,
        # An op in progress under this very lease is running right now (another
        # thread, or re-entrantly): it is not taken over.
        or_(ops.status != OP_IN_PROGRESS, ops.lease_epoch < _op_epoch),
        _job_lease_is_current,
    )
    .values(
        status=OP_IN_PROGRESS,
        attempt=ops.attempt + 1,
        lease_epoch=_op_epoch,
        started_at=_now,
        finished_at=None,
        result_code=None,
        result_json=None,
        error=None,
        duration_s=None,
    )
)
_op_is_ours: tuple[ColumnElement[bool], ...] = (
    ops.op_key == bindparam("b_op_key"),
    # ABANDONED too: a cleanup may have given up on a holder that was only
    # late; with its epoch and a current lease, the result is still its to record.
    or_(ops.status == OP_IN_PROGRESS, ops.status == OP_ABANDONED),
    ops.lease_epoch == _op_epoch,
    _job_lease_is_current,
)
SUCCEED_OP = Prepared(
    update(ops_table)
    .where(*_op_is_ours)
    .values(
        status=OP_SUCCEEDED,
        finished_at=_now,
        duration_s=_now - ops.started_at,
        result_code="OK",
        result_json=bindparam("b_result_json"),
    )
)
FAIL_OP = Prepared(
    update(ops_table)
    .where(*_op_is_ours)
    .values(
        status=OP_FAILED,
        finished_at=_now,
        duration_s=_now - ops.started_at,
        result_code="ERROR",
        error=bindparam("b_error"),
    )
)
# A recorded success whose work was undone (its staged file vanished): the
# current holder reopens it, so the next run_effect runs it again.
REOPEN_OP = Prepared(
    update(ops_table)
    .where(
        ops.op_key == bindparam("b_op_key"),
        ops.job_id == bindparam("b_job_id"),
        ops.status == OP_SUCCEEDED,
        _job_lease_is_current,
    )
    .values(status=OP_ABANDONED, error=bindparam("b_error"))
)
SUCCEEDED_RESULT = Prepared(
    select(ops.result_json).where(ops.op_key == bindparam("b_op_key"), ops.status == OP_SUCCEEDED)
)
_live_holder_of_op = exists(
    select(jobs.job_id).where(
        jobs.job_id == ops.job_id, jobs.lease_until >= _now, jobs.lease_epoch == ops.lease_epoch
    )
)
_STALE_OP: tuple[ColumnElement[bool] | TextClause, ...] = (
    IN_PROGRESS_OPS,  # the partial index ix_artifact_ops_in_progress
    ops.started_at <= _now - bindparam("threshold_s", type_=ops.started_at.type),
    ~_live_holder_of_op,
)
ABANDON_STALE_OPS = Prepared(
    update(ops_table)
    .where(*_STALE_OP)
    .values(status=OP_ABANDONED, finished_at=_now, error=bindparam("b_error"))
    .returning(ops.op_key)
)
COUNT_STALE_OPS = Prepared(select(func.count()).select_from(ops_table).where(*_STALE_OP))
_ended_before = select(jobs.job_id).where(
    or_(jobs.state.in_(sorted(s.value for s in SUCCESS_STATES)), and_(*_EXHAUSTED)),
    jobs.updated_at < bindparam("cutoff", type_=jobs.updated_at.type),
)
DELETE_OPS_OF_ENDED_JOBS = Prepared(delete(ops_table).where(ops.job_id.in_(_ended_before)))
ABANDON_OPS_OF_JOBS = Prepared(
    update(ops_table)
    .where(
        ops.job_id.in_(bindparam("job_ids", expanding=True)),
        ops.status.in_([OP_SUCCEEDED, OP_IN_PROGRESS]),
    )
    .values(status=OP_ABANDONED, error=bindparam("b_error"))
    .returning(ops.op_key)
)

# === reports: operators' questions, read-only, each answered from an index ===============


class IndexedBy(TableClause):
    """A table read through one named index: ``FROM t INDEXED BY ix`` on SQLite, ``t`` elsewhere.

    SQLite's planner, without statistics (docstokg never runs ANALYZE there),
    prefers the (state, updated_at) index for "state = 'FAILED'", whose
    equality looks selective, and then reads every FAILED row from the table:
    seconds on a cold million-job file, against milliseconds from the small
    covering partial index.  SQLAlchemy renders no index hint for SQLite, so
    this construct does; PostgreSQL's planner has statistics and needs none.
    """

    __visit_name__ = "indexed_by"
    inherit_cache = True
    # SQLAlchemy's cache key: the index is part of the statement's identity.
    _traverse_internals = [  # noqa: RUF012 (the base class declares it a list)
        *TableClause._traverse_internals,
        ("index", InternalTraversal.dp_string),
    ]

    def __init__(self, table: Table, index: str) -> None:
        super().__init__(table.name, *(column(c.name, c.type) for c in table.c))
        self.index = index


def _table(element: IndexedBy, compiler: SQLCompiler, **kw: Any) -> str:
    """The table as SQLAlchemy renders any table."""
    rendered: str = compiler.visit_table(element, **kw)  # type: ignore[no-untyped-call]
    return rendered


@compiles(IndexedBy)
def _plain_table(element: IndexedBy, compiler: SQLCompiler, **kw: Any) -> str:
    return _table(element, compiler, **kw)


@compiles(IndexedBy, "sqlite")
def _sqlite_indexed_by(element: IndexedBy, compiler: SQLCompiler, **kw: Any) -> str:
    rendered = _table(element, compiler, **kw)
    if not kw.get("asfrom"):
        return rendered
    return f"{rendered} INDEXED BY {compiler.preparer.quote(element.index)}"


# FAILED jobs, read off the covering partial index ix_artifact_jobs_failed.
_failed = IndexedBy(jobs_table, "ix_artifact_jobs_failed").c
_failed_exhausted = _failed.attempts >= _failed.max_attempts
_created_since = bindparam("since", type_=jobs.created_at.type)
_SUCCESS_VALUES = sorted(state.value for state in SUCCESS_STATES)

# Grouped by an expression, not the column: otherwise SQLite walks the whole
# (state, ...) index to avoid a sort, reading every row's created_at, instead
# of the few index entries created since.
_state_expression = (jobs.state + "").label("state")


# Each report on jobs comes twice: over the ledger, and over one manifest's jobs.
def _jobs_per_state(*where: ColumnElement[bool]) -> Prepared:
    return Prepared(select(jobs.state, func.count()).where(*where).group_by(jobs.state))


def _jobs_per_state_created_since(*where: ColumnElement[bool]) -> Prepared:
    return Prepared(
        select(_state_expression, func.count())
        .where(jobs.created_at >= _created_since, *where)
        .group_by(_state_expression)
    )


def _exhausted_count(*where: ColumnElement[bool]) -> Prepared:
    return Prepared(select(func.count()).where(FAILED_JOBS, _failed_exhausted, *where))


def _failure_groups(*where: ColumnElement[bool]) -> Prepared:
    return Prepared(
        select(_failed.last_error, _failed_exhausted, func.count())
        .where(FAILED_JOBS, *where)
        .group_by(_failed.last_error, _failed_exhausted)
    )


def _finished_since(*where: ColumnElement[bool]) -> Prepared:
    return Prepared(
        select(func.count()).where(
            jobs.state.in_(_SUCCESS_VALUES),
            jobs.updated_at >= bindparam("since", type_=jobs.updated_at.type),
            *where,
        )
    )


JOBS_PER_STATE_IN_MANIFEST = _jobs_per_state(IN_MANIFEST)
JOBS_PER_STATE_CREATED_SINCE = _jobs_per_state_created_since()
JOBS_PER_STATE_CREATED_SINCE_IN_MANIFEST = _jobs_per_state_created_since(IN_MANIFEST)
EXHAUSTED_COUNT = _exhausted_count()
EXHAUSTED_COUNT_IN_MANIFEST = _exhausted_count(_member(_failed.job_id))
EXHAUSTED_COUNT_CREATED_SINCE = _exhausted_count(_failed.created_at >= _created_since)
EXHAUSTED_COUNT_CREATED_SINCE_IN_MANIFEST = _exhausted_count(
    _failed.created_at >= _created_since, _member(_failed.job_id)
)
FAILURE_GROUPS = _failure_groups()
FAILURE_GROUPS_IN_MANIFEST = _failure_groups(_member(_failed.job_id))
_held = jobs.lease_until.is_not(None)
LEASE_COUNT = Prepared(select(func.count()).where(_held))
LEASES = Prepared(
    select(
        jobs.job_id,
        jobs.lease_owner,
        jobs.state,
        jobs.lease_until,
        jobs.lease_epoch,
        jobs.work_id,
        jobs.artifact_id,
    )
    .where(_held)
    .order_by(jobs.lease_until, jobs.job_id)
    .limit(bindparam("b_limit", type_=Integer))
)
LIVE_LEASE_COUNT = Prepared(select(func.count()).where(jobs.lease_until >= _now))
EXPIRED_LEASE_COUNT = Prepared(select(func.count()).where(jobs.lease_until < _now))
FINISHED_SINCE = _finished_since()
FINISHED_SINCE_IN_MANIFEST = _finished_since(IN_MANIFEST)
# Ops whose step ran more than once, from the partial index ix_artifact_ops_retried.
RETRIES = Prepared(
    select(
        func.count(func.distinct(ops.job_id)), func.coalesce(func.sum(ops.attempt - 1), 0)
    ).where(RETRIED_OPS)
)
RERUNS_PER_KIND = Prepared(
    select(ops.op_type, func.sum(ops.attempt - 1)).where(RETRIED_OPS).group_by(ops.op_type)
)
ABANDONED_OPS = Prepared(
    select(func.count()).select_from(ops_table).where(UNHEALTHY_OPS, ops.status == OP_ABANDONED)
)
FAILED_OPS_PER_KIND = Prepared(
    select(ops.op_type, func.count())
    .where(UNHEALTHY_OPS, ops.status == OP_FAILED)
    .group_by(ops.op_type)
)


def _op_kinds() -> Any:
    """The op kinds with finished runs, by skipping along the duration index.

    A recursive query asks the index for the next kind after the last one:
    one probe per kind instead of a scan of every op.
    """
    first = (
        select(func.min(ops.op_type).label("kind")).where(TIMED_OPS).cte("kinds", recursive=True)
    )
    following = (
        select(ops.op_type)
        .where(TIMED_OPS, ops.op_type > first.c.kind)
        .order_by(ops.op_type)
        .limit(1)
        .scalar_subquery()
    )
    kinds = first.union_all(select(following).where(first.c.kind.is_not(None)))
    return select(kinds.c.kind).where(kinds.c.kind.is_not(None))


OP_KINDS = Prepared(_op_kinds())
_of_kind = and_(TIMED_OPS, ops.op_type == bindparam("b_kind"))
TIMED_COUNT_OF_KIND = Prepared(select(func.count()).select_from(ops_table).where(_of_kind))
# The duration at a rank, read off the index (op_type, duration_s) in order.
DURATION_AT_RANK = Prepared(
    select(ops.duration_s)
    .where(_of_kind)
    .order_by(ops.op_type, ops.duration_s)
    .limit(1)
    .offset(bindparam("b_rank", type_=Integer))
)


@cache
def duration_histogram(buckets: int) -> Prepared:
    """Per op kind: count, sum, and how many durations are <= ``bound_{n}`` for each bucket."""
    columns = [
        func.sum(case((ops.duration_s <= bindparam(f"bound_{n}", type_=Double), 1), else_=0))
        for n in range(buckets)
    ]
    return Prepared(
        select(ops.op_type, func.count(), func.sum(ops.duration_s), *columns)
        .where(TIMED_OPS)
        .group_by(ops.op_type)
    )


# === the database itself ==================================================================

# PostgreSQL's own clock, so that workers on machines whose clocks drift agree
# on when a lease expires.
DATABASE_NOW = Prepared(select(func.extract("epoch", func.clock_timestamp())))
POSTGRESQL_DATABASE_BYTES = Prepared(select(func.pg_database_size(func.current_database())))
SQLITE_PAGE_COUNT = Prepared(text("PRAGMA page_count"))
SQLITE_PAGE_SIZE = Prepared(text("PRAGMA page_size"))
