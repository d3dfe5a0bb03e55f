"""The lease heartbeat and the periodic reconciliation, against real databases and wall time.

:class:`LeaseKeeper` works in wall time on a background thread, so these
tests use ledgers on the real clock (PostgreSQL's, or this host's for
SQLite) and TTLs of well under a second.  Where a test waits for the keeper
it waits on an event when one exists (``HeldLease.lost``, a maintenance
callback's own event, the server's pause); a renewal has no hook, so the
tests that need one poll the ledger with a deadline (see :func:`poll_until`).
Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from docstokg import JobState, Ledger, lease_next_job
from docstokg.config import IdempotencyConfig
from docstokg.download import ArtifactStore
from docstokg.errors import LedgerError, TransientDatabaseError
from docstokg.keys import job_id_for, job_key
from docstokg.ledger.models import OP_SUCCEEDED
from docstokg.run.heartbeat import LeaseKeeper
from docstokg.testing.server import Artifact, ArtifactServer, generated_body
from tests.conftest import ManualClock
from tests.lifecycle import job_of, plan, take
from tests.runner_kit import (
    assert_stored,
    job_record,
    make_run,
    ops_by_type,
    part_files,
    write_manifest,
)

TTL = 0.6  # the keeper renews every TTL/3 = 0.2 s
POLL_S = 0.02
DEADLINE_S = 10.0  # generous: a deadline only bounds a failing test, a passing one is fast


def poll_until(condition: Callable[[], bool], *, timeout: float = DEADLINE_S) -> bool:
    """Poll ``condition`` every POLL_S until it holds (True) or ``timeout`` passes (False).

    Only for what no event announces: a renewal written by the keeper's thread,
    a file deleted by a reconciliation pass, the ledger's clock reaching a time.
    """
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)


def lease_until_of(ledger: Ledger, job_id: str) -> float:
    until = job_of(ledger, job_id).lease_until
    assert until is not None, f"job {job_id} holds no lease"
    return until


@pytest.fixture
def real_ledger(db_url: str) -> Iterator[Ledger]:
    """A ledger on the real clock (``db_url`` is already upgraded to head)."""
    with Ledger.connect(db_url) as opened:
        yield opened


# -- renewing -----------------------------------------------------------------------------


def test_a_held_lease_is_renewed_for_as_long_as_it_is_held_and_no_longer(
    real_ledger: Ledger,
) -> None:
    ledger = real_ledger
    job_id = plan(ledger)
    lease = take(ledger, "worker-a", ttl_s=TTL)
    first_until = lease.lease_until

    with LeaseKeeper(ledger, ttl_s=TTL) as keeper:
        with keeper.holding(lease) as held:
            # No renewal hook exists: poll the row until the keeper has written one.
            assert poll_until(lambda: lease_until_of(ledger, job_id) > first_until), (
                "the keeper never renewed the held lease"
            )

            # Hold it for 3 TTLs of the ledger's time, looking at the row all along:
            # at no moment may it have run out.
            held_since = ledger.now()
            lapses: list[tuple[float, float]] = []

            def held_three_ttls() -> bool:
                now = ledger.now()
                until = lease_until_of(ledger, job_id)
                if until < now:
                    lapses.append((now, until))
                return now >= held_since + 3 * TTL

            assert poll_until(held_three_ttls)
            assert lapses == [], f"the held lease expired at (now, lease_until) = {lapses}"
            job = job_of(ledger, job_id)
            assert (job.lease_owner, job.lease_epoch) == ("worker-a", lease.epoch)
            assert job.lease_until is not None
            assert job.lease_until > first_until + 2 * TTL
            # Another worker cannot take the job while it is held.
            assert lease_next_job(ledger, owner="worker-b", ttl_s=TTL) is None
            assert not held.lost.is_set()

        # Let go (the keeper thread keeps running): renewals stop, so the lease
        # runs out.  Poll the row; a keeper still renewing it never lets it expire.
        assert poll_until(lambda: lease_until_of(ledger, job_id) < ledger.now()), (
            "the lease was still being renewed after its holder let go of it"
        )
        expired_until = lease_until_of(ledger, job_id)
        taken = take(ledger, "worker-b", ttl_s=30.0)
        assert taken.job_id == job_id
        assert taken.epoch == lease.epoch + 1
    assert lease_until_of(ledger, job_id) == taken.lease_until > expired_until


def test_a_lease_granted_to_another_worker_is_flagged_lost_and_left_alone(
    real_ledger: Ledger, db_url: str
) -> None:
    ledger = real_ledger
    lost_job = plan(ledger, 0)
    old = take(ledger, "worker-old", ttl_s=TTL)
    assert old.job_id == lost_job
    # Another worker whose clock is a minute ahead sees the lease expired and is
    # granted the job: the old holder is now behind by one epoch.
    with Ledger.connect(db_url, clock=ManualClock(ledger.now() + 60.0)) as later:
        new = take(later, "worker-new", ttl_s=TTL)
    assert (new.job_id, new.epoch) == (lost_job, old.epoch + 1)
    kept_job = plan(ledger, 1)
    kept = take(ledger, "worker-kept", ttl_s=TTL)
    assert kept.job_id == kept_job

    with (
        LeaseKeeper(ledger, ttl_s=TTL) as keeper,
        keeper.holding(old) as held_old,
        keeper.holding(kept) as held_kept,
    ):
        assert held_old.lost.wait(timeout=DEADLINE_S), "the lost lease was never flagged"
        # A renewal of the other lease follows (no hook: poll its row).
        assert poll_until(lambda: lease_until_of(ledger, kept_job) > kept.lease_until)
        assert not held_kept.lost.is_set()

    # The refused renewal did not touch the new holder's lease.
    job = job_of(ledger, lost_job)
    assert (job.lease_owner, job.lease_epoch) == ("worker-new", new.epoch)
    assert job.lease_until == pytest.approx(new.lease_until)


# -- periodic maintenance -----------------------------------------------------------------


class CountingMaintenance:
    """Counts its calls, raising ``errors`` in turn; ``reached`` is set on call ``until``."""

    def __init__(self, errors: Sequence[BaseException], *, until: int) -> None:
        self.errors = errors
        self.until = until
        self.calls = 0
        self.reached = threading.Event()
        self.reached_at: float | None = None

    def __call__(self) -> None:
        self.calls += 1
        if self.calls == self.until:
            self.reached_at = time.monotonic()
            self.reached.set()
        if self.errors:
            raise self.errors[(self.calls - 1) % len(self.errors)]


# What a reconciliation pass may raise: the disk, the ledger, and the driver below
# it, whose errors the ledger maps to its own (here a connection reset).
MAINTENANCE_ERRORS = (
    OSError("staging folder unreadable"),
    LedgerError("database went away"),
    TransientDatabaseError("cannot use the ledger database: connection reset"),
)


class SteppedClock:
    """A monotonic clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_lease_not_renewed_for_a_whole_ttl_ends_by_the_keepers_own_clock(
    real_ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither the wall clock nor the ledger's: a host whose clock drifts still stops in time."""
    clock = SteppedClock()
    monkeypatch.setattr("docstokg.run.heartbeat._monotonic", clock)
    plan(real_ledger)
    lease = take(real_ledger, "worker-a", ttl_s=30.0)

    with LeaseKeeper(real_ledger, ttl_s=30.0) as keeper, keeper.holding(lease) as held:
        # The first renewal is 10 s away: none happens while the clock is moved by hand.
        clock.now += 29.9
        assert not held.ended()
        clock.now += 0.2
        assert held.ended()
        assert not held.lost.is_set()  # nobody refused it: it simply ran out


def test_maintenance_runs_every_interval_and_survives_its_own_errors(real_ledger: Ledger) -> None:
    # Calls 1-3 raise OSError, LedgerError, SQLAlchemyError; call 4 (and later) too: the
    # keeper's thread must outlive every one of them and keep its schedule.
    maintenance = CountingMaintenance(MAINTENANCE_ERRORS, until=len(MAINTENANCE_ERRORS) + 1)
    every_s = 0.05
    entered = time.monotonic()
    with LeaseKeeper(real_ledger, ttl_s=30.0, maintenance=maintenance, maintenance_every_s=every_s):
        assert maintenance.reached.wait(timeout=DEADLINE_S), (
            f"maintenance ran {maintenance.calls} time(s), not {maintenance.until}"
        )
    assert maintenance.reached_at is not None
    # Periodic, not a busy loop: call N waited out N intervals.
    assert maintenance.reached_at - entered >= maintenance.until * every_s


def test_a_failing_maintenance_does_not_stop_renewals(real_ledger: Ledger) -> None:
    ledger = real_ledger
    job_id = plan(ledger)
    lease = take(ledger, "worker-a", ttl_s=TTL)
    maintenance = CountingMaintenance(MAINTENANCE_ERRORS, until=len(MAINTENANCE_ERRORS))
    with (
        LeaseKeeper(ledger, ttl_s=TTL, maintenance=maintenance, maintenance_every_s=0.05) as keeper,
        keeper.holding(lease) as held,
    ):
        assert maintenance.reached.wait(timeout=DEADLINE_S)
        after_failures = lease_until_of(ledger, job_id)
        # No renewal hook: poll the row for a renewal after every kind of failed pass.
        assert poll_until(lambda: lease_until_of(ledger, job_id) > after_failures)
        assert not held.lost.is_set()


# -- in a run -----------------------------------------------------------------------------


def test_a_run_renews_a_long_download_and_reconciles_staging_while_it_runs(
    tmp_path: Path, db_url: str
) -> None:
    ttl_s = 0.9
    config = IdempotencyConfig(
        enabled=True,
        lease_ttl_s=ttl_s,
        reconciliation_interval_s=0.1,
        stale_file_age_s=1.0,
        max_attempts=5,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        connect_timeout_s=5.0,
        read_timeout_s=30.0,  # longer than the pause below: the download must not time out
    )
    body = generated_body("heartbeat", 1_000_000)
    out = tmp_path / "out"
    with ArtifactServer() as server:
        url = server.add("/slow.pdf", Artifact(body=body, pause_after=300_000))
        manifest = write_manifest(tmp_path / "m.jsonl", [("W1", "pdf", url)])
        run = make_run(manifest, out, config, db_url=db_url, workers=1)
        with ThreadPoolExecutor(max_workers=1) as pool, Ledger.connect(db_url) as ledger:
            future = pool.submit(run.run)
            try:
                assert server.wait_paused("/slow.pdf", timeout=DEADLINE_S)
                job = job_of(ledger, job_id_for(job_key("W1", "pdf", url)))
                own_part = ArtifactStore(out).part_path(job.job_id, job.lease_epoch)
                # The server pauses once it has sent the bytes; the worker may open its
                # .part a moment later (no event for that): poll with a deadline.
                assert poll_until(own_part.exists)
                assert job.state is JobState.STREAMING or job.state is JobState.HEAD_DONE
                assert job.lease_owner is not None
                assert job.lease_until is not None
                seen_until, owner, epoch = job.lease_until, job.lease_owner, job.lease_epoch

                # (a) An orphan .part (no such job), an hour old, appears mid-run.
                orphan = out / ".staging" / "00000000-0000-0000-0000-000000000000.part"
                orphan.write_bytes(b"left over by a crashed worker")
                an_hour_ago = time.time() - 3600
                os.utime(orphan, (an_hour_ago, an_hour_ago))
                # No event for a reconciliation pass: poll the folder with a deadline.
                assert poll_until(lambda: not orphan.exists()), (
                    "the periodic reconciliation did not delete the orphan .part"
                )
                assert not future.done()  # deleted while the run was still paused

                # (b) Stay paused until the ledger's clock is a TTL past the lease
                # seen at the pause (>= 2 TTLs after the grant): the lease must
                # have been renewed, never lapsed, and still be the same grant.
                assert poll_until(lambda: ledger.now() > seen_until + ttl_s)
                now = ledger.now()
                paused = job_of(ledger, job.job_id)
                assert (paused.lease_owner, paused.lease_epoch) == (owner, epoch)
                assert paused.lease_until is not None
                assert paused.lease_until > now > seen_until + ttl_s
                # Its own .part is older than stale_file_age_s by now, yet kept: live lease.
                assert part_files(out) == [own_part]
                assert not future.done()
            finally:
                server.release("/slow.pdf")
            summary = future.result(timeout=DEADLINE_S * 3)

        stats = server.stats("/slow.pdf")

    assert summary.exit_code == 0
    (report,) = summary.jobs
    assert report.state == JobState.DEDUPED.value
    assert report.attempts == 0
    assert_stored(out, report, body)
    assert part_files(out) == []
    # One GET, never interrupted or taken over: the lease was never lost.
    assert stats.get_requests == 1
    assert stats.range_gets == 0
    finished = job_record(db_url, report.job_id)
    assert finished.state is JobState.DEDUPED
    assert finished.lease_epoch == epoch
    # The STREAM op, IN_PROGRESS for longer than a TTL, was never taken for abandoned.
    stream_ops = ops_by_type(db_url, report.job_id)["STREAM"]
    assert [(op.status, op.attempt, op.lease_epoch) for op in stream_ops] == [
        (OP_SUCCEEDED, 1, epoch)
    ]
