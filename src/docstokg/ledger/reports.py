"""Read-only questions an operator asks of the ledger, each answered from an index.

``ReportRepository`` is the SQL behind ``docstokg job status|leases|stats``
and the Prometheus metrics.  Every query is written so that it walks an index
(see revision 0005): a ledger of a million jobs and five million ops answers
in well under a second.  Like every repository it returns plain values and
records, never ORM objects, and never commits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Connection, and_, case, func, select, text

from docstokg.ledger.models import (
    FAILED_SQL,
    OP_ABANDONED,
    OP_FAILED,
    RETRIED_SQL,
    TIMED_SQL,
    UNHEALTHY_SQL,
    jobs_table,
    ops_table,
)
from docstokg.states import SUCCESS_STATES, JobState

jobs = jobs_table.c
ops = ops_table.c
_SUCCESS_VALUES = sorted(state.value for state in SUCCESS_STATES)
_EXHAUSTED_SQL = "attempts >= max_attempts"
_LEASE_COLUMNS = (
    jobs.job_id,
    jobs.lease_owner,
    jobs.state,
    jobs.lease_until,
    jobs.lease_epoch,
    jobs.work_id,
    jobs.artifact_id,
)


@dataclass(frozen=True, slots=True)
class LeaseRow:
    job_id: str
    owner: str | None
    state: JobState
    lease_until: float
    epoch: int
    work_id: str
    artifact_id: str


@dataclass(frozen=True, slots=True)
class DurationSummary:
    """Durations of an op kind's finished runs, in seconds."""

    kind: str
    count: int
    p50_s: float
    p95_s: float


@dataclass(frozen=True, slots=True)
class FailureGroup:
    """FAILED jobs sharing one last_error."""

    error: str | None
    exhausted: bool
    count: int


class ReportRepository:
    """Counts and summaries over ``artifact_jobs`` and ``artifact_ops``."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._dialect = connection.dialect.name

    def state_counts(self, *, created_since: float | None = None) -> dict[JobState, int]:
        """Jobs per state (every state present), optionally only those created since."""
        query = select(jobs.state, func.count()).group_by(jobs.state)
        if created_since is not None:
            # Grouped by an expression, not the column: otherwise SQLite walks
            # the whole (state, ...) index to avoid a sort, reading every row's
            # created_at, instead of the few index entries created since.
            state = (jobs.state + "").label("state")
            query = (
                select(state, func.count()).where(jobs.created_at >= created_since).group_by(state)
            )
        counts = dict.fromkeys(JobState, 0)
        for state, count in self._connection.execute(query):
            counts[JobState(state)] = count
        return counts

    def exhausted_count(self, *, created_since: float | None = None) -> int:
        """FAILED jobs with no attempt left (the others will be retried)."""
        sql = f"SELECT count(*) FROM {self._failed_jobs} WHERE {FAILED_SQL} AND {_EXHAUSTED_SQL}"
        params = {}
        if created_since is not None:
            sql += " AND created_at >= :since"
            params["since"] = created_since
        return int(self._connection.execute(text(sql), params).scalar_one())

    @property
    def _failed_jobs(self) -> str:
        """FROM for questions about FAILED jobs, read off the partial index ix_artifact_jobs_failed.

        Without the hint SQLite prefers the (state, updated_at) index, whose
        "state = ?" looks selective to a planner without statistics, and then
        reads every FAILED row from the table: seconds on a cold million-job
        file, against milliseconds from the small covering index.  The SQL is
        spelled out because SQLAlchemy renders no index hints for SQLite.
        """
        if self._dialect == "sqlite":
            return "artifact_jobs INDEXED BY ix_artifact_jobs_failed"
        return "artifact_jobs"

    def leases(self, *, limit: int) -> tuple[int, list[LeaseRow]]:
        """How many jobs carry a lease, and the first ``limit`` of them, soonest expiry first."""
        held = jobs.lease_until.is_not(None)
        total = int(self._connection.execute(select(func.count()).where(held)).scalar_one())
        rows = self._connection.execute(
            select(*_LEASE_COLUMNS).where(held).order_by(jobs.lease_until, jobs.job_id).limit(limit)
        )
        return total, [
            LeaseRow(job_id, owner, JobState(state), float(until), epoch, work_id, artifact_id)
            for job_id, owner, state, until, epoch, work_id, artifact_id in rows
        ]

    def live_lease_count(self, *, now: float) -> int:
        return int(
            self._connection.execute(
                select(func.count()).where(jobs.lease_until >= now)
            ).scalar_one()
        )

    def expired_lease_count(self, *, now: float) -> int:
        return int(
            self._connection.execute(
                select(func.count()).where(jobs.lease_until < now)
            ).scalar_one()
        )

    def finished_since(self, since: float) -> int:
        """Jobs that ended in a success state at or after ``since`` (by their last update)."""
        query = select(func.count()).where(
            jobs.state.in_(_SUCCESS_VALUES), jobs.updated_at >= since
        )
        return int(self._connection.execute(query).scalar_one())

    def retries(self) -> tuple[int, int]:
        """(jobs with a step that ran more than once, the extra runs in all).

        Counted from the ops, whose attempt grows each time a step runs
        again: a retry after a failure, or a takeover after a crash.  A
        permanent failure (which uses up a job's budget at once) is no retry.
        """
        retried = text(RETRIED_SQL)  # literal: the partial index ix_artifact_ops_retried
        row = self._connection.execute(
            select(
                func.count(func.distinct(ops.job_id)),
                func.coalesce(func.sum(ops.attempt - 1), 0),
            ).where(retried)
        ).one()
        return int(row[0]), int(row[1])

    def failure_groups(self) -> list[FailureGroup]:
        """FAILED jobs grouped by their last error (and whether they are out of attempts)."""
        rows = self._connection.execute(
            text(
                f"SELECT last_error, {_EXHAUSTED_SQL}, count(*) FROM {self._failed_jobs} "
                f"WHERE {FAILED_SQL} GROUP BY last_error, {_EXHAUSTED_SQL}"
            )
        )
        return [FailureGroup(error, bool(out), count) for error, out, count in rows]

    def abandoned_ops(self) -> int:
        query = (
            select(func.count())
            .select_from(ops_table)
            .where(text(UNHEALTHY_SQL), ops.status == OP_ABANDONED)
        )
        return int(self._connection.execute(query).scalar_one())

    def step_failures(self) -> dict[str, int]:
        """Per op kind, how many of its runs did not succeed: a count that only grows.

        A run that failed and was not run again is an op FAILED now; every run
        again (attempt 2, 3...) replaced one that failed or was abandoned.
        When a FAILED op runs again the first count drops by one as the second
        grows by one, so the sum never falls (``job vacuum`` resets it).
        """
        failures: dict[str, int] = {}
        now_failed = self._connection.execute(
            select(ops.op_type, func.count())
            .where(text(UNHEALTHY_SQL), ops.status == OP_FAILED)
            .group_by(ops.op_type)
        )
        for kind, count in now_failed:
            failures[kind] = failures.get(kind, 0) + int(count)
        reruns = self._connection.execute(
            select(ops.op_type, func.sum(ops.attempt - 1))
            .where(text(RETRIED_SQL))
            .group_by(ops.op_type)
        )
        for kind, count in reruns:
            failures[kind] = failures.get(kind, 0) + int(count or 0)
        return failures

    def op_kinds(self) -> list[str]:
        """The op kinds with finished runs, by skipping along the duration index.

        A recursive query asks the index for the next kind after the last one:
        one probe per kind instead of a scan of every op.
        """
        timed = text(TIMED_SQL)
        first = (
            select(func.min(ops.op_type).label("kind")).where(timed).cte("kinds", recursive=True)
        )
        following = (
            select(ops.op_type)
            .where(timed, ops.op_type > first.c.kind)
            .order_by(ops.op_type)
            .limit(1)
            .scalar_subquery()
        )
        kinds = first.union_all(select(following).where(first.c.kind.is_not(None)))
        rows = self._connection.execute(select(kinds.c.kind).where(kinds.c.kind.is_not(None)))
        return [kind for (kind,) in rows]

    def durations(self) -> list[DurationSummary]:
        """p50 and p95 of each op kind's durations, read at their ranks in the index."""
        summaries = []
        timed = text(TIMED_SQL)
        for kind in self.op_kinds():
            of_kind = and_(timed, ops.op_type == kind)
            count = int(
                self._connection.execute(
                    select(func.count()).select_from(ops_table).where(of_kind)
                ).scalar_one()
            )
            if count == 0:
                continue
            summaries.append(
                DurationSummary(
                    kind,
                    count,
                    self._duration_at_rank(of_kind, _rank(count, 0.50)),
                    self._duration_at_rank(of_kind, _rank(count, 0.95)),
                )
            )
        return summaries

    def _duration_at_rank(self, of_kind: ColumnElement[bool], rank: int) -> float:
        value = self._connection.execute(
            select(ops.duration_s)
            .where(of_kind)
            .order_by(ops.op_type, ops.duration_s)
            .limit(1)
            .offset(rank)
        ).scalar_one()
        return float(value)

    def duration_histogram(
        self, bounds: Sequence[float]
    ) -> dict[str, tuple[list[int], int, float]]:
        """Per op kind: cumulative counts of durations <= each bound, the count, the sum.

        One pass over the duration index, for Prometheus histograms.
        """
        timed = text(TIMED_SQL)
        columns = [func.sum(case((ops.duration_s <= bound, 1), else_=0)) for bound in bounds]
        rows = self._connection.execute(
            select(ops.op_type, func.count(), func.sum(ops.duration_s), *columns)
            .where(timed)
            .group_by(ops.op_type)
        )
        return {
            kind: ([int(value or 0) for value in buckets], int(count), float(total or 0.0))
            for kind, count, total, *buckets in rows
        }

    def database_bytes(self) -> int:
        """The ledger's size on disk (SQLite: its pages; PostgreSQL: the database)."""
        if self._dialect == "postgresql":
            query = select(func.pg_database_size(func.current_database()))
            return int(self._connection.execute(query).scalar_one())
        page_count = self._connection.exec_driver_sql("PRAGMA page_count").scalar_one()
        page_size = self._connection.exec_driver_sql("PRAGMA page_size").scalar_one()
        return int(page_count) * int(page_size)


def _rank(count: int, quantile: float) -> int:
    """The 0-based rank of the nearest-rank ``quantile`` among ``count`` sorted values."""
    return max(0, min(count - 1, math.ceil(quantile * count) - 1))
