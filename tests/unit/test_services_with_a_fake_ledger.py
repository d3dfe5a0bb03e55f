"""Planning, leasing, state moves and queries against an in-memory ledger: milliseconds each.

The services run unchanged on :class:`tests.fakes.FakeLedger`, whose
repositories keep the real ones' contracts (fencing by job, owner and epoch;
one row per job triple; a takeover costs an attempt).  What is checked here is
the services' own logic: what they commit, what they refuse, what they raise.
The same behaviours on SQLite and PostgreSQL are the integration tests'
(tests/integration/test_lifecycle_services.py and its neighbours).
"""

from __future__ import annotations

import pytest

from docstokg import JobSpec, JobState, Lease, Ledger
from docstokg.errors import ConfigurationError, InvalidTransition, LeaseLost
from docstokg.services.leasing import (
    lease_next_job,
    release_lease,
    release_leases_of,
    renew_lease,
)
from docstokg.services.planning import PlanRow, follow_expected_checksums, plan_jobs
from docstokg.services.queries import count_unfinished, get_job, jobs_among
from docstokg.services.transitions import (
    Backoff,
    advance_state,
    fail_job,
    record_job_result,
)
from tests.conftest import ManualClock
from tests.fakes import FakeLedger
from tests.lifecycle import TTL, plan, take, triple, walk

SHA = "ab" * 32
NO_JITTER = Backoff(base_s=10.0, cap_s=10.0)  # any delay it draws is within [5, 10] s


@pytest.fixture
def fake(clock: ManualClock) -> FakeLedger:
    return FakeLedger(clock)


@pytest.fixture
def ledger(fake: FakeLedger) -> Ledger:
    """The fake, as the services see it (this module's tests touch no database)."""
    return fake.as_ledger


def finish(ledger: Ledger, lease: Lease) -> None:
    """Walk a fresh lease's job to DEDUPED, recording a stored file on the way."""
    walk(ledger, lease, JobState.INDEXED)
    record_job_result(ledger, lease, sha256=SHA, final_path=f"artifacts/{SHA}", size_bytes=7)
    assert advance_state(ledger, lease, to_state=JobState.DEDUPED,
                         allowed_from=[JobState.INDEXED])  # fmt: skip


# --- planning -----------------------------------------------------------------------------


def test_planning_a_triple_again_returns_its_job_id_and_adds_no_row(
    fake: FakeLedger, ledger: Ledger, clock: ManualClock
) -> None:
    first = plan(ledger, 1)
    clock.advance(60)
    assert plan(ledger, 1) == first
    assert plan(ledger, 2) != first
    assert len(fake.tables.jobs) == 2
    job = fake.job(first)
    assert (job.state, job.created_at, job.lease_epoch) == (JobState.PLANNED, clock.now - 60, 0)


def test_plan_jobs_counts_only_new_rows_and_gives_only_them_the_budget(
    fake: FakeLedger, ledger: Ledger
) -> None:
    old = plan(ledger, 0)
    rows: list[PlanRow] = [
        triple(0),
        JobSpec(*triple(1)),
        dict(zip(("work_id", "artifact_id", "canonical_url"), triple(2), strict=True)),
    ]
    assert plan_jobs(ledger, rows, max_attempts=2) == 2
    assert plan_jobs(ledger, rows, max_attempts=2) == 0  # a repeat is harmless
    budgets = {job.work_id: job.max_attempts for job in fake.tables.jobs.values()}
    assert budgets == {"W0": 5, "W1": 2, "W2": 2}
    assert fake.job(old).max_attempts == 5


def test_plan_jobs_names_the_key_a_mapping_lacks(ledger: Ledger) -> None:
    with pytest.raises(ConfigurationError, match="lacks 'canonical_url'"):
        plan_jobs(ledger, [{"work_id": "W", "artifact_id": "pdf"}])


def test_a_changed_manifest_checksum_requeues_a_job_stored_with_other_bytes(
    fake: FakeLedger, ledger: Ledger
) -> None:
    job_id = plan(ledger)
    lease = take(ledger, "worker-a")
    finish(ledger, lease)
    other = "cd" * 32

    assert follow_expected_checksums(ledger, {job_id: other}) == [job_id]
    job = fake.job(job_id)
    assert (job.state, job.expected_sha256, job.sha256) == (JobState.FAILED, other, None)
    assert job.lease_epoch == lease.epoch + 1  # the last holder is fenced out
    again = take(ledger, "worker-b")  # fetched again at once
    assert (again.job_id, again.state) == (job_id, JobState.LEASED)


def test_a_changed_manifest_checksum_gives_an_exhausted_job_a_fresh_budget(
    fake: FakeLedger, ledger: Ledger
) -> None:
    job_id = plan(ledger)
    fail_job(ledger, take(ledger, "w"), error="sha256 mismatch", retryable=False)
    assert fake.job(job_id).exhausted
    assert lease_next_job(ledger, owner="w", ttl_s=TTL) is None

    assert follow_expected_checksums(ledger, {job_id: SHA}) == [job_id]
    assert fake.job(job_id).attempts == 0
    assert take(ledger, "w").job_id == job_id


# --- leasing ------------------------------------------------------------------------------


def test_leases_go_oldest_first_and_each_grant_grows_the_epoch(
    ledger: Ledger, clock: ManualClock
) -> None:
    planned = []
    for n in (3, 1, 2):  # created in this order, whatever their ids
        planned.append(plan(ledger, n))
        clock.advance(1)
    leases = [take(ledger, f"worker-{n}") for n in range(3)]
    assert [lease.job_id for lease in leases] == planned
    assert {(lease.state, lease.epoch) for lease in leases} == {(JobState.LEASED, 1)}
    assert lease_next_job(ledger, owner="worker-3", ttl_s=TTL) is None  # all are held

    assert release_lease(ledger, leases[0])
    again = take(ledger, "worker-3")
    assert (again.job_id, again.epoch) == (planned[0], 2)


def test_a_lease_runs_ttl_seconds_and_is_granted_to_no_one_else_meanwhile(
    ledger: Ledger, clock: ManualClock
) -> None:
    plan(ledger)
    lease = take(ledger, "worker-a", ttl_s=10)
    assert lease.lease_until == clock.now + 10
    clock.advance(10)  # still live at its last second
    assert lease_next_job(ledger, owner="worker-b", ttl_s=10) is None
    clock.advance(0.5)
    assert take(ledger, "worker-b").job_id == lease.job_id


@pytest.mark.parametrize(("owner", "ttl_s"), [("", TTL), ("w", 0.0), ("w", -1.0)])
def test_a_lease_needs_an_owner_and_a_positive_ttl(
    fake: FakeLedger, ledger: Ledger, owner: str, ttl_s: float
) -> None:
    plan(ledger)
    commits = fake.commits
    with pytest.raises(ConfigurationError):
        lease_next_job(ledger, owner=owner, ttl_s=ttl_s)
    assert fake.commits == commits


def test_a_lease_taken_over_raises_lease_lost_on_renewal_and_releases_nothing(
    fake: FakeLedger, ledger: Ledger, clock: ManualClock
) -> None:
    plan(ledger)
    first = take(ledger, "worker-a")
    clock.advance(TTL + 1)
    second = take(ledger, "worker-b")

    with pytest.raises(LeaseLost) as lost:
        renew_lease(ledger, first, ttl_s=TTL)
    assert (lost.value.owner, lost.value.epoch) == ("worker-a", first.epoch)
    assert release_lease(ledger, first) is False
    job = fake.job(second.job_id)
    assert (job.lease_owner, job.lease_epoch) == ("worker-b", second.epoch)


def test_an_expired_lease_nobody_took_is_renewed_from_now(
    fake: FakeLedger, ledger: Ledger, clock: ManualClock
) -> None:
    plan(ledger)
    lease = take(ledger, "worker-a")
    clock.advance(TTL + 5)
    renewed = renew_lease(ledger, lease, ttl_s=TTL)
    assert renewed.lease_until == clock.now + TTL
    assert (renewed.job_id, renewed.epoch) == (lease.job_id, lease.epoch)
    assert fake.job(lease.job_id).lease_until == renewed.lease_until


def test_renewing_a_lease_that_just_finished_its_job_returns_it_unchanged(
    ledger: Ledger,
) -> None:
    plan(ledger)
    lease = take(ledger, "worker-a")
    finish(ledger, lease)
    assert renew_lease(ledger, lease, ttl_s=TTL) == lease


def test_a_released_job_is_claimable_at_once_at_no_cost(fake: FakeLedger, ledger: Ledger) -> None:
    job_id = plan(ledger)
    lease = take(ledger, "worker-a")
    walk(ledger, lease, JobState.STREAMING)
    assert release_lease(ledger, lease)
    assert release_lease(ledger, lease) is False  # a repeat finds nothing to release

    again = take(ledger, "worker-b")
    assert (again.job_id, again.state) == (job_id, JobState.STREAMING)  # resumed where it was
    assert fake.job(job_id).attempts == 0


def test_release_leases_of_hands_back_every_job_of_one_owner_only(
    fake: FakeLedger, ledger: Ledger
) -> None:
    for n in range(3):
        plan(ledger, n)
    mine = [take(ledger, "worker-a"), take(ledger, "worker-a")]
    theirs = take(ledger, "worker-b")
    assert release_leases_of(ledger, "worker-a") == 2
    assert {fake.job(lease.job_id).lease_owner for lease in mine} == {None}
    assert fake.job(theirs.job_id).lease_owner == "worker-b"


def test_a_takeover_of_an_expired_lease_costs_an_attempt_and_names_the_step(
    fake: FakeLedger, ledger: Ledger, clock: ManualClock
) -> None:
    job_id = plan(ledger)
    walk(ledger, take(ledger, "worker-a"), JobState.HEAD_DONE)
    clock.advance(TTL + 1)
    again = take(ledger, "worker-b")
    job = fake.job(job_id)
    assert (again.state, job.attempts) == (JobState.HEAD_DONE, 1)
    assert job.last_error == "worker lost during STREAM (lease expired)"


def test_a_takeover_that_uses_the_last_attempt_ends_the_job_and_claims_the_next(
    fake: FakeLedger, ledger: Ledger, clock: ManualClock
) -> None:
    assert plan_jobs(ledger, [triple(0)], max_attempts=1) == 1
    clock.advance(1)
    following = plan(ledger, 1)
    poison = take(ledger, "worker-a")
    clock.advance(TTL + 1)  # its worker died holding it

    assert take(ledger, "worker-b").job_id == following
    ended = fake.job(poison.job_id)
    assert ended.exhausted
    assert (ended.lease_owner, ended.lease_epoch) == (None, poison.epoch + 1)
    assert ended.last_error == "worker lost during HEAD (lease expired)"


def test_a_failed_job_waits_out_its_backoff_before_it_is_leased_again(
    fake: FakeLedger, ledger: Ledger, clock: ManualClock
) -> None:
    job_id = plan(ledger)
    fail_job(ledger, take(ledger, "w"), error="503", retryable=True, backoff=NO_JITTER)
    retry_at = fake.job(job_id).next_attempt_at
    assert retry_at is not None
    assert clock.now + 5 <= retry_at <= clock.now + 10
    clock.advance(retry_at - clock.now - 0.5)
    assert lease_next_job(ledger, owner="w", ttl_s=TTL) is None
    clock.advance(0.5)
    again = take(ledger, "w")
    assert (again.job_id, again.state, again.epoch) == (job_id, JobState.LEASED, 2)


# --- transitions --------------------------------------------------------------------------


def test_a_move_commits_once_and_its_replay_writes_nothing(
    fake: FakeLedger, ledger: Ledger
) -> None:
    job_id = plan(ledger)
    lease = take(ledger, "w")
    commits = fake.commits
    assert advance_state(ledger, lease, to_state=JobState.HEAD_DONE,
                         allowed_from=[JobState.LEASED]) is True  # fmt: skip
    assert fake.commits == commits + 1
    assert fake.job(job_id).state is JobState.HEAD_DONE

    assert advance_state(ledger, lease, to_state=JobState.HEAD_DONE,
                         allowed_from=[JobState.LEASED]) is False  # fmt: skip
    assert fake.commits == commits + 1


def test_a_move_from_a_state_the_job_is_not_in_is_refused_and_changes_nothing(
    fake: FakeLedger, ledger: Ledger
) -> None:
    job_id = plan(ledger)
    lease = take(ledger, "w")
    walk(ledger, lease, JobState.HEAD_DONE)
    before = fake.job(job_id)
    with pytest.raises(InvalidTransition, match=r"not in any of \['RESUME_OK'\]"):
        advance_state(ledger, lease, to_state=JobState.STREAMING,
                      allowed_from=[JobState.RESUME_OK])  # fmt: skip
    assert fake.job(job_id) == before


def test_a_move_the_table_lacks_is_refused_before_the_ledger_is_touched(
    fake: FakeLedger, ledger: Ledger
) -> None:
    plan(ledger)
    lease = take(ledger, "w")
    walk(ledger, lease, JobState.STREAMING)
    commits = fake.commits
    with pytest.raises(InvalidTransition, match="no move STREAMING → HEAD_DONE"):
        advance_state(ledger, lease, to_state=JobState.HEAD_DONE,
                      allowed_from=[JobState.STREAMING])  # fmt: skip
    assert fake.commits == commits
    assert fake.job(lease.job_id).state is JobState.STREAMING


def test_a_holder_whose_lease_was_taken_over_can_move_nothing(
    fake: FakeLedger, ledger: Ledger, clock: ManualClock
) -> None:
    plan(ledger)
    first = take(ledger, "worker-a")
    clock.advance(TTL + 1)
    second = take(ledger, "worker-b")
    for move in (
        lambda: advance_state(ledger, first, to_state=JobState.HEAD_DONE,
                              allowed_from=[JobState.LEASED]),
        lambda: fail_job(ledger, first, error="late", retryable=True),
        lambda: record_job_result(ledger, first, sha256=SHA, final_path="x", size_bytes=1),
    ):  # fmt: skip
        with pytest.raises(LeaseLost):
            move()
    job = fake.job(second.job_id)
    assert (job.state, job.lease_owner, job.sha256, job.attempts) == (
        JobState.LEASED, "worker-b", None, 1,
    )  # fmt: skip


def test_finishing_ends_the_lease_the_finisher_may_replay_and_an_older_holder_may_not(
    fake: FakeLedger, ledger: Ledger, clock: ManualClock
) -> None:
    plan(ledger)
    first = take(ledger, "worker-a")
    clock.advance(TTL + 1)
    second = take(ledger, "worker-b")
    finish(ledger, second)
    job = fake.job(second.job_id)
    assert (job.state, job.lease_owner, job.lease_until) == (JobState.DEDUPED, None, None)

    assert advance_state(ledger, second, to_state=JobState.DEDUPED,
                         allowed_from=[JobState.INDEXED]) is False  # fmt: skip
    with pytest.raises(LeaseLost):
        advance_state(ledger, first, to_state=JobState.DEDUPED, allowed_from=[JobState.INDEXED])
    assert lease_next_job(ledger, owner="worker-c", ttl_s=TTL) is None  # ended for good


def test_a_move_to_failed_uses_an_attempt_and_releases_the_lease(
    fake: FakeLedger, ledger: Ledger
) -> None:
    plan(ledger)
    lease = take(ledger, "w")
    assert advance_state(ledger, lease, to_state=JobState.FAILED,
                         allowed_from=[JobState.LEASED]) is True  # fmt: skip
    job = fake.job(lease.job_id)
    assert (job.state, job.attempts, job.lease_owner) == (JobState.FAILED, 1, None)
    assert job.next_attempt_at is not None
    assert job.next_attempt_at > job.updated_at  # a backoff, like any failure


def test_a_permanent_failure_uses_every_attempt_and_a_last_retryable_one_says_so(
    fake: FakeLedger, ledger: Ledger, clock: ManualClock
) -> None:
    gone = plan(ledger, 0)
    fail_job(ledger, take(ledger, "w"), error="404", retryable=False)
    assert (fake.job(gone).attempts, fake.job(gone).last_error) == (5, "404")

    assert plan_jobs(ledger, [triple(1)], max_attempts=1) == 1
    flaky = take(ledger, "w")
    fail_job(ledger, flaky, error="503", retryable=True)
    job = fake.job(flaky.job_id)
    assert job.exhausted
    assert job.next_attempt_at is None
    assert job.last_error == "503; no attempt left (1 of 1 used)"


def test_failing_a_job_this_lease_finished_is_refused(fake: FakeLedger, ledger: Ledger) -> None:
    plan(ledger)
    lease = take(ledger, "w")
    finish(ledger, lease)
    with pytest.raises(InvalidTransition, match="already ended as DEDUPED"):
        fail_job(ledger, lease, error="late", retryable=True)
    assert fake.job(lease.job_id).state is JobState.DEDUPED


# --- queries ------------------------------------------------------------------------------


def test_queries_read_what_was_committed(ledger: Ledger) -> None:
    planned = {plan(ledger, n) for n in range(3)}
    done = take(ledger, "w")
    finish(ledger, done)
    failed = take(ledger, "w")
    fail_job(ledger, failed, error="404", retryable=False)
    [open_] = planned - {done.job_id, failed.job_id}

    job = get_job(ledger, open_)
    assert job is not None
    assert job.state is JobState.PLANNED
    assert get_job(ledger, "no-such-job") is None
    among = jobs_among(ledger, [done.job_id, failed.job_id, "no-such-job"])
    assert {job.job_id: job.state for job in among} == {
        done.job_id: JobState.DEDUPED,
        failed.job_id: JobState.FAILED,
    }
    assert count_unfinished(ledger, planned) == 1
