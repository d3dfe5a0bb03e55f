"""Leases: at most one live holder per job, named by a growing epoch."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import replace
from typing import TypeVar

from docstokg.errors import ConfigurationError, LeaseLost
from docstokg.ledger import Lease, Ledger, UnitOfWork
from docstokg.services.transitions import finished_under

_T = TypeVar("_T")


def lease_next_job(
    ledger: Ledger, *, owner: str, ttl_s: float, among: Collection[str] | None = None
) -> Lease | None:
    """Grant ``owner`` the oldest claimable job for ``ttl_s`` seconds, or None.

    With ``among``, only one of those job ids (a run's own jobs: one ledger
    serves several manifests); keep it to a few hundred ids per call.

    Claimable: not in a terminal state, lease empty or expired, and, if FAILED,
    attempts left and its backoff over.  The grant increments the job's epoch;
    PLANNED and FAILED jobs become LEASED, any other state is kept so the new
    holder resumes where the last one stopped.  One conditional UPDATE does it
    (with SKIP LOCKED on PostgreSQL), so two workers never get the same job.
    """
    check_owner_and_ttl(owner, ttl_s)
    with ledger.unit_of_work() as uow:
        lease = uow.jobs.claim(owner=owner, ttl_s=ttl_s, now=uow.now(), among=among)
        uow.commit()
    return lease


def renew_lease(ledger: Ledger, lease: Lease, *, ttl_s: float) -> Lease:
    """Extend ``lease`` by ``ttl_s`` from now, in any non-terminal state.

    A lease that expired but that nobody took over (same owner, same epoch)
    can still be renewed: no one else can have written in between.  A job
    that this very lease just finished has nothing left to renew: the lease
    is returned as it is (the renewal raced the job's last commit; nothing
    was lost).  Raises :class:`LeaseLost` if the job was granted to someone
    else or cleaned up.
    """
    check_owner_and_ttl(lease.owner, ttl_s)

    def renew() -> Lease:  # fenced: renewing twice is renewing once
        with ledger.unit_of_work() as uow:
            lease_until = uow.jobs.renew(lease, ttl_s=ttl_s, now=uow.now())
            if lease_until is None:
                job = uow.jobs.get(lease.job_id)
                if job is not None and finished_under(job, lease):
                    return lease
                raise LeaseLost(lease.job_id, lease.owner, lease.epoch, "renewing the lease")
            uow.commit()
        return replace(lease, lease_until=lease_until)

    return ledger.retrying(renew)


def release_lease(ledger: Ledger, lease: Lease) -> bool:
    """Give the job back; False if ``lease`` was no longer the job's lease.

    Waits out a passing database error: a worker that hands its job back
    after one must not leave it leased until the lease expires.
    """
    # Fenced: a repeat after a lost COMMIT finds nothing to release.
    return _committed(ledger, lambda uow: uow.jobs.release(lease))


def release_leases_of(ledger: Ledger, owner: str) -> int:
    """Give back every job ``owner`` holds; returns how many.

    For a worker that met a database error in a COMMIT whose fate it cannot
    know: a claim may have taken a job for it that it never heard of.
    Handed back, that job is claimable at once and costs no attempt; left
    alone, its lease would expire and the takeover would cost one.  Only for
    an owner that works on nothing else at that moment.
    """
    return _committed(ledger, lambda uow: uow.jobs.release_owner(owner))


def _committed(ledger: Ledger, write: Callable[[UnitOfWork], _T]) -> _T:
    """``write`` in a unit of work that commits, done again through passing database errors.

    Only for writes that are safe to repeat (fenced or keyed).
    """

    def once() -> _T:
        with ledger.unit_of_work() as uow:
            result = write(uow)
            uow.commit()
        return result

    return ledger.retrying(once)


def check_owner_and_ttl(owner: str, ttl_s: float) -> None:
    if not owner:
        raise ConfigurationError("a lease owner must be a non-empty name, such as host:pid:thread")
    if not ttl_s > 0:
        raise ConfigurationError(f"a lease TTL must be positive seconds, got {ttl_s!r}")
