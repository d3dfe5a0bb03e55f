"""The lifecycle when workers crash, lose their lease or fail: what each leaves, who carries on.

Each test names a way a hand-rolled job lifecycle goes wrong and shows it
cannot happen here.

Every test runs on a SQLite file and on a real PostgreSQL 15 (through the
``ledger`` or ``db_url`` fixture) and moves time with the ``clock`` fixture:
nothing sleeps and nothing of the ledger is replaced.  A worker "dies" by
raising :class:`WorkerDied`, a ``BaseException`` that no ``except Exception``
of the ledger intercepts, so the ledger sees exactly what a killed process
leaves behind.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url, text

from docstokg import (
    EffectResultTooLarge,
    JobRecord,
    JobState,
    Lease,
    LeaseLost,
    Ledger,
    advance_state,
    cleanup_stale_leases,
    cleanup_stale_ops,
    fail_job,
    get_effect_result,
    lease_next_job,
    op_key,
    reconcile_jobs,
    release_lease,
    renew_lease,
    run_effect,
)
from docstokg.services import DEFAULT_MAX_RESULT_BYTES
from tests.conftest import ManualClock
from tests.dbtools import execute_sql, scratch_connection
from tests.factories import JobFactory, bound_to
from tests.lifecycle import TTL, WorkerDied, job_of, op_of, op_or_none, plan, take, walk

DEFAULT_MAX_ATTEMPTS = 5

# The path from LEASED to each state a worker can crash in.
NEXT_STATE: dict[JobState, JobState] = {
    JobState.HEAD_DONE: JobState.STREAMING,
    JobState.RESUME_OK: JobState.STREAMING,
    JobState.STREAMING: JobState.FINALIZED,
    JobState.FINALIZED: JobState.INDEXED,
    JobState.INDEXED: JobState.DEDUPED,
}


# --- helpers ----------------------------------------------------------------------------


def returning(value: object) -> Callable[[], Any]:
    """An effect that returns ``value`` as it is, however wrong it is."""

    def effect() -> Any:
        return value

    return effect


def url_of(ledger: Ledger) -> str:
    return ledger.url.render_as_string(hide_password=False)


def database_clock(url: str) -> float:
    [(now,)] = execute_sql(url, "SELECT extract(epoch from clock_timestamp())")
    return float(now)


# --- crashes, takeovers, failures --------------------------------------------------------


def test_effect_whose_worker_died_after_its_op_row_was_written_runs_again(
    ledger: Ledger, clock: ManualClock
) -> None:
    """An op row alone is no success: counted as one, it would replay as ``{}`` forever."""
    job_id = plan(ledger)
    first = take(ledger, "worker-a")
    key = op_key("HEAD", job_id)
    runs: list[str] = []

    def dies_half_way() -> dict[str, Any]:
        runs.append("worker-a")
        raise WorkerDied

    with pytest.raises(WorkerDied):
        run_effect(ledger, first, kind="HEAD", opkey=key, effect_fn=dies_half_way)
    orphan = op_of(ledger, key)
    assert (orphan.status, orphan.lease_epoch, orphan.result_json) == (
        "IN_PROGRESS",
        first.epoch,
        None,
    )
    assert get_effect_result(ledger, key) is None  # the op row is not a success

    assert lease_next_job(ledger, owner="worker-b", ttl_s=TTL) is None  # not expired yet
    clock.advance(TTL + 1)
    second = take(ledger, "worker-b")
    assert second.job_id == job_id
    assert second.epoch > first.epoch

    def head() -> dict[str, Any]:
        runs.append("worker-b")
        return {"status": 200, "length": 1234}

    result = run_effect(ledger, second, kind="HEAD", opkey=key, effect_fn=head)
    assert result != {}
    assert result == {"status": 200, "length": 1234}
    assert runs == ["worker-a", "worker-b"]  # the effect ran again under the new holder
    done = op_of(ledger, key)
    assert (done.status, done.attempt, done.lease_epoch) == ("SUCCEEDED", 2, second.epoch)
    assert get_effect_result(ledger, key) == result
    # From now on it is a real success: replayed, not run.
    assert run_effect(ledger, second, kind="HEAD", opkey=key, effect_fn=head) == result
    assert runs == ["worker-a", "worker-b"]


@pytest.mark.parametrize(
    "crashed_in",
    [
        JobState.HEAD_DONE,
        JobState.RESUME_OK,
        JobState.STREAMING,
        JobState.FINALIZED,
        JobState.INDEXED,
    ],
)
def test_job_left_mid_path_by_a_crashed_worker_is_leased_again_in_its_state(
    ledger: Ledger, clock: ManualClock, crashed_in: JobState
) -> None:
    """A job in any state a holder can die in is claimable, not only PLANNED and FAILED ones."""
    job_id = plan(ledger)
    crashed = take(ledger, "worker-a")
    walk(ledger, crashed, crashed_in)
    # worker-a dies here, holding its lease.
    clock.advance(TTL - 1)
    assert lease_next_job(ledger, owner="worker-b", ttl_s=TTL) is None  # still live
    clock.advance(2)

    resumed = take(ledger, "worker-b")
    assert resumed.job_id == job_id
    assert resumed.state is crashed_in  # kept, not reset: the new holder resumes from it
    assert resumed.epoch == crashed.epoch + 1
    assert resumed.lease_until == clock.now + TTL
    job = job_of(ledger, job_id)
    assert (job.state, job.lease_owner, job.lease_epoch) == (crashed_in, "worker-b", resumed.epoch)
    # ... and carries on from there.
    following = NEXT_STATE[crashed_in]
    assert advance_state(ledger, resumed, to_state=following, allowed_from=[crashed_in]) is True
    assert job_of(ledger, job_id).state is following


def test_worker_whose_lease_was_taken_over_can_write_nothing(
    ledger: Ledger, clock: ManualClock
) -> None:
    """State writes and effect results check who holds the lease: a lost holder writes nothing."""
    job_id = plan(ledger)
    first = take(ledger, "worker-a")
    walk(ledger, first, JobState.HEAD_DONE)
    clock.advance(TTL + 1)
    # Expired, even before anyone else is granted the job: its writes are refused.
    with pytest.raises(LeaseLost):
        advance_state(ledger, first, to_state=JobState.STREAMING, allowed_from=[JobState.HEAD_DONE])
    with pytest.raises(LeaseLost):
        fail_job(ledger, first, error="late failure", retryable=True)
    assert job_of(ledger, job_id).state is JobState.HEAD_DONE

    second = take(ledger, "worker-b")
    clock.advance(TTL + 1)
    # The same owner name again (a restarted worker reusing its name): only the
    # epoch tells its old lease from its new one.
    current = take(ledger, "worker-a")
    assert [first.epoch, second.epoch, current.epoch] == [1, 2, 3]
    before = job_of(ledger, job_id)
    calls: list[str] = []

    def head() -> dict[str, Any]:
        calls.append("stale")
        return {"status": 200}

    head_key = op_key("HEAD", job_id)
    for stale in (first, second):
        with pytest.raises(LeaseLost):
            advance_state(
                ledger, stale, to_state=JobState.STREAMING, allowed_from=[JobState.HEAD_DONE]
            )
        with pytest.raises(LeaseLost):
            advance_state(
                ledger, stale, to_state=JobState.FAILED, allowed_from=[JobState.HEAD_DONE]
            )
        with pytest.raises(LeaseLost):  # refused when starting: the effect is not even called
            run_effect(ledger, stale, kind="HEAD", opkey=head_key, effect_fn=head)
        with pytest.raises(LeaseLost):
            fail_job(ledger, stale, error="late failure", retryable=True)
        with pytest.raises(LeaseLost):
            renew_lease(ledger, stale, ttl_s=TTL)
        assert release_lease(ledger, stale) is False

    assert calls == []
    assert op_or_none(ledger, head_key) is None
    assert job_of(ledger, job_id) == before  # not one field changed by the stale leases

    # Refused when recording, too: the current holder's effect outlives its
    # lease and worker-c is granted the job while the effect still runs.
    stream_key = op_key("STREAM", job_id)
    successors: list[Lease] = []
    seen_after_takeover: list[JobRecord] = []
    runs: list[str] = []

    def slow_stream() -> dict[str, Any]:
        runs.append("worker-a")
        clock.advance(TTL + 1)
        successors.append(take(ledger, "worker-c"))
        seen_after_takeover.append(job_of(ledger, job_id))
        return {"bytes": 1024}

    with pytest.raises(LeaseLost):
        run_effect(ledger, current, kind="STREAM", opkey=stream_key, effect_fn=slow_stream)
    [newest] = successors
    assert newest.epoch == current.epoch + 1
    assert job_of(ledger, job_id) == seen_after_takeover[0]
    assert get_effect_result(ledger, stream_key) is None
    unrecorded = op_of(ledger, stream_key)
    assert (unrecorded.status, unrecorded.result_json) == ("IN_PROGRESS", None)
    assert unrecorded.lease_epoch == current.epoch

    def stream_again() -> dict[str, Any]:
        runs.append("worker-c")
        return {"bytes": 2048}

    assert run_effect(ledger, newest, kind="STREAM", opkey=stream_key, effect_fn=stream_again) == {
        "bytes": 2048
    }
    assert runs == ["worker-a", "worker-c"]
    assert op_of(ledger, stream_key).lease_epoch == newest.epoch


def test_claim_rechecks_the_state_so_a_finished_job_is_never_leased_again(
    ledger: Ledger, clock: ManualClock
) -> None:
    """The claim re-checks its row: a SELECT then a blind UPDATE would re-lease finished jobs."""
    with ledger.unit_of_work() as uow, bound_to(uow.session):
        finished_ids = [
            JobFactory(
                state=state.value,
                lease_owner="crashed-worker",
                lease_until=clock.now - 60,
                lease_epoch=3,
            ).job_id
            for state in (JobState.DEDUPED, JobState.SKIPPED_DUPLICATE)
        ]
        uow.commit()
    finished_before = [job_of(ledger, job_id) for job_id in finished_ids]

    # Their leases expired, and they are the oldest jobs, yet they are not claimable.
    assert lease_next_job(ledger, owner="worker-b", ttl_s=TTL) is None
    fresh_id = plan(ledger)
    assert take(ledger, "worker-b").job_id == fresh_id
    assert [job_of(ledger, job_id) for job_id in finished_ids] == finished_before

    # A claimable job (expired lease, INDEXED) is finished by another
    # transaction while a claim runs: the claim must not lease it afterwards.
    with ledger.unit_of_work() as uow, bound_to(uow.session):
        racing_id = JobFactory(
            state=JobState.INDEXED.value,
            lease_owner="crashed-worker",
            lease_until=clock.now - 60,
            lease_epoch=3,
        ).job_id
        uow.commit()
    asking = threading.Event()

    def claim() -> Lease | None:
        asking.set()
        return lease_next_job(ledger, owner="worker-c", ttl_s=TTL)

    with ThreadPoolExecutor(max_workers=1) as pool:
        with scratch_connection(url_of(ledger)) as finisher:
            finisher.execute(
                text("UPDATE artifact_jobs SET state = 'DEDUPED' WHERE job_id = :job_id"),
                {"job_id": racing_id},
            )
            pending = pool.submit(claim)
            assert asking.wait(timeout=60)
            if ledger.dialect == "postgresql":
                # PostgreSQL: the finisher holds the row lock; the claim's
                # FOR UPDATE SKIP LOCKED passes the row by instead of waiting for it.
                assert pending.result(timeout=60) is None
            # SQLite: the claim's BEGIN IMMEDIATE waits for the finisher's commit
            # (at the end of this block) and then sees the job finished.
        assert pending.result(timeout=60) is None
    assert lease_next_job(ledger, owner="worker-c", ttl_s=TTL) is None
    racing = job_of(ledger, racing_id)
    assert (racing.state, racing.lease_owner, racing.lease_epoch) == (
        JobState.DEDUPED,
        "crashed-worker",
        3,
    )


@pytest.mark.parametrize(
    "situation",
    [
        "LEASED",
        "HEAD_DONE",
        "RESUME_OK",
        "STREAMING",
        "FINALIZED",
        "INDEXED",
        "LEASED_AGAIN_AFTER_FAILED",
    ],
)
def test_renewing_works_in_every_non_terminal_state(
    ledger: Ledger, clock: ManualClock, situation: str
) -> None:
    """A lease is renewed in whatever state the job has reached, not only LEASED."""
    job_id = plan(ledger)
    held = take(ledger, "worker-a")
    if situation == "LEASED_AGAIN_AFTER_FAILED":
        fail_job(ledger, held, error="timeout", retryable=True)
        retry_at = job_of(ledger, job_id).next_attempt_at
        assert retry_at is not None
        clock.now = retry_at
        held = take(ledger, "worker-a")
        assert held.state is JobState.LEASED
        assert job_of(ledger, job_id).attempts == 1
        expected = JobState.LEASED
    else:
        expected = JobState(situation)
        walk(ledger, held, expected)

    clock.advance(TTL - 5)
    renewed = renew_lease(ledger, held, ttl_s=TTL)
    assert renewed.lease_until == clock.now + TTL
    assert renewed.lease_until > held.lease_until
    assert (renewed.job_id, renewed.owner, renewed.epoch) == (held.job_id, held.owner, held.epoch)
    job = job_of(ledger, job_id)
    assert (job.state, job.lease_until, job.lease_owner) == (
        expected,
        renewed.lease_until,
        "worker-a",
    )
    # The renewal is real: past the old expiry nobody is granted the job.
    clock.advance(10)
    assert clock.now > held.lease_until
    assert lease_next_job(ledger, owner="worker-b", ttl_s=TTL) is None
    assert renew_lease(ledger, renewed, ttl_s=TTL).lease_until == clock.now + TTL


def test_failed_jobs_count_attempts_back_off_and_stop(ledger: Ledger, clock: ManualClock) -> None:
    """FAILED jobs count their attempts, wait out a backoff, and stop when none is left."""
    job_id = plan(ledger)
    for attempt in range(1, DEFAULT_MAX_ATTEMPTS + 1):
        held = take(ledger, "worker-a")
        assert (held.job_id, held.state) == (job_id, JobState.LEASED)
        fail_job(ledger, held, error=f"timeout #{attempt}", retryable=True)
        job = job_of(ledger, job_id)
        last = attempt == DEFAULT_MAX_ATTEMPTS  # its error then says no retry will come
        ending = f"; no attempt left ({attempt} of {DEFAULT_MAX_ATTEMPTS} used)" if last else ""
        assert (job.state, job.attempts, job.last_error) == (
            JobState.FAILED,
            attempt,
            f"timeout #{attempt}{ending}",
        )
        assert (job.lease_owner, job.lease_until) == (None, None)  # the lease is released
        if attempt == DEFAULT_MAX_ATTEMPTS:
            break
        assert not job.exhausted
        assert job.next_attempt_at is not None
        # Default backoff: 2 s doubling per attempt, times a jitter in [0.5, 1].
        ceiling = 2.0 * 2 ** (attempt - 1)
        delay = job.next_attempt_at - clock.now
        assert ceiling / 2 - 1e-6 <= delay <= ceiling + 1e-6
        clock.now = job.next_attempt_at - 0.25
        assert lease_next_job(ledger, owner="worker-a", ttl_s=TTL) is None  # still backing off
        clock.now = job.next_attempt_at  # due: claimable again (next loop)

    exhausted = job_of(ledger, job_id)
    assert exhausted.exhausted
    assert exhausted.attempts == exhausted.max_attempts == DEFAULT_MAX_ATTEMPTS
    assert exhausted.last_error == (
        f"timeout #{DEFAULT_MAX_ATTEMPTS}; no attempt left "
        f"({DEFAULT_MAX_ATTEMPTS} of {DEFAULT_MAX_ATTEMPTS} used)"
    )

    # The backoff is capped (600 s by default), whatever the attempt.
    with ledger.unit_of_work() as uow, bound_to(uow.session):
        capped_id = JobFactory(state=JobState.FAILED.value, attempts=9, max_attempts=12).job_id
        uow.commit()
    held = take(ledger, "worker-a")
    assert held.job_id == capped_id
    fail_job(ledger, held, error="timeout #10", retryable=True)
    capped = job_of(ledger, capped_id)
    assert capped.attempts == 10
    assert capped.next_attempt_at is not None
    assert 300.0 - 1e-6 <= capped.next_attempt_at - clock.now <= 600.0 + 1e-6  # not 1,024 s

    # Jitter: jobs failing together do not all come back at the same instant.
    together = [plan(ledger, n) for n in range(1, 13)]
    for _ in together:
        fail_job(ledger, take(ledger, "worker-a"), error="server down", retryable=True)
    retry_times = [job_of(ledger, job_id).next_attempt_at for job_id in together]
    assert all(t is not None and 1.0 - 1e-6 <= t - clock.now <= 2.0 + 1e-6 for t in retry_times)
    assert len(set(retry_times)) > 1

    # retryable=False uses up every attempt at once and keeps the error.
    permanent_id = plan(ledger, 99)
    held = take(ledger, "worker-a")
    assert held.job_id == permanent_id
    fail_job(ledger, held, error="HTTP 404", retryable=False)
    permanent = job_of(ledger, permanent_id)
    assert permanent.exhausted
    assert (permanent.attempts, permanent.last_error) == (DEFAULT_MAX_ATTEMPTS, "HTTP 404")

    # A month later every other job is due; the exhausted ones are never granted.
    clock.advance(30 * 86_400)
    granted: list[str] = []
    while (lease := lease_next_job(ledger, owner="worker-b", ttl_s=TTL)) is not None:
        granted.append(lease.job_id)
    assert sorted(granted) == sorted([capped_id, *together])
    assert job_of(ledger, job_id).state is JobState.FAILED
    assert job_of(ledger, permanent_id).last_error == "HTTP 404"


def test_effect_that_raised_is_recorded_failed_and_runs_again(
    ledger: Ledger, clock: ManualClock
) -> None:
    """An effect's error is recorded as a failure, not a result to replay forever."""
    job_id = plan(ledger)
    held = take(ledger, "worker-a")
    key = op_key("HEAD", job_id)
    calls: list[int] = []

    def flaky_head() -> dict[str, Any]:
        calls.append(len(calls) + 1)
        if len(calls) == 1:
            raise ConnectionError("connection reset by peer")
        return {"status": 200}

    with pytest.raises(ConnectionError, match="connection reset by peer"):
        run_effect(ledger, held, kind="HEAD", opkey=key, effect_fn=flaky_head)
    failed = op_of(ledger, key)
    assert failed.status == "FAILED"
    assert failed.error is not None
    assert "ConnectionError" in failed.error
    assert "connection reset by peer" in failed.error
    assert failed.result_json is None
    assert get_effect_result(ledger, key) is None

    clock.advance(1)
    assert run_effect(ledger, held, kind="HEAD", opkey=key, effect_fn=flaky_head) == {"status": 200}
    assert calls == [1, 2]  # run again, not a replay of the error
    succeeded = op_of(ledger, key)
    assert (succeeded.status, succeeded.attempt, succeeded.error) == ("SUCCEEDED", 2, None)
    assert run_effect(ledger, held, kind="HEAD", opkey=key, effect_fn=flaky_head) == {"status": 200}
    assert calls == [1, 2]


def test_effect_results_are_stored_whole_or_refused(ledger: Ledger) -> None:
    """A result is stored whole or refused: a cut one (at 20,000 characters) would break replay."""
    job_id = plan(ledger)
    held = take(ledger, "worker-a")

    def refused(
        name: str,
        value: object,
        error: type[Exception],
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        key = op_key("EFFECT", job_id, case=name)
        with pytest.raises(error):
            run_effect(
                ledger,
                held,
                kind="EFFECT",
                opkey=key,
                effect_fn=returning(value),
                max_result_bytes=max_result_bytes,
            )
        assert get_effect_result(ledger, key) is None, name
        op = op_of(ledger, key)
        assert (op.status, op.result_json) == ("FAILED", None), name

    assert DEFAULT_MAX_RESULT_BYTES == 64 * 1024
    # Too large: over the default limit, counted in UTF-8 bytes (40,000 "e acute" are
    # 40,000 characters but 80,000 bytes), and over a custom limit.
    refused("over-default", {"blob": "x" * 70_000}, EffectResultTooLarge)
    refused("bytes-not-chars", {"text": "\u00e9" * 40_000}, EffectResultTooLarge)
    refused("over-custom", {"blob": "x" * 2_000}, EffectResultTooLarge, max_result_bytes=1_024)
    with pytest.raises(EffectResultTooLarge) as too_large:
        run_effect(
            ledger,
            held,
            kind="EFFECT",
            opkey=op_key("EFFECT", job_id, case="limits"),
            effect_fn=returning({"blob": "x" * 70_000}),
        )
    assert too_large.value.limit == 64 * 1024
    assert too_large.value.size > too_large.value.limit
    # Not JSON: refused with a TypeError, never stored.
    refused("set", {"tags": {"a", "b"}}, TypeError)
    refused("object", {"when": object()}, TypeError)
    refused("nan", {"ratio": float("nan")}, TypeError)
    # Not a dict.
    refused("list", ["a", "b"], TypeError)
    refused("string", "done", TypeError)
    refused("none", None, TypeError)

    # Under a custom limit, the same effect is stored.
    small_key = op_key("EFFECT", job_id, case="under-custom")
    small = {"blob": "x" * 500}
    assert (
        run_effect(
            ledger,
            held,
            kind="EFFECT",
            opkey=small_key,
            effect_fn=returning(small),
            max_result_bytes=1_024,
        )
        == small
    )

    # Large but under 64 KiB, with every character JSON must escape: stored whole.
    awkward = 'quote " backslash \\ newline \n tab \t nul \x00 \u00fc\u20ac\U0001f600 '
    large = {
        "text": awkward * (40_000 // len(awkward)),
        "nested": {"list": list(range(200)), "flag": True, "none": None},
    }
    assert len(large["text"]) > 20_000  # the old ledger cut here
    assert len(json.dumps(large, ensure_ascii=False).encode()) < 64 * 1024
    large_key = op_key("EFFECT", job_id, case="large")
    calls: list[int] = []

    def large_effect() -> dict[str, Any]:
        calls.append(1)
        return large

    assert run_effect(ledger, held, kind="EFFECT", opkey=large_key, effect_fn=large_effect) == large
    stored = op_of(ledger, large_key).result_json
    assert stored is not None
    assert json.loads(stored) == large  # valid JSON, nothing cut
    assert get_effect_result(ledger, large_key) == large
    assert run_effect(ledger, held, kind="EFFECT", opkey=large_key, effect_fn=large_effect) == large
    assert calls == [1]  # the second call was a replay

    # A refused result does not poison its op: a good result is stored next time.
    retry_key = op_key("EFFECT", job_id, case="over-default")
    assert run_effect(
        ledger, held, kind="EFFECT", opkey=retry_key, effect_fn=returning({"ok": True})
    ) == {"ok": True}


_SHIFT_DATABASE_CLOCK = """
CREATE FUNCTION public.{name}() RETURNS timestamptz LANGUAGE sql VOLATILE
AS $$ SELECT pg_catalog.clock_timestamp() + interval '{skew} seconds' $$
"""


def test_leases_use_one_clock_not_each_workers_wall_clock(
    db_url: str, backend: str, clock: ManualClock, tmp_path: Path
) -> None:
    """Leases are timed by one clock, not by the wall clocks of different processes and machines.

    PostgreSQL: with no injected clock, every lease time comes from the
    database's clock.  To show that the worker's own clock is not consulted,
    the test database's clock is set a day ahead of this host's (functions
    that shadow ``clock_timestamp()`` and friends, first on the database's
    search_path), which is the situation of a worker whose clock is a day
    behind; an injected clock still wins.
    SQLite: the workers share one host; an injected clock is used by every
    service (it is 40+ days away from this host's clock, so a service that
    read the host clock would fail the assertions), and without one the
    host's clock is used.
    """
    if backend == "postgresql":
        skew = 86_400.0
        database = make_url(db_url).database
        execute_sql(db_url, f'ALTER DATABASE "{database}" SET search_path = public, pg_catalog')
        for name in ("clock_timestamp", "now", "statement_timestamp", "transaction_timestamp"):
            execute_sql(db_url, _SHIFT_DATABASE_CLOCK.format(name=name, skew=skew))
        db_before = database_clock(db_url)
        assert db_before - time.time() > skew - 60  # the database now runs a day ahead

        with Ledger.connect(db_url) as worker:  # no injected clock
            job_id = plan(worker)
            granted = take(worker, "worker-a")
            db_after = database_clock(db_url)
            host_now = time.time()
            assert db_before + TTL - 5 <= granted.lease_until <= db_after + TTL + 5
            assert granted.lease_until - host_now > skew - 60  # not the worker's clock
            job = job_of(worker, job_id)
            assert db_before - 5 <= job.created_at <= db_after + 5

            # Expiry is judged by the database's clock too: a lease that ended a
            # second ago by the database's clock (a day ahead by this host's) is
            # granted to the next worker.
            execute_sql(
                db_url,
                "UPDATE artifact_jobs SET lease_until = "
                f"extract(epoch from clock_timestamp()) - 1 WHERE job_id = '{job_id}'",
            )
            successor = take(worker, "worker-b")
            assert (successor.job_id, successor.epoch) == (job_id, granted.epoch + 1)

            key = op_key("HEAD", job_id)
            run_effect(worker, successor, kind="HEAD", opkey=key, effect_fn=returning({}))
            started = op_of(worker, key).started_at
            fail_job(worker, successor, error="timeout", retryable=True)
            retry_at = job_of(worker, job_id).next_attempt_at
            db_end = database_clock(db_url)
            assert db_before - 5 <= started <= db_end + 5
            assert retry_at is not None
            assert db_before + 1 - 5 <= retry_at <= db_end + 2 + 5

        # An injected clock wins on PostgreSQL as well.
        with Ledger.connect(db_url, clock=clock) as injected:
            plan(injected, 1)
            lease = take(injected, "worker-c")
            assert lease.lease_until == clock.now + TTL
        return

    # SQLite without an injected clock: the host's clock.
    with Ledger.connect(db_url) as host_clocked:
        plan(host_clocked, 100)
        before = time.time()
        lease = take(host_clocked, "worker-z")
        after = time.time()
        assert before + TTL <= lease.lease_until <= after + TTL
        # Out of the way of what follows: exhausted jobs are never granted again.
        fail_job(host_clocked, lease, error="done with", retryable=False)

    assert abs(clock.now - time.time()) > 30 * 86_400
    with Ledger.connect(db_url, clock=clock) as ledger:
        job_id = plan(ledger)
        assert job_of(ledger, job_id).created_at == clock.now
        lease = take(ledger, "worker-a")
        assert lease.job_id == job_id
        assert lease.lease_until == clock.now + TTL
        clock.advance(5)
        lease = renew_lease(ledger, lease, ttl_s=TTL)
        assert lease.lease_until == clock.now + TTL
        clock.advance(1)
        advance_state(ledger, lease, to_state=JobState.HEAD_DONE, allowed_from=[JobState.LEASED])
        assert job_of(ledger, job_id).updated_at == clock.now
        key = op_key("HEAD", job_id)
        run_effect(ledger, lease, kind="HEAD", opkey=key, effect_fn=returning({"ok": True}))
        op = op_of(ledger, key)
        assert op.started_at == op.finished_at == clock.now
        clock.advance(1)
        fail_job(ledger, lease, error="timeout", retryable=True)
        failed = job_of(ledger, job_id)
        assert failed.updated_at == clock.now
        assert failed.next_attempt_at is not None
        assert 1.0 <= failed.next_attempt_at - clock.now <= 2.0

        # Expiry, cleanup and reconciliation read the injected clock: by the
        # host's clock (weeks earlier) none of these leases, ops or files is old.
        other_id = plan(ledger, 1)
        other = take(ledger, "worker-b")
        assert other.job_id == other_id
        crashed_key = op_key("HEAD", other_id)

        def dies() -> dict[str, Any]:
            raise WorkerDied

        with pytest.raises(WorkerDied):
            run_effect(ledger, other, kind="HEAD", opkey=crashed_key, effect_fn=dies)
        staging = tmp_path / "staging"
        staging.mkdir()
        part = staging / f"{other_id}.part"
        part.write_bytes(b"partial")
        # File ages are measured by the host clock that stamps files; the
        # injected clock decides which leases are live.
        os.utime(part, (time.time() - 700, time.time() - 700))
        clock.advance(700)
        assert cleanup_stale_ops(ledger) == 1
        assert op_of(ledger, crashed_key).status == "ABANDONED"
        assert cleanup_stale_leases(ledger) == 1
        assert job_of(ledger, other_id).lease_owner is None
        report = reconcile_jobs(ledger, staging, max_age_s=600)
        assert report.parts_deleted == [part]
        assert not part.exists()


def test_a_move_to_failed_uses_an_attempt_like_fail_job(ledger: Ledger, clock: ManualClock) -> None:
    """advance_state(to FAILED) must not be a way around the attempt budget and backoff."""
    job_id = plan(ledger)
    for attempt in range(1, 6):
        held = take(ledger, "worker-a")
        assert advance_state(ledger, held, to_state=JobState.FAILED, allowed_from=[held.state])
        job = job_of(ledger, job_id)
        assert (job.state, job.attempts, job.lease_owner) == (JobState.FAILED, attempt, None)
        if attempt < 5:
            assert job.next_attempt_at is not None
            assert job.next_attempt_at > clock.now
            assert lease_next_job(ledger, owner="worker-b", ttl_s=TTL) is None
            clock.now = job.next_attempt_at
    clock.advance(86_400)
    assert lease_next_job(ledger, owner="worker-b", ttl_s=TTL) is None  # exhausted
