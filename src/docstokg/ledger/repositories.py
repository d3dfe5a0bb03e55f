"""Repositories: the only code that runs SQL.

Repositories add and query; they never commit (the unit of work owns the
transaction).  They build no SQL: they call the named statements of
:mod:`docstokg.ledger.statements` on the unit of work's connection, through
the one executor (:mod:`docstokg.ledger.prepared`): a call costs one round
trip and no ORM bookkeeping, and every result leaves as an immutable record.
Writes made on behalf of a lease holder are fenced: they name the holder's
(job_id, owner, epoch) and report whether they took effect.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any

from sqlalchemy import Connection

from docstokg.errors import JobNotFound, LedgerError
from docstokg.iterables import batched
from docstokg.keys import job_id_for, job_key
from docstokg.ledger import statements as sql
from docstokg.ledger.models import OP_FAILED, OP_IN_PROGRESS, OP_SUCCEEDED
from docstokg.ledger.records import (
    JobRecord,
    JobSpec,
    Lease,
    OpRecord,
    OpWrite,
    PlannedJob,
    StoredFile,
)
from docstokg.states import SUCCESS_STATES, JobState

PLAN_BATCH_SIZE = 2_000
# Attempts a new job gets unless the planner says otherwise (the column's default too).
DEFAULT_MAX_ATTEMPTS = 5
# Ids per "job_id IN (...)" query: far below SQLite's and psycopg's parameter limits.
ID_BATCH_SIZE = 500


def _plan_params(spec: JobSpec, now: float, max_attempts: int) -> dict[str, object]:
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
        "max_attempts": max_attempts,
        "expected_sha256": spec.expected_sha256,
    }


_STATE_AT = [field.name for field in fields(JobRecord)].index("state")


def _job(row: Sequence[Any]) -> JobRecord:
    values = list(row)
    values[_STATE_AT] = JobState(values[_STATE_AT])
    return JobRecord(*values)


def _op(row: Sequence[Any]) -> OpRecord:
    return OpRecord(*row)


def _fence(lease: Lease, now: float) -> dict[str, object]:
    return {"b_job_id": lease.job_id, "owner": lease.owner, "epoch": lease.epoch, "now": now}


class JobRepository:
    """Rows of ``artifact_jobs``."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._dialect = connection.dialect.name

    # --- reading --------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        row = sql.GET_JOB.first(self._connection, {"b_job_id": job_id})
        return None if row is None else _job(row)

    def get_by_key(self, idempotency_key: str) -> JobRecord | None:
        row = sql.GET_JOB_BY_KEY.first(self._connection, {"b_key": idempotency_key})
        return None if row is None else _job(row)

    def get_many(self, job_ids: Iterable[str]) -> list[JobRecord]:
        """The jobs among ``job_ids`` that exist (in no particular order)."""
        return [
            _job(row)
            for batch in batched(job_ids, ID_BATCH_SIZE)
            for row in sql.JOBS_BY_ID.rows(self._connection, {"job_ids": batch})
        ]

    def unfinished_among(self, job_ids: Iterable[str]) -> set[str]:
        """Those of ``job_ids`` that have not ended (a success, or FAILED with no attempt left)."""
        return {
            str(job_id)
            for batch in batched(job_ids, ID_BATCH_SIZE)
            for job_id in sql.UNFINISHED_AMONG.column(self._connection, {"job_ids": batch})
        }

    def count_unfinished(self, job_ids: Iterable[str]) -> int:
        """How many of ``job_ids`` have not ended (a success, or FAILED with no attempt left)."""
        return sum(
            int(sql.COUNT_UNFINISHED.scalar(self._connection, {"job_ids": batch}))
            for batch in batched(job_ids, ID_BATCH_SIZE)
        )

    def stored_copy(self, sha256: str, *, excluding: str) -> tuple[str, str | None] | None:
        """(job_id, final_path) of the other job that is the DEDUPED owner of this content."""
        row = sql.STORED_COPY.first(self._connection, {"b_sha256": sha256, "b_job_id": excluding})
        return None if row is None else (row[0], row[1])

    def count_by_state(self) -> dict[JobState, int]:
        """Jobs per state, with every state present (zero where none)."""
        counts = dict.fromkeys(JobState, 0)
        for state, count in sql.JOBS_PER_STATE.rows(self._connection):
            counts[JobState(state)] = int(count)
        return counts

    def list_by_state(
        self, state: JobState, *, limit: int = 100, offset: int = 0
    ) -> list[JobRecord]:
        """Jobs in ``state``, oldest first."""
        params = {"b_state": state.value, "b_limit": limit, "b_offset": offset}
        return [_job(row) for row in sql.JOBS_IN_STATE.rows(self._connection, params)]

    # --- planning -------------------------------------------------------------------

    def plan(
        self, spec: JobSpec, *, now: float, max_attempts: int = DEFAULT_MAX_ATTEMPTS
    ) -> PlannedJob:
        """Insert the job unless its (work_id, artifact_id, canonical_url) exists.

        Exactly one row per triple however many processes race: the database's
        unique constraint decides, and the loser reads the winner's job_id.
        """
        inserted = sql.PLAN_ONE.first(self._connection, _plan_params(spec, now, max_attempts))
        if inserted is not None:
            return PlannedJob(job_id=inserted[0], created=True)
        # Looked up by the triple, not the key: a database adopted from v3 may
        # hold keys that an older key format computed.
        existing = sql.FIND_BY_TRIPLE.scalar(
            self._connection,
            {"work_id": spec.work_id, "artifact_id": spec.artifact_id,
             "canonical_url": spec.canonical_url},
        )  # fmt: skip
        if existing is None:
            key = job_key(spec.work_id, spec.artifact_id, spec.canonical_url)
            raise LedgerError(
                f"cannot plan {spec}: another job already holds its idempotency key or "
                "job_id, so the ledger was edited by hand or is corrupt; look for the row "
                f"with idempotency_key = '{key}' or job_id = '{job_id_for(key)}'"
            )
        return PlannedJob(job_id=existing, created=False)

    def plan_many(
        self,
        specs: Iterable[JobSpec],
        *,
        now: float,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        batch_size: int = PLAN_BATCH_SIZE,
    ) -> int:
        """Plan every spec not yet planned; returns how many rows were new.

        ``max_attempts`` is the budget of the new jobs; planned ones keep theirs.
        """
        if self._dialect == "postgresql":
            plan_batch = self._plan_batch_postgresql
        else:
            plan_batch = self._plan_batch_sqlite
        return sum(
            plan_batch([_plan_params(spec, now, max_attempts) for spec in batch])
            for batch in batched(specs, batch_size)
        )

    def _plan_batch_sqlite(self, rows: list[dict[str, object]]) -> int:
        # One prepared statement run by the driver's executemany loop; SQLite
        # counts the rows it really inserted, conflicts excluded.
        return sql.SQLITE_PLAN_MANY.many(self._connection, rows)

    def _plan_batch_postgresql(self, rows: list[dict[str, object]]) -> int:
        # One statement per batch: the columns travel as arrays and unnest()
        # turns them back into rows, an order of magnitude fewer round trips
        # than a row-by-row executemany.
        arrays = {f"{name}_values": [row[name] for row in rows] for name in sql.PLAN_COLUMNS}
        return len(sql.POSTGRESQL_PLAN_MANY.rows(self._connection, arrays))

    # --- leases ---------------------------------------------------------------------

    def add_to_manifest(self, manifest: str, job_ids: Collection[str], *, now: float) -> int:
        """Make these planned jobs members of ``manifest``; returns how many were not yet."""
        if not job_ids:
            return 0
        params = {"manifest": manifest, "job_ids": list(job_ids), "now": now}
        return sql.ADD_TO_MANIFEST.count(self._connection, params)

    def manifests_of(self, job_id: str) -> list[str]:
        """The manifests this job belongs to, by name."""
        return [
            str(name)
            for name in sql.MANIFESTS_OF_JOB.column(self._connection, {"b_job_id": job_id})
        ]

    def claim(
        self, *, owner: str, ttl_s: float, now: float, among: Collection[str] | None = None
    ) -> Lease | None:
        """Grant the oldest claimable job to ``owner``, or None if there is none.

        With ``among``, only one of those job ids (a run's own jobs, a window
        at a time: an empty window claims nothing).  Taking over a job whose
        holder's lease expired mid-step costs it an attempt; a job that had
        none left ends FAILED there and the next one is tried (each such job
        is claimable once: the loop ends).
        """
        params: dict[str, object] = {"owner": owner, "ttl_s": ttl_s, "now": now}
        statement = sql.CLAIM
        if among is not None:
            if not among:
                return None
            statement, params["candidates"] = sql.CLAIM_AMONG, list(among)
        while (row := statement.first(self._connection, params)) is not None:
            if row[1] is not None:  # granted, not given up
                break
        if row is None:
            return None
        job_id, owner, epoch, lease_until, work_id, artifact_id, url, state, expected = row
        return Lease(
            job_id,
            owner,
            epoch,
            float(lease_until),
            work_id,
            artifact_id,
            url,
            JobState(state),
            expected,
        )

    def renew(self, lease: Lease, *, ttl_s: float, now: float) -> float | None:
        """Extend the lease; None if another holder or a cleanup took it, or it finished."""
        row = sql.RENEW.first(self._connection, {**_fence(lease, now), "ttl_s": ttl_s})
        return None if row is None else float(row[0])

    def release(self, lease: Lease) -> bool:
        return sql.RELEASE.count(self._connection, _fence(lease, 0.0)) == 1

    def release_owner(self, owner: str) -> int:
        """Hand back every lease ``owner`` holds; returns how many (a release costs no attempt)."""
        return sql.RELEASE_OWNER.count(self._connection, {"owner": owner})

    def holds(self, lease: Lease, *, now: float) -> bool:
        """Is ``lease`` the job's current, unexpired lease?"""
        return sql.HOLDS_LEASE.first(self._connection, _fence(lease, now)) is not None

    def advance(
        self, lease: Lease, *, to_state: JobState, allowed_from: Collection[JobState], now: float
    ) -> bool:
        """Move the job to ``to_state`` if it is in ``allowed_from`` and the lease is current."""
        origins = [state.value for state in allowed_from]
        if not origins:
            return False
        params = {
            **_fence(lease, now),
            "to_state": to_state.value,
            "finishes": to_state in SUCCESS_STATES,
            **{slot: origins[n % len(origins)] for n, slot in enumerate(sql.ADVANCE_FROM_SLOTS)},
        }
        return sql.ADVANCE.count(self._connection, params) == 1

    def fail(
        self,
        lease: Lease,
        *,
        error: str,
        exhaust: bool,
        next_attempt_at: float | None,
        now: float,
    ) -> tuple[int, int] | None:
        """FAILED, lease ended; returns (attempts, max_attempts), or None if fenced out."""
        row = sql.FAIL.first(
            self._connection,
            {**_fence(lease, now), "b_error": error, "exhaust": exhaust,
             "b_next_attempt_at": next_attempt_at},
        )  # fmt: skip
        return None if row is None else (int(row[0]), int(row[1]))

    def record_result(
        self,
        lease: Lease,
        *,
        sha256: str,
        final_path: str,
        size_bytes: int,
        content_type: str | None = None,
        now: float,
    ) -> bool:
        params = {**_fence(lease, now), "b_sha256": sha256, "b_final_path": final_path,
                  "b_size_bytes": size_bytes, "b_content_type": content_type}  # fmt: skip
        return sql.RECORD_RESULT.count(self._connection, params) == 1

    # --- maintenance ----------------------------------------------------------------

    def expire_stale_leases(self, *, now: float) -> int:
        return len(sql.EXPIRE_STALE_LEASES.rows(self._connection, {"now": now}))

    def live_leases(self, job_ids: Collection[str], *, now: float) -> set[str]:
        """Those of ``job_ids`` that hold an unexpired lease."""
        if not job_ids:
            return set()
        params = {"job_ids": list(job_ids), "now": now}
        return set(sql.LIVE_LEASES.column(self._connection, params))

    def finalized_files(self, *, now: float) -> list[tuple[str, str]]:
        """(job_id, final_path) of FINALIZED/INDEXED jobs that no live lease holds."""
        rows = sql.FINALIZED_FILES.rows(self._connection, {"now": now})
        return [(job_id, final_path) for job_id, final_path in rows]

    def refill_attempts(self, job_ids: Collection[str] | None, *, now: float) -> list[str]:
        """Give exhausted FAILED jobs (those of ``job_ids``, or all) a fresh attempt budget."""
        if job_ids is None:
            return sql.REFILL_ALL_EXHAUSTED.column(self._connection, {"now": now})
        return [
            job_id
            for batch in batched(job_ids, ID_BATCH_SIZE)
            for job_id in sql.REFILL_EXHAUSTED.column(
                self._connection, {"job_ids": batch, "now": now}
            )
        ]

    def count_expired_leases(self, *, now: float) -> int:
        return len(sql.EXPIRED_LEASES.rows(self._connection, {"now": now}))

    def requeue(self, job_ids: Collection[str], *, error: str, now: float) -> list[str]:
        """Send jobs whose file was stored back to FAILED, so they are fetched again.

        Finalized, indexed and ended (DEDUPED, SKIPPED_DUPLICATE) jobs that no
        live lease holds; each keeps at least one attempt.  Returns those sent.
        """
        requeued: list[str] = []
        for batch in batched(job_ids, ID_BATCH_SIZE):
            params = {"job_ids": batch, "b_error": error, "now": now}
            requeued.extend(sql.REQUEUE.column(self._connection, params))
        return requeued

    def set_expected_sha256(self, expected: Mapping[str, str | None], *, now: float) -> None:
        """Record the checksum each job's manifest row now names (None: none)."""
        if expected:
            sql.SET_EXPECTED_SHA256.many(
                self._connection,
                [
                    {"b_job_id": job_id, "b_expected": sha, "now": now}
                    for job_id, sha in expected.items()
                ],
            )

    def stored_files(self) -> list[StoredFile]:
        """Every ended job's file as recorded (DEDUPED and SKIPPED_DUPLICATE jobs)."""
        return [StoredFile(*row) for row in sql.STORED_FILES.rows(self._connection)]


class MetaRepository:
    """Facts about the ledger itself (``_meta``): written once, then only read."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def get(self, key: str) -> str | None:
        value: str | None = sql.GET_META.scalar(self._connection, {"b_key": key})
        return value

    def put_if_absent(self, key: str, value: str) -> str:
        """Record ``key`` unless it is set already; returns the value that holds."""
        sql.PUT_META_IF_ABSENT.count(self._connection, {"b_key": key, "b_value": value})
        held = self.get(key)
        assert held is not None  # just written, or written before: the row is there
        return held


class OpRepository:
    """Rows of ``artifact_ops``: one per effect of a job, keyed by op_key."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def add(self, *, op_key: str, job_id: str, op_type: str, now: float) -> bool:
        """Record that an op started (unfenced); False if ``op_key`` is already recorded.

        Raises :class:`JobNotFound` if there is no such job.
        """
        inserted = sql.ADD_OP.first(
            self._connection,
            {"b_op_key": op_key, "b_job_id": job_id, "b_op_type": op_type, "b_started_at": now},
        )
        if inserted is not None:
            return True
        if sql.JOB_EXISTS.first(self._connection, {"b_job_id": job_id}) is None:
            raise JobNotFound(job_id)
        return False

    def get(self, op_key: str) -> OpRecord | None:
        row = sql.GET_OP.first(self._connection, {"b_op_key": op_key})
        return None if row is None else _op(row)

    def finish(self, op_key: str, *, result_code: str, result_json: str | None, now: float) -> bool:
        """Record an op's result once (unfenced); False if it is unknown or already finished."""
        params = {
            "b_op_key": op_key, "now": now, "b_result_code": result_code,
            "b_result_json": result_json,
            "b_status": OP_SUCCEEDED if result_code == "OK" else OP_FAILED,
        }  # fmt: skip
        return sql.FINISH_OP.count(self._connection, params) == 1

    def list_for_job(self, job_id: str) -> Sequence[OpRecord]:
        return [_op(row) for row in sql.OPS_OF_JOB.rows(self._connection, {"b_job_id": job_id})]

    # --- fenced effect bookkeeping ------------------------------------------------------

    def start(self, lease: Lease, *, op_key: str, op_type: str, now: float) -> bool:
        """Mark the op IN_PROGRESS under ``lease``; True if it started.

        A new op is inserted; one that is not a success (its holder died, lost
        the lease, or it failed) is taken over, its attempt counted.  False
        when the lease is not current or the op already succeeded; the caller
        tells which apart.
        """
        params = {**_fence(lease, now), "b_op_key": op_key, "b_op_type": op_type}
        if sql.START_OP.count(self._connection, params) == 1:
            return True
        return sql.RESTART_OP.count(self._connection, params) == 1

    def record(self, writes: Sequence[OpWrite], *, now: float) -> bool:
        """Start, finish or insert done several ops in one write; True only if all of them took.

        Each row takes as :meth:`start` would start a new op, as
        :meth:`succeed` would record a running one, or (done) as a new op
        inserted SUCCEEDED: fenced by its own lease.  False if any did not (a
        lease not current, an op to start or insert that exists, an op to
        finish that is not running under that lease, one op named twice); the
        others may have taken, so the caller rolls back, reads the job and its
        ops, and plans the turn again from what they say.
        """
        if not writes:
            return True
        if len({write.op_key for write in writes}) != len(writes):
            return False
        params: dict[str, object] = {"now": now}
        for n, write in enumerate(writes):
            done = write.result_json is not None
            row = (
                write.op_key, write.op_type, OP_SUCCEEDED if done else OP_IN_PROGRESS,
                now if done else None, 0.0 if done and not write.running else None,
                "OK" if done else None, write.result_json,
                write.lease.job_id, write.lease.owner, write.lease.epoch,
            )  # fmt: skip
            params.update(zip(sql.proposed_names(n), row, strict=True))
        statement = sql.record_ops(len(writes))
        return statement.count(self._connection, params) == len(writes)

    def succeed(self, lease: Lease, *, op_key: str, result_json: str, now: float) -> bool:
        params = {**_fence(lease, now), "b_op_key": op_key, "b_result_json": result_json}
        return sql.SUCCEED_OP.count(self._connection, params) == 1

    def fail(self, lease: Lease, *, op_key: str, error: str, now: float) -> bool:
        params = {**_fence(lease, now), "b_op_key": op_key, "b_error": error}
        return sql.FAIL_OP.count(self._connection, params) == 1

    def reopen(self, lease: Lease, *, op_key: str, error: str, now: float) -> bool:
        """Mark a succeeded op of the lease's job ABANDONED, so it runs again (fenced)."""
        params = {**_fence(lease, now), "b_op_key": op_key, "b_error": error}
        return sql.REOPEN_OP.count(self._connection, params) == 1

    def succeeded_result(self, op_key: str) -> str | None:
        result: str | None = sql.SUCCEEDED_RESULT.scalar(self._connection, {"b_op_key": op_key})
        return result

    def abandon_stale(self, *, now: float, threshold_s: float, error: str) -> int:
        params = {"now": now, "threshold_s": threshold_s, "b_error": error}
        return len(sql.ABANDON_STALE_OPS.rows(self._connection, params))

    def count_stale(self, *, now: float, threshold_s: float) -> int:
        """How many IN_PROGRESS ops :meth:`abandon_stale` would mark (for a dry run)."""
        params = {"now": now, "threshold_s": threshold_s}
        return int(sql.COUNT_STALE_OPS.scalar(self._connection, params))

    def delete_for_jobs_ended_before(self, cutoff: float) -> int:
        """Delete the op rows of jobs that ended before ``cutoff``; returns how many."""
        return sql.DELETE_OPS_OF_ENDED_JOBS.count(self._connection, {"cutoff": cutoff})

    def abandon_for_jobs(self, job_ids: Collection[str], *, error: str) -> int:
        if not job_ids:
            return 0
        params = {"job_ids": list(job_ids), "b_error": error}
        return len(sql.ABANDON_OPS_OF_JOBS.rows(self._connection, params))
