"""Read-only questions an operator asks of the ledger, each answered from an index.

``ReportRepository`` answers ``docstokg job status|leases|stats`` and the
Prometheus metrics with the named statements of the reports section of
:mod:`docstokg.ledger.statements`, each written so that it walks an index (see
revision 0005): a ledger of a million jobs and five million ops answers in
well under a second.  Like every repository it returns plain values and
records, never ORM objects, and never commits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection

from docstokg.ledger import statements as sql
from docstokg.ledger.prepared import Prepared
from docstokg.states import JobState


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

    def state_counts(
        self, *, created_since: float | None = None, manifest: str | None = None
    ) -> dict[JobState, int]:
        """Jobs per state (every state present), optionally only those created since.

        With ``manifest``, only that manifest's jobs (so in every report below).
        """
        params = {"since": created_since, "manifest": manifest}
        if created_since is None:
            statement = _pick(sql.JOBS_PER_STATE, sql.JOBS_PER_STATE_IN_MANIFEST, manifest)
        else:
            statement = _pick(
                sql.JOBS_PER_STATE_CREATED_SINCE,
                sql.JOBS_PER_STATE_CREATED_SINCE_IN_MANIFEST,
                manifest,
            )
        rows = statement.rows(self._connection, _bound(params))
        counts = dict.fromkeys(JobState, 0)
        for state, count in rows:
            counts[JobState(state)] = int(count)
        return counts

    def manifests(self) -> dict[str, int]:
        """Every manifest of the ledger, by name, with how many jobs belong to it."""
        return {str(name): int(count) for name, count in sql.MANIFEST_SIZES.rows(self._connection)}

    def exhausted_count(
        self, *, created_since: float | None = None, manifest: str | None = None
    ) -> int:
        """FAILED jobs with no attempt left (the others will be retried)."""
        params = {"since": created_since, "manifest": manifest}
        if created_since is None:
            statement = _pick(sql.EXHAUSTED_COUNT, sql.EXHAUSTED_COUNT_IN_MANIFEST, manifest)
        else:
            statement = _pick(
                sql.EXHAUSTED_COUNT_CREATED_SINCE,
                sql.EXHAUSTED_COUNT_CREATED_SINCE_IN_MANIFEST,
                manifest,
            )
        return int(statement.scalar(self._connection, _bound(params)))

    def leases(self, *, limit: int) -> tuple[int, list[LeaseRow]]:
        """How many jobs carry a lease, and the first ``limit`` of them, soonest expiry first."""
        total = int(sql.LEASE_COUNT.scalar(self._connection))
        rows = sql.LEASES.rows(self._connection, {"b_limit": limit})
        return total, [
            LeaseRow(job_id, owner, JobState(state), float(until), epoch, work_id, artifact_id)
            for job_id, owner, state, until, epoch, work_id, artifact_id in rows
        ]

    def live_lease_count(self, *, now: float) -> int:
        return int(sql.LIVE_LEASE_COUNT.scalar(self._connection, {"now": now}))

    def expired_lease_count(self, *, now: float) -> int:
        return int(sql.EXPIRED_LEASE_COUNT.scalar(self._connection, {"now": now}))

    def finished_since(self, since: float, *, manifest: str | None = None) -> int:
        """Jobs that ended in a success state at or after ``since`` (by their last update)."""
        statement = _pick(sql.FINISHED_SINCE, sql.FINISHED_SINCE_IN_MANIFEST, manifest)
        return int(
            statement.scalar(self._connection, _bound({"since": since, "manifest": manifest}))
        )

    def retries(self) -> tuple[int, int]:
        """(jobs with a step that ran more than once, the extra runs in all).

        Counted from the ops, whose attempt grows each time a step runs
        again: a retry after a failure, or a takeover after a crash.  A
        permanent failure (which uses up a job's budget at once) is no retry.
        """
        row = sql.RETRIES.first(self._connection)
        assert row is not None  # an aggregate always has its row
        return int(row[0]), int(row[1])

    def failure_groups(self, *, manifest: str | None = None) -> list[FailureGroup]:
        """FAILED jobs grouped by their last error (and whether they are out of attempts)."""
        statement = _pick(sql.FAILURE_GROUPS, sql.FAILURE_GROUPS_IN_MANIFEST, manifest)
        rows = statement.rows(self._connection, _bound({"manifest": manifest}))
        return [FailureGroup(error, bool(out), int(count)) for error, out, count in rows]

    def abandoned_ops(self) -> int:
        return int(sql.ABANDONED_OPS.scalar(self._connection))

    def step_failures(self) -> dict[str, int]:
        """Per op kind, how many of its runs did not succeed: a count that only grows.

        A run that failed and was not run again is an op FAILED now; every run
        again (attempt 2, 3...) replaced one that failed or was abandoned.
        When a FAILED op runs again the first count drops by one as the second
        grows by one, so the sum never falls (``job vacuum`` resets it).
        """
        failures: dict[str, int] = {}
        for statement in (sql.FAILED_OPS_PER_KIND, sql.RERUNS_PER_KIND):
            for kind, count in statement.rows(self._connection):
                failures[kind] = failures.get(kind, 0) + int(count or 0)
        return failures

    def op_kinds(self) -> list[str]:
        """The op kinds with finished runs (one index probe per kind)."""
        return sql.OP_KINDS.column(self._connection)

    def durations(self) -> list[DurationSummary]:
        """p50 and p95 of each op kind's durations, read at their ranks in the index."""
        summaries = []
        for kind in self.op_kinds():
            count = int(sql.TIMED_COUNT_OF_KIND.scalar(self._connection, {"b_kind": kind}))
            if count == 0:
                continue
            summaries.append(
                DurationSummary(
                    kind,
                    count,
                    self._duration_at_rank(kind, _rank(count, 0.50)),
                    self._duration_at_rank(kind, _rank(count, 0.95)),
                )
            )
        return summaries

    def _duration_at_rank(self, kind: str, rank: int) -> float:
        params = {"b_kind": kind, "b_rank": rank}
        return float(sql.DURATION_AT_RANK.scalar(self._connection, params))

    def duration_histogram(
        self, bounds: Sequence[float]
    ) -> dict[str, tuple[list[int], int, float]]:
        """Per op kind: cumulative counts of durations <= each bound, the count, the sum.

        One pass over the duration index, for Prometheus histograms.
        """
        params = {f"bound_{n}": float(bound) for n, bound in enumerate(bounds)}
        rows = sql.duration_histogram(len(bounds)).rows(self._connection, params)
        return {
            kind: ([int(value or 0) for value in buckets], int(count), float(total or 0.0))
            for kind, count, total, *buckets in rows
        }

    def database_bytes(self) -> int:
        """The ledger's size on disk (SQLite: its pages; PostgreSQL: the database)."""
        if self._dialect == "postgresql":
            return int(sql.POSTGRESQL_DATABASE_BYTES.scalar(self._connection))
        page_count = sql.SQLITE_PAGE_COUNT.scalar(self._connection)
        page_size = sql.SQLITE_PAGE_SIZE.scalar(self._connection)
        return int(page_count) * int(page_size)


def _pick(over_all: Prepared, in_manifest: Prepared, manifest: str | None) -> Prepared:
    """The report over the whole ledger, or its twin over one manifest's jobs."""
    return over_all if manifest is None else in_manifest


def _bound(params: Mapping[str, object]) -> dict[str, object]:
    """The parameters that are set (a statement is given only those it binds)."""
    return {name: value for name, value in params.items() if value is not None}


def _rank(count: int, quantile: float) -> int:
    """The 0-based rank of the nearest-rank ``quantile`` among ``count`` sorted values."""
    return max(0, min(count - 1, math.ceil(quantile * count) - 1))
