"""All the SQL of docstokg.

Repositories add and query; they never commit (the unit of work owns the
transaction).  They run SQLAlchemy Core statements, built once at import and
compiled once per dialect by SQLAlchemy's cache, on the unit of work's
connection: a hot path costs one round trip per statement and no ORM
bookkeeping, and every result leaves as an immutable record.  The few places
where SQLite and PostgreSQL need different SQL are chosen here, once per
repository, from the connection's dialect.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import fields
from itertools import islice
from typing import Any

from sqlalchemy import Connection, bindparam, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite

from docstokg.errors import JobNotFound, LedgerError
from docstokg.keys import job_key
from docstokg.ledger.models import jobs_table, ops_table
from docstokg.ledger.records import JobRecord, JobSpec, OpRecord, PlannedJob
from docstokg.states import JobState

PLAN_BATCH_SIZE = 2_000

# Selected in the records' field order, so a row maps onto a record positionally.
_JOB_COLUMNS = tuple(jobs_table.c[field.name] for field in fields(JobRecord))
_OP_COLUMNS = tuple(ops_table.c[field.name] for field in fields(OpRecord))
_JOB_TRIPLE = ("work_id", "artifact_id", "canonical_url")
_PLAN_COLUMNS = (
    "job_id",
    *_JOB_TRIPLE,
    "state",
    "created_at",
    "updated_at",
    "idempotency_key",
)


def job_id_for(idempotency_key: str) -> str:
    """The job_id of a new job: the first 128 bits of its key, spelled as a UUID.

    Derived rather than random so that the same job has the same id in every
    ledger it is planned into (a SQLite trial and the PostgreSQL production
    run, a ledger rebuilt from its manifest).  Jobs adopted from v3 keep theirs.
    """
    k = idempotency_key
    return f"{k[:8]}-{k[8:12]}-{k[12:16]}-{k[16:20]}-{k[20:32]}"


def _plan_params(spec: JobSpec, now: float) -> dict[str, object]:
    key = job_key(spec.work_id, spec.artifact_id, spec.canonical_url)
    return {
        "job_id": job_id_for(key),
        "work_id": spec.work_id,
        "artifact_id": spec.artifact_id,
        "canonical_url": spec.canonical_url,
        "state": JobState.PLANNED.value,
        "created_at": now,
        "updated_at": now,
        "idempotency_key": key,
    }


_STATE_AT = [field.name for field in fields(JobRecord)].index("state")


def _job(row: Sequence[Any]) -> JobRecord:
    values = list(row)
    values[_STATE_AT] = JobState(values[_STATE_AT])
    return JobRecord(*values)


def _op(row: Sequence[Any]) -> OpRecord:
    return OpRecord(*row)


def _batches(items: Iterable[JobSpec], size: int) -> Iterator[list[JobSpec]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


# --- statements -------------------------------------------------------------------------

# No conflict target: job_id, idempotency_key and the triple all identify the
# same job, and two planners racing on it may collide on any of the three
# first (PostgreSQL raises for a violation outside a named arbiter).  A
# conflict that is not a repeat of the triple is caught by plan()'s lookup.
_DIALECTS = {"sqlite": sqlite, "postgresql": postgresql}
_PLAN_ONE = {
    name: dialect.insert(jobs_table).on_conflict_do_nothing().returning(jobs_table.c.job_id)
    for name, dialect in _DIALECTS.items()
}
_SQLITE_PLAN_MANY = sqlite.insert(jobs_table).on_conflict_do_nothing()
_unnested = (
    func.unnest(
        *(
            bindparam(f"{name}_values", type_=postgresql.ARRAY(jobs_table.c[name].type))
            for name in _PLAN_COLUMNS
        )
    )
    .table_valued(*_PLAN_COLUMNS)
    .render_derived()
)
_POSTGRESQL_PLAN_MANY = (
    postgresql.insert(jobs_table)
    .from_select(_PLAN_COLUMNS, select(*(_unnested.c[name] for name in _PLAN_COLUMNS)))
    .on_conflict_do_nothing()
    .returning(jobs_table.c.job_id)
)
_FIND_BY_TRIPLE = select(jobs_table.c.job_id).where(
    *(jobs_table.c[name] == bindparam(name) for name in _JOB_TRIPLE)
)
# The op row is written only if its job exists: no foreign-key error to decode.
_ADD_OP = {
    name: dialect.insert(ops_table)
    .from_select(
        ["op_key", "job_id", "op_type", "started_at"],
        select(
            bindparam("op_key"),
            jobs_table.c.job_id,
            bindparam("op_type"),
            bindparam("started_at", type_=ops_table.c.started_at.type),
        ).where(jobs_table.c.job_id == bindparam("job_id")),
    )
    .on_conflict_do_nothing(index_elements=["op_key"])
    .returning(ops_table.c.op_key)
    for name, dialect in _DIALECTS.items()
}
_JOB_EXISTS = select(literal(1)).where(jobs_table.c.job_id == bindparam("job_id"))


class JobRepository:
    """Rows of ``artifact_jobs``."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._dialect = connection.dialect.name
        self._plan_one = _PLAN_ONE[self._dialect]

    def get(self, job_id: str) -> JobRecord | None:
        row = self._connection.execute(
            select(*_JOB_COLUMNS).where(jobs_table.c.job_id == job_id)
        ).first()
        return None if row is None else _job(row)

    def get_by_key(self, idempotency_key: str) -> JobRecord | None:
        row = self._connection.execute(
            select(*_JOB_COLUMNS).where(jobs_table.c.idempotency_key == idempotency_key)
        ).first()
        return None if row is None else _job(row)

    def plan(self, spec: JobSpec, *, now: float) -> PlannedJob:
        """Insert the job unless its (work_id, artifact_id, canonical_url) exists.

        Exactly one row per triple however many processes race: the database's
        unique constraint decides, and the loser reads the winner's job_id.
        """
        inserted = self._connection.execute(self._plan_one, _plan_params(spec, now)).first()
        if inserted is not None:
            return PlannedJob(job_id=inserted.job_id, created=True)
        # Looked up by the triple, not the key: a database adopted from v3 may
        # hold keys that an older key format computed.
        existing = self._connection.execute(
            _FIND_BY_TRIPLE,
            {"work_id": spec.work_id, "artifact_id": spec.artifact_id,
             "canonical_url": spec.canonical_url},
        ).scalar_one_or_none()  # fmt: skip
        if existing is None:
            key = job_key(spec.work_id, spec.artifact_id, spec.canonical_url)
            raise LedgerError(
                f"cannot plan {spec}: another job already holds its idempotency key or "
                "job_id, so the ledger was edited by hand or is corrupt; look for the row "
                f"with idempotency_key = '{key}' or job_id = '{job_id_for(key)}'"
            )
        return PlannedJob(job_id=existing, created=False)

    def plan_many(
        self, specs: Iterable[JobSpec], *, now: float, batch_size: int = PLAN_BATCH_SIZE
    ) -> int:
        """Plan every spec not yet planned; returns how many rows were new."""
        plan_batch = (
            self._plan_batch_postgresql
            if self._dialect == "postgresql"
            else self._plan_batch_sqlite
        )
        return sum(
            plan_batch([_plan_params(spec, now) for spec in batch])
            for batch in _batches(specs, batch_size)
        )

    def _plan_batch_sqlite(self, rows: list[dict[str, object]]) -> int:
        # One prepared statement run by the driver's executemany loop; SQLite
        # counts the rows it really inserted, conflicts excluded.
        result = self._connection.execute(_SQLITE_PLAN_MANY, rows)
        return result.rowcount

    def _plan_batch_postgresql(self, rows: list[dict[str, object]]) -> int:
        # One statement per batch: the columns travel as arrays and unnest()
        # turns them back into rows, an order of magnitude fewer round trips
        # than a row-by-row executemany.
        arrays = {f"{name}_values": [row[name] for row in rows] for name in _PLAN_COLUMNS}
        return len(self._connection.execute(_POSTGRESQL_PLAN_MANY, arrays).all())

    def count_by_state(self) -> dict[JobState, int]:
        """Jobs per state, with every state present (zero where none)."""
        counts = dict.fromkeys(JobState, 0)
        rows = self._connection.execute(
            select(jobs_table.c.state, func.count()).group_by(jobs_table.c.state)
        )
        for state, count in rows:
            counts[JobState(state)] = count
        return counts

    def list_by_state(
        self, state: JobState, *, limit: int = 100, offset: int = 0
    ) -> list[JobRecord]:
        """Jobs in ``state``, oldest first."""
        rows = self._connection.execute(
            select(*_JOB_COLUMNS)
            .where(jobs_table.c.state == state.value)
            .order_by(jobs_table.c.created_at, jobs_table.c.job_id)
            .limit(limit)
            .offset(offset)
        )
        return [_job(row) for row in rows]


class OpRepository:
    """Rows of ``artifact_ops``: one per effect of a job, keyed by op_key."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._add = _ADD_OP[connection.dialect.name]

    def add(self, *, op_key: str, job_id: str, op_type: str, now: float) -> bool:
        """Record that an op started; False if ``op_key`` is already recorded.

        Raises :class:`JobNotFound` if there is no such job.
        """
        inserted = self._connection.execute(
            self._add, {"op_key": op_key, "job_id": job_id, "op_type": op_type, "started_at": now}
        ).first()
        if inserted is not None:
            return True
        if self._connection.execute(_JOB_EXISTS, {"job_id": job_id}).first() is None:
            raise JobNotFound(job_id)
        return False

    def get(self, op_key: str) -> OpRecord | None:
        row = self._connection.execute(
            select(*_OP_COLUMNS).where(ops_table.c.op_key == op_key)
        ).first()
        return None if row is None else _op(row)

    def finish(self, op_key: str, *, result_code: str, result_json: str | None, now: float) -> bool:
        """Record an op's result once; False if it is unknown or already finished."""
        finished = self._connection.execute(
            update(ops_table)
            .where(ops_table.c.op_key == op_key, ops_table.c.finished_at.is_(None))
            .values(finished_at=now, result_code=result_code, result_json=result_json)
            .returning(ops_table.c.op_key)
        ).first()
        return finished is not None

    def list_for_job(self, job_id: str) -> Sequence[OpRecord]:
        rows = self._connection.execute(
            select(*_OP_COLUMNS)
            .where(ops_table.c.job_id == job_id)
            .order_by(ops_table.c.started_at, ops_table.c.op_key)
        )
        return [_op(row) for row in rows]
