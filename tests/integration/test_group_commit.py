"""Group commit on SQLite: units of work of several threads share one transaction in turn.

Each test makes a group form deterministically: a first unit of work holds
the writer until a second one is queuing for it (``wait_for_queue``), so the
first hands the open transaction on instead of committing, and waits for the
COMMIT that the last member of the group runs.  What the file
holds is read with a separate sqlite3 connection, which sees committed data
only.
"""

from __future__ import annotations

import inspect
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from sqlalchemy import text

from docstokg import JobSpec, JobState, Ledger
from docstokg.errors import DocstokgError, LedgerError
from docstokg.ledger import UnitOfWork
from docstokg.ledger.group_commit import GroupCommit
from docstokg.services import LedgerStep, NextClaim, claim_and_start

QUEUE_TIMEOUT_S = 30.0


def spec(n: int) -> JobSpec:
    return JobSpec(f"W{n}", "pdf", f"https://example.org/{n}")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite3"


@pytest.fixture
def ledger(path: Path) -> Iterator[Ledger]:
    with Ledger.connect(f"sqlite:///{path}") as opened:
        opened.upgrade()
        yield opened


def writer(ledger: Ledger) -> GroupCommit:
    group_commit = ledger.group_commit
    assert group_commit is not None
    return group_commit


def committed_work_ids(path: Path) -> set[str]:
    """The work ids in the file, as another process would see them."""
    with sqlite3.connect(path) as outside:
        return {work_id for (work_id,) in outside.execute("SELECT work_id FROM artifact_jobs")}


def plan_and_commit(
    ledger: Ledger, n: int, before_commit: Callable[[], object] = dict, *, poison: bool = False
) -> None:
    """Plan job ``n``; ``before_commit`` runs inside the unit of work, holding the writer.

    With ``poison``, the unit of work also writes an op that fails the COMMIT.
    """
    with ledger.unit_of_work() as uow:
        uow.jobs.plan(spec(n), now=1.0)
        if poison:
            insert_orphan_op(uow)
        before_commit()
        uow.commit()


def test_a_commit_that_hands_the_group_on_returns_only_after_its_commit(
    ledger: Ledger, path: Path
) -> None:
    """The first unit of work hands the open transaction on; its commit() waits for the COMMIT."""
    first_queued = threading.Event()
    second_may_commit = threading.Event()
    with ThreadPoolExecutor(max_workers=2) as pool:

        def hold_until_the_second_queues() -> None:
            first_queued.set()
            assert writer(ledger).wait_for_queue(1, QUEUE_TIMEOUT_S)

        first = pool.submit(plan_and_commit, ledger, 1, hold_until_the_second_queues)
        assert first_queued.wait(QUEUE_TIMEOUT_S)
        second = pool.submit(plan_and_commit, ledger, 2, second_may_commit.wait)
        # The second holds the group now, its COMMIT not run: the first's
        # commit() has not returned, and the file holds nothing yet.
        with pytest.raises(TimeoutError):
            first.result(timeout=0.2)
        assert committed_work_ids(path) == set()
        second_may_commit.set()
        first.result(timeout=QUEUE_TIMEOUT_S)
        assert committed_work_ids(path) >= {"W1"}  # in the file the moment commit() returned
        second.result(timeout=QUEUE_TIMEOUT_S)
    assert committed_work_ids(path) == {"W1", "W2"}  # one COMMIT, by the last of the group


def test_a_rollback_in_a_group_undoes_its_own_writes_only(ledger: Ledger, path: Path) -> None:
    class Refused(Exception):
        pass

    def plan_then_fail() -> None:
        with ledger.unit_of_work() as uow:
            uow.jobs.plan(spec(2), now=1.0)
            raise Refused

    with ThreadPoolExecutor(max_workers=3) as pool:
        others: list[Future[None]] = []

        def let_the_others_queue() -> None:
            others.append(pool.submit(plan_then_fail))
            others.append(pool.submit(plan_and_commit, ledger, 3))
            assert writer(ledger).wait_for_queue(2, QUEUE_TIMEOUT_S)

        pool.submit(plan_and_commit, ledger, 1, let_the_others_queue).result(QUEUE_TIMEOUT_S)
        with pytest.raises(Refused):
            others[0].result(timeout=QUEUE_TIMEOUT_S)
        others[1].result(timeout=QUEUE_TIMEOUT_S)
    # W2 was written in the group (after W1, maybe before W3) and undone alone.
    assert committed_work_ids(path) == {"W1", "W3"}


def outcome(call: Callable[[], None]) -> BaseException | None:
    try:
        call()
    except DocstokgError as error:
        return error
    return None


@pytest.mark.parametrize("poisoned", [1, 2, 3], ids=["first", "second", "third"])
def test_a_failed_group_commit_raises_in_every_unit_of_work_it_held_and_the_process_goes_on(
    ledger: Ledger, path: Path, poisoned: int
) -> None:
    """Three units of work share one COMMIT, which fails because of one of them: all three hear."""

    def member(n: int, before_commit: Callable[[], object] = dict) -> BaseException | None:
        return outcome(
            partial(plan_and_commit, ledger, n, poison=poisoned == n, before_commit=before_commit)
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        others: dict[int, Future[BaseException | None]] = {}

        def let_the_others_queue() -> None:
            # The first holds the writer until the other two queue for it: it
            # hands the transaction on, and the three share one COMMIT.
            others.update({n: pool.submit(member, n) for n in (2, 3)})
            assert writer(ledger).wait_for_queue(2, QUEUE_TIMEOUT_S), "nobody queued"

        errors = {1: member(1, let_the_others_queue)}
        errors.update({n: future.result(timeout=QUEUE_TIMEOUT_S) for n, future in others.items()})

    in_file = committed_work_ids(path)
    returned_but_lost = sorted(
        n for n, error in errors.items() if error is None and f"W{n}" not in in_file
    )
    assert not returned_but_lost, (
        f"commit() returned for units of work {returned_but_lost}, whose writes are not in "
        f"the file: their group's COMMIT failed after they were told it succeeded ({errors})"
    )
    assert in_file == set(), in_file  # one COMMIT held all three, and it failed
    for n, error in errors.items():
        assert error is not None, (n, errors)
        assert "FOREIGN KEY" in str(error), (n, errors)

    # No "this process must stop": the next unit of work, and a burst of them, commit.
    plan_and_commit(ledger, 4)
    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(plan_and_commit, ledger, n) for n in range(5, 13)]:
            future.result(timeout=QUEUE_TIMEOUT_S)
    assert committed_work_ids(path) == {f"W{n}" for n in range(4, 13)}


def test_many_threads_writing_at_once_all_commit(ledger: Ledger, path: Path) -> None:
    threads, each = 8, 40

    def plan_range(first: int) -> None:
        for n in range(first, first + each):
            plan_and_commit(ledger, n)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(plan_range, t * each) for t in range(threads)]:
            future.result(timeout=120)
    assert committed_work_ids(path) == {f"W{n}" for n in range(threads * each)}


def test_a_write_unit_of_work_inside_another_in_one_thread_is_refused(ledger: Ledger) -> None:
    with ledger.unit_of_work() as uow:
        uow.jobs.plan(spec(1), now=1.0)
        with pytest.raises(LedgerError, match="already open in this thread"):
            ledger.unit_of_work().__enter__()
        uow.commit()


def test_a_failed_commit_frees_the_file_and_the_next_unit_of_work_starts_afresh(
    ledger: Ledger, path: Path
) -> None:
    """Nobody had handed on, so only the failing unit of work hears of it; the rest goes on."""
    uow = ledger.unit_of_work().__enter__()
    uow.jobs.plan(spec(1), now=1.0)
    insert_orphan_op(uow)
    with pytest.raises(DocstokgError, match="FOREIGN KEY"):
        uow.commit()
    # The writer's connection did not stay inside the failed transaction: the
    # file's write lock is free for another process at once.
    with sqlite3.connect(path, timeout=0) as outside:
        outside.execute("BEGIN IMMEDIATE")
        outside.rollback()
    plan_and_commit(ledger, 2)
    assert committed_work_ids(path) == {"W2"}


def insert_orphan_op(uow: UnitOfWork) -> None:
    """An op of no job, with foreign keys checked at COMMIT: the COMMIT fails."""
    uow.session.execute(text("PRAGMA defer_foreign_keys = ON"))
    uow.session.execute(
        text(
            "INSERT INTO artifact_ops (op_key, job_id, op_type, started_at, status, attempt, "
            "lease_epoch) VALUES ('k', 'no-such-job', 'HEAD', 1.0, 'IN_PROGRESS', 1, 1)"
        )
    )


def orphan_op_step(uow: UnitOfWork, now: float) -> dict[str, float]:
    insert_orphan_op(uow)
    return {"at": now}


def test_a_claim_made_ahead_counts_only_once_its_commit_succeeded(
    ledger: Ledger, path: Path
) -> None:
    plan_and_commit(ledger, 1)
    plan_and_commit(ledger, 2)
    steps = claim_and_start(ledger, owner="w1", ttl_s=60.0, first_kind="HEAD")
    assert steps is not None
    step = LedgerStep("NOTE", "note", orphan_op_step, JobState.HEAD_DONE,
                      frozenset({JobState.LEASED}))  # fmt: skip

    with pytest.raises(DocstokgError, match="FOREIGN KEY"):
        steps.ledger_steps(step, then_claim=NextClaim("w1", 60.0, "HEAD"))

    assert steps.next_job is None  # the claim was rolled back with the rest
    with sqlite3.connect(path) as outside:
        states = dict(outside.execute("SELECT job_id, state FROM artifact_jobs"))
    assert sorted(states.values()) == ["LEASED", "PLANNED"]


def test_an_interrupt_right_after_taking_the_writer_hands_it_on(ledger: Ledger, path: Path) -> None:
    """Ctrl-C lands on the line after the writer was taken: the writer is freed all the same."""
    source, first = inspect.getsourcelines(GroupCommit.enter)
    [taken] = [first + n for n, text in enumerate(source) if "self._take_writer()" in text]

    def trace_enter(frame: FrameType, event: str, arg: Any) -> Any:
        return interrupt_after_taking if frame.f_code is GroupCommit.enter.__code__ else None

    def interrupt_after_taking(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line" and frame.f_lineno > taken:
            raise KeyboardInterrupt
        return interrupt_after_taking

    sys.settrace(trace_enter)
    try:
        with pytest.raises(KeyboardInterrupt):
            ledger.unit_of_work().__enter__()
    finally:
        sys.settrace(None)
    # A daemon thread: were the writer stuck, the test fails here instead of hanging.
    writing = threading.Thread(target=plan_and_commit, args=(ledger, 1), daemon=True)
    writing.start()
    writing.join(QUEUE_TIMEOUT_S)
    assert not writing.is_alive(), "the writer stayed taken after the interrupt"
    assert committed_work_ids(path) == {"W1"}
