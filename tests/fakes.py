"""An in-memory ledger for fast unit tests of the services (cosmicpython's fake unit of work).

:class:`FakeLedger` stands where the services take a :class:`~docstokg.Ledger`:
its ``unit_of_work()`` yields a :class:`FakeUnitOfWork` whose ``jobs`` and
``ops`` are dict-backed doubles of the real repositories.  They implement only
what planning, leasing, transitions and queries call, and they keep the real
repositories' contracts, read off the SQL of :mod:`docstokg.ledger.statements`:

- one row per (work_id, artifact_id, canonical_url), its id derived from the key;
- every write for a holder is fenced by (job_id, owner, epoch), and by an
  unexpired lease where the SQL checks ``lease_until >= now``;
- a claim takes the oldest claimable job, grows its epoch, and a takeover of
  an expired lease costs an attempt (the last one ends the job FAILED);
- nothing is visible to another unit of work until ``commit()``; leaving
  without it discards every write, as a rollback does.  Units of work run one
  after another (a commit publishes its whole copy): concurrency is the
  integration tests' business.

The real repositories stay covered by the integration tests on SQLite and
PostgreSQL; these doubles buy milliseconds of feedback for the services' logic.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TypeVar, cast

from docstokg import JobRecord, JobSpec, Lease, Ledger, OpRecord, PlannedJob
from docstokg.errors import LedgerError
from docstokg.keys import job_id_for, job_key
from docstokg.ledger.repositories import DEFAULT_MAX_ATTEMPTS
from docstokg.states import RESTART_ON_GRANT, SUCCESS_STATES, JobState

_T = TypeVar("_T")

# The step a job in each state was running: what a takeover names as lost (as the SQL does).
_STEP_OF_STATE = {
    JobState.LEASED: "HEAD",
    JobState.HEAD_DONE: "STREAM",
    JobState.RESUME_OK: "STREAM",
    JobState.STREAMING: "FINALIZE",
    JobState.FINALIZED: "INDEX",
    JobState.INDEXED: "DEDUPE",
}
_HOLDS_A_FILE = frozenset(
    {JobState.FINALIZED, JobState.INDEXED, JobState.DEDUPED, JobState.SKIPPED_DUPLICATE}
)
OP_ABANDONED = "ABANDONED"
_OPEN_OR_DONE = frozenset({"IN_PROGRESS", "SUCCEEDED"})


@dataclass
class Tables:
    """The rows of one ledger: committed, or a unit of work's own copy of them."""

    jobs: dict[str, JobRecord] = field(default_factory=dict)
    ops: dict[str, OpRecord] = field(default_factory=dict)

    def copy(self) -> Tables:
        # Records are frozen: copying the dicts is a full snapshot.
        return Tables(dict(self.jobs), dict(self.ops))


def finished(job: JobRecord) -> bool:
    """Ended for good: a terminal success, or FAILED with no attempt left (NOT_FINISHED_SQL)."""
    return job.state in SUCCESS_STATES or job.exhausted


def _fenced(job: JobRecord | None, lease: Lease) -> bool:
    return job is not None and (job.lease_owner, job.lease_epoch) == (lease.owner, lease.epoch)


def _current(job: JobRecord | None, lease: Lease, now: float) -> bool:
    """LEASE_IS_CURRENT: this holder, this epoch, and the lease not expired."""
    return (
        _fenced(job, lease)
        and job is not None
        and job.lease_until is not None
        and job.lease_until >= now
    )


def _claimable(job: JobRecord, now: float) -> bool:
    if finished(job) or (job.lease_until is not None and job.lease_until >= now):
        return False
    if job.state is not JobState.FAILED:
        return True
    return job.next_attempt_at is None or job.next_attempt_at <= now


class FakeJobRepository:
    """``artifact_jobs`` as a dict: what the services call of :class:`JobRepository`."""

    def __init__(self, tables: Tables) -> None:
        self._rows = tables.jobs

    # --- reading ----------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        return self._rows.get(job_id)

    def get_many(self, job_ids: Iterable[str]) -> list[JobRecord]:
        return [self._rows[job_id] for job_id in set(job_ids) if job_id in self._rows]

    def count_unfinished(self, job_ids: Iterable[str]) -> int:
        return sum(not finished(job) for job in self.get_many(job_ids))

    def unfinished_among(self, job_ids: Iterable[str]) -> set[str]:
        return {job.job_id for job in self.get_many(job_ids) if not finished(job)}

    # --- planning ---------------------------------------------------------------------

    def plan(
        self, spec: JobSpec, *, now: float, max_attempts: int = DEFAULT_MAX_ATTEMPTS
    ) -> PlannedJob:
        """Insert unless the triple exists; a key or id held by another triple is corruption."""
        triple = (spec.work_id, spec.artifact_id, spec.canonical_url)
        for job in self._rows.values():
            if (job.work_id, job.artifact_id, job.canonical_url) == triple:
                return PlannedJob(job.job_id, created=False)
        key = job_key(*triple)
        job_id = job_id_for(key)
        if job_id in self._rows:
            raise LedgerError(f"cannot plan {spec}: job_id {job_id} is held by another job")
        self._rows[job_id] = JobRecord(
            job_id=job_id, work_id=spec.work_id, artifact_id=spec.artifact_id,
            canonical_url=spec.canonical_url, state=JobState.PLANNED, lease_owner=None,
            lease_until=None, created_at=now, updated_at=now, idempotency_key=key, lease_epoch=0,
            attempts=0, max_attempts=max_attempts, next_attempt_at=None, last_error=None,
            sha256=None, final_path=None, size_bytes=None, content_type=None,
            expected_sha256=spec.expected_sha256,
        )  # fmt: skip
        return PlannedJob(job_id, created=True)

    def plan_many(
        self, specs: Iterable[JobSpec], *, now: float, max_attempts: int = DEFAULT_MAX_ATTEMPTS
    ) -> int:
        return sum(self.plan(spec, now=now, max_attempts=max_attempts).created for spec in specs)

    # --- leases -----------------------------------------------------------------------

    def claim(
        self, *, owner: str, ttl_s: float, now: float, among: Collection[str] | None = None
    ) -> Lease | None:
        """The oldest claimable job (one of ``among``, if given), granted; a takeover that used
        the last attempt ends FAILED."""
        while True:
            candidates = [
                job
                for job in self._rows.values()
                if _claimable(job, now) and (among is None or job.job_id in among)
            ]
            if not candidates:
                return None
            oldest = min(candidates, key=lambda job: (job.created_at, job.job_id))
            granted = self._grant(oldest, owner, ttl_s, now)
            if granted.lease_owner is not None:
                return _lease_of(granted)

    def _grant(self, job: JobRecord, owner: str, ttl_s: float, now: float) -> JobRecord:
        attempts, error = job.attempts, job.last_error
        worker_lost = job.lease_owner is not None  # claimable, so its lease expired
        if worker_lost:
            attempts += 1
            step = _STEP_OF_STATE.get(job.state)
            error = f"worker lost during {step} (lease expired)" if step else "worker lost"
        owner_or_none: str | None = owner
        until: float | None = now + ttl_s
        state = JobState.LEASED if job.state in RESTART_ON_GRANT else job.state
        if worker_lost and attempts >= job.max_attempts:
            owner_or_none, until, state = None, None, JobState.FAILED
        updated = replace(
            job, lease_owner=owner_or_none, lease_until=until, state=state, attempts=attempts,
            last_error=error, lease_epoch=job.lease_epoch + 1, updated_at=now,
        )  # fmt: skip
        self._rows[job.job_id] = updated
        return updated

    def renew(self, lease: Lease, *, ttl_s: float, now: float) -> float | None:
        """Fenced by holder and epoch only: an expired lease nobody took can still be renewed."""
        job = self._rows.get(lease.job_id)
        if job is None or not _fenced(job, lease) or finished(job):
            return None
        self._rows[job.job_id] = replace(job, lease_until=now + ttl_s)
        return now + ttl_s

    def release(self, lease: Lease) -> bool:
        job = self._rows.get(lease.job_id)
        if job is None or not _fenced(job, lease):
            return False
        self._rows[job.job_id] = replace(job, lease_owner=None, lease_until=None)
        return True

    def release_owner(self, owner: str) -> int:
        held = [job for job in self._rows.values() if job.lease_owner == owner]
        for job in held:
            self._rows[job.job_id] = replace(job, lease_owner=None, lease_until=None)
        return len(held)

    def holds(self, lease: Lease, *, now: float) -> bool:
        return _current(self._rows.get(lease.job_id), lease, now)

    def advance(
        self, lease: Lease, *, to_state: JobState, allowed_from: Collection[JobState], now: float
    ) -> bool:
        job = self._rows.get(lease.job_id)
        if job is None or not _current(job, lease, now) or job.state not in allowed_from:
            return False
        if to_state in SUCCESS_STATES:  # a finished job keeps no lease
            job = replace(job, lease_owner=None, lease_until=None)
        self._rows[job.job_id] = replace(job, state=to_state, updated_at=now)
        return True

    def fail(
        self, lease: Lease, *, error: str, exhaust: bool, next_attempt_at: float | None, now: float
    ) -> tuple[int, int] | None:
        job = self._rows.get(lease.job_id)
        if job is None or not _current(job, lease, now):
            return None
        # A permanent failure uses up every attempt at once.
        attempts = max(job.attempts + 1, job.max_attempts if exhaust else 0)
        self._rows[job.job_id] = replace(
            job, state=JobState.FAILED, attempts=attempts, last_error=error,
            next_attempt_at=next_attempt_at, lease_owner=None, lease_until=None, updated_at=now,
        )  # fmt: skip
        return attempts, job.max_attempts

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
        job = self._rows.get(lease.job_id)
        if job is None or not _current(job, lease, now):
            return False
        self._rows[job.job_id] = replace(job, sha256=sha256, final_path=final_path,
            size_bytes=size_bytes, content_type=content_type, updated_at=now)  # fmt: skip
        return True

    # --- repairs ----------------------------------------------------------------------

    def set_expected_sha256(self, expected: Mapping[str, str | None], *, now: float) -> None:
        for job_id, sha in expected.items():
            if (job := self._rows.get(job_id)) is not None:
                self._rows[job_id] = replace(job, expected_sha256=sha, updated_at=now)

    def refill_attempts(self, job_ids: Collection[str] | None, *, now: float) -> list[str]:
        chosen = self._rows.values() if job_ids is None else self.get_many(job_ids)
        refilled = [job for job in chosen if job.exhausted]
        for job in refilled:
            self._rows[job.job_id] = replace(job, attempts=0, next_attempt_at=now, updated_at=now)
        return [job.job_id for job in refilled]

    def requeue(self, job_ids: Collection[str], *, error: str, now: float) -> list[str]:
        """Stored jobs no live lease holds go back to FAILED, keeping one attempt, fenced anew."""
        chosen = [
            job
            for job in self.get_many(job_ids)
            if job.state in _HOLDS_A_FILE and (job.lease_until is None or job.lease_until < now)
        ]
        for job in chosen:
            self._rows[job.job_id] = replace(
                job, state=JobState.FAILED, last_error=error,
                attempts=min(job.attempts, job.max_attempts - 1), next_attempt_at=now,
                sha256=None, final_path=None, size_bytes=None, lease_owner=None,
                lease_until=None, lease_epoch=job.lease_epoch + 1, updated_at=now,
            )  # fmt: skip
        return [job.job_id for job in chosen]


def _lease_of(job: JobRecord) -> Lease:
    assert job.lease_owner is not None
    assert job.lease_until is not None
    return Lease(job.job_id, job.lease_owner, job.lease_epoch, job.lease_until, job.work_id,
                 job.artifact_id, job.canonical_url, job.state, job.expected_sha256)  # fmt: skip


class FakeOpRepository:
    """``artifact_ops`` as a dict: what planning calls of :class:`OpRepository`."""

    def __init__(self, tables: Tables) -> None:
        self._rows = tables.ops

    def get(self, op_key: str) -> OpRecord | None:
        return self._rows.get(op_key)

    def abandon_for_jobs(self, job_ids: Collection[str], *, error: str) -> int:
        chosen = [
            op for op in self._rows.values() if op.job_id in job_ids and op.status in _OPEN_OR_DONE
        ]
        for op in chosen:
            self._rows[op.op_key] = replace(op, status=OP_ABANDONED, error=error)
        return len(chosen)


class FakeUnitOfWork:
    """One transaction over a copy of the committed rows; ``commit()`` publishes the copy."""

    def __init__(self, ledger: FakeLedger, *, read_only: bool) -> None:
        self._ledger = ledger
        self._read_only = read_only
        self._tables = ledger.tables.copy()
        self.jobs = FakeJobRepository(self._tables)
        self.ops = FakeOpRepository(self._tables)
        self.committed = False

    def now(self) -> float:
        return self._ledger.clock()

    def commit(self) -> None:
        if self._read_only:
            raise LedgerError("a read-only unit of work has nothing to commit")
        self._ledger.tables = self._tables
        self._ledger.commits += 1
        self.committed = True


class FakeLedger:
    """A :class:`~docstokg.Ledger` stand-in: units of work over in-memory tables.

    ``commits`` counts the committed units of work, so a test can tell a
    replayed move (nothing written) from a real one.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.tables = Tables()
        self.commits = 0

    @property
    def as_ledger(self) -> Ledger:
        """This fake, typed as what the services take (they use only what it has)."""
        return cast(Ledger, self)

    def now(self) -> float:
        return self.clock()

    @contextmanager
    def unit_of_work(self, *, read_only: bool = False) -> Iterator[FakeUnitOfWork]:
        # Leaving without commit() leaves the committed tables as they were: a rollback.
        yield FakeUnitOfWork(self, read_only=read_only)

    def retrying(self, work: Callable[[], _T]) -> _T:
        """An in-memory ledger meets no passing error: the work runs once."""
        return work()

    def job(self, job_id: str) -> JobRecord:
        """The committed row of ``job_id`` (fails the test if there is none)."""
        job = self.tables.jobs.get(job_id)
        assert job is not None, f"no job {job_id} in the fake ledger"
        return job
