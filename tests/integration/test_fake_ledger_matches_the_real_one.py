"""The in-memory ledger of the unit tests answers as the real one does, on both backends.

tests/unit/test_services_with_a_fake_ledger.py is only worth its speed while
:class:`tests.fakes.FakeLedger` keeps the real repositories' contracts.  One
scripted history (planning, claims, expiries and takeovers, a poison job,
failures with a backoff, renewals, releases, a finished job, a changed
checksum, a refill) runs through the public services on the fake and on a
real ledger; every answer and every row afterwards must be the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import astuple, is_dataclass

from docstokg import JobState, Lease, Ledger
from docstokg.errors import DocstokgError
from docstokg.keys import job_id_for, job_key
from docstokg.services.leasing import (
    lease_next_job,
    release_lease,
    release_leases_of,
    renew_lease,
)
from docstokg.services.planning import follow_expected_checksums, plan_jobs
from docstokg.services.queries import count_unfinished
from docstokg.services.transitions import Backoff, advance_state, fail_job, record_job_result
from tests.conftest import ManualClock
from tests.fakes import FakeLedger
from tests.lifecycle import TTL, triple

SHA = "ab" * 32
# A Retry-After at the cap makes the backoff exact: no jitter, the same on both ledgers.
CAPPED = Backoff(base_s=2.0, cap_s=10.0)


def answer(call: Callable[[], object]) -> object:
    """What a service call returned (a record as a tuple), or the name of the error it raised."""
    try:
        result = call()
    except DocstokgError as error:
        return type(error).__name__
    if is_dataclass(result) and not isinstance(result, type):
        return astuple(result)
    return result


def move(ledger: Ledger, lease: Lease, to_state: JobState, origin: JobState) -> object:
    return answer(lambda: advance_state(ledger, lease, to_state=to_state, allowed_from=[origin]))


def history(ledger: Ledger, clock: ManualClock) -> list[object]:
    """A day in a ledger's life, through the services; returns every answer."""
    log: list[object] = [plan_jobs(ledger, [triple(n) for n in range(4)])]
    clock.advance(1)
    log.append(plan_jobs(ledger, [triple(3), triple(4)], max_attempts=1))
    a = lease_next_job(ledger, owner="a", ttl_s=TTL)
    b = lease_next_job(ledger, owner="b", ttl_s=TTL)
    assert a is not None
    assert b is not None
    log += [astuple(a), astuple(b)]
    log.append(move(ledger, a, JobState.HEAD_DONE, JobState.LEASED))
    log.append(move(ledger, a, JobState.STREAMING, JobState.HEAD_DONE))
    log.append(move(ledger, b, JobState.STREAMING, JobState.RESUME_OK))  # not where b is
    fail_job(ledger, b, error="503", retryable=True, backoff=CAPPED, retry_after_s=10.0)
    clock.advance(TTL + 1)  # a dies holding its job
    c = lease_next_job(ledger, owner="c", ttl_s=TTL)
    assert c is not None
    log += [astuple(c), answer(lambda: renew_lease(ledger, a, ttl_s=TTL))]
    log.append(answer(lambda: release_lease(ledger, a)))
    log.append(answer(lambda: renew_lease(ledger, c, ttl_s=TTL)))
    log.append(move(ledger, c, JobState.FINALIZED, JobState.STREAMING))
    log.append(move(ledger, c, JobState.INDEXED, JobState.FINALIZED))
    record_job_result(ledger, c, sha256=SHA, final_path=f"artifacts/{SHA}", size_bytes=7)
    log.append(move(ledger, c, JobState.DEDUPED, JobState.INDEXED))
    log.append(move(ledger, c, JobState.DEDUPED, JobState.INDEXED))  # a replay
    log.append(move(ledger, a, JobState.DEDUPED, JobState.INDEXED))  # an old holder
    log.append(answer(lambda: renew_lease(ledger, c, ttl_s=TTL)))
    log.append(answer(lambda: fail_job(ledger, c, error="late", retryable=True)))
    rest = [lease_next_job(ledger, owner=f"w{n}", ttl_s=TTL) for n in range(4)]
    log += [lease and astuple(lease) for lease in rest]
    log.append(release_leases_of(ledger, "w0"))
    clock.advance(TTL + 1)  # every holder dies; the single-attempt jobs end for good
    for n in range(5):
        lease = lease_next_job(ledger, owner=f"v{n}", ttl_s=TTL)
        log.append(lease and astuple(lease))
    log.append(answer(lambda: fail_job(ledger, b, error="gone", retryable=False)))
    every = [job_id_for(job_key(*triple(n))) for n in range(5)]
    log.append(count_unfinished(ledger, every))
    log.append(follow_expected_checksums(ledger, dict.fromkeys(every, "cd" * 32)))
    log.append(count_unfinished(ledger, every))
    return log


def rows(ledger: Ledger) -> list[tuple[object, ...]]:
    with ledger.unit_of_work(read_only=True) as uow:
        jobs = uow.jobs.list_by_state(JobState.PLANNED, limit=1_000)
        for state in JobState:
            if state is not JobState.PLANNED:
                jobs += uow.jobs.list_by_state(state, limit=1_000)
    return sorted(astuple(job) for job in jobs)


def test_the_fake_and_the_real_ledger_give_the_same_answers_and_rows(
    ledger: Ledger, clock: ManualClock
) -> None:
    fake_clock = ManualClock(clock.now)
    real_log = history(ledger, clock)
    fake = FakeLedger(fake_clock)
    fake_log = history(fake.as_ledger, fake_clock)

    assert fake_log == real_log
    assert "LeaseLost" in real_log  # the history does meet the fence
    assert sorted(astuple(job) for job in fake.tables.jobs.values()) == rows(ledger)
