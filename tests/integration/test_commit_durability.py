"""Commit means committed (issue 14, line 1).

``uow.commit()`` returns only once the transaction holding the unit of work
has committed.  Two proofs:

* A process whose threads report each returned commit is SIGKILLed at random
  moments; every reported commit must be in the database afterwards (both
  backends; the child is :mod:`tests.durability_child`).
* On SQLite, where units of work of several threads share a COMMIT, a COMMIT
  that fails raises in every unit of work it held, and the process goes on
  writing afterwards.  The COMMIT is made to fail by a foreign key checked
  only at COMMIT (``PRAGMA defer_foreign_keys``); ``wait_for_queue`` makes
  the group form deterministically: while a first unit of work holds the
  writer, the others queue for it, so it hands the transaction on.
"""

from __future__ import annotations

import os
import random
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import text

from docstokg import JobSpec, Ledger
from docstokg.errors import DocstokgError
from docstokg.ledger import UnitOfWork
from docstokg.ledger.group_commit import GroupCommit
from tests.durability_child import KillPoints, missing_commits

KILLS = 20
THREADS = 8
KILL_AFTER_S = (0.03, 0.2)  # of work, once the child's threads run
SEED_ENV = "DOCSTOKG_DURABILITY_SEED"  # set it to replay a failing draw of kill points
QUEUE_TIMEOUT_S = 30.0


# --- 1. SIGKILL at random moments: every reported commit is there -------------------------


@pytest.fixture(scope="module")
def child(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KillPoints]:
    """The forking child, started once for both backends (its import is most of its cost)."""
    with KillPoints(tmp_path_factory.mktemp("durability") / "child.err") as started:
        yield started


def test_every_commit_reported_before_a_sigkill_is_in_the_database(
    db_url: str, child: KillPoints
) -> None:
    seed = int(os.environ.get(SEED_ENV) or random.randrange(2**32))
    rng = random.Random(seed)
    reported, lost = 0, []
    for round_number in range(KILLS):
        reports = child.kill_round(
            db_url, round_number, seed=seed, threads=THREADS, delay_s=rng.uniform(*KILL_AFTER_S)
        )
        reported += reports.writes
        lost += [f"kill {round_number}: {what}" for what in missing_commits(db_url, reports)]
    assert reported >= KILLS, f"only {reported} writes reported in {KILLS} kills (seed {seed})"
    assert not lost, (
        f"{len(lost)} of {reported} writes reported committed are not in the database after "
        f"{KILLS} SIGKILLs (replay with {SEED_ENV}={seed}); the first:\n" + "\n".join(lost[:10])
    )


# --- 2. a failed group COMMIT raises in every unit of work it held --------------------------


def spec(n: int) -> JobSpec:
    return JobSpec(f"W{n}", "pdf", f"https://example.org/{n}")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite3"


@pytest.fixture
def sqlite_ledger(path: Path) -> Iterator[Ledger]:
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


def insert_orphan_op(uow: UnitOfWork) -> None:
    """An op of no job, with foreign keys checked at COMMIT: the COMMIT fails."""
    uow.session.execute(text("PRAGMA defer_foreign_keys = ON"))
    uow.session.execute(
        text(
            "INSERT INTO artifact_ops (op_key, job_id, op_type, started_at, status, attempt, "
            "lease_epoch) VALUES ('k', 'no-such-job', 'HEAD', 1.0, 'IN_PROGRESS', 1, 1)"
        )
    )


def plan_and_commit(
    ledger: Ledger, n: int, *, poison: bool = False, before_commit: Callable[[], object] = dict
) -> None:
    """Plan job ``n`` (with an op that fails the COMMIT if ``poison``), then commit."""
    with ledger.unit_of_work() as uow:
        uow.jobs.plan(spec(n), now=1.0)
        if poison:
            insert_orphan_op(uow)
        before_commit()
        uow.commit()


def outcome(call: Callable[[], None]) -> BaseException | None:
    try:
        call()
    except DocstokgError as error:
        return error
    return None


@pytest.mark.parametrize("poisoned", [1, 2, 3], ids=["first", "second", "third"])
def test_a_failed_group_commit_raises_in_every_unit_of_work_it_held_and_the_process_goes_on(
    sqlite_ledger: Ledger, path: Path, poisoned: int
) -> None:
    """Three units of work share one COMMIT, which fails because of one of them: all three hear."""

    def member(n: int, before_commit: Callable[[], object] = dict) -> BaseException | None:
        return outcome(
            partial(
                plan_and_commit, sqlite_ledger, n, poison=poisoned == n, before_commit=before_commit
            )
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        others: dict[int, Future[BaseException | None]] = {}

        def let_the_others_queue() -> None:
            # The first holds the writer until the other two queue for it: it
            # hands the transaction on, and the three share one COMMIT.
            others.update({n: pool.submit(member, n) for n in (2, 3)})
            assert writer(sqlite_ledger).wait_for_queue(2, QUEUE_TIMEOUT_S), "nobody queued"

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
    plan_and_commit(sqlite_ledger, 4)
    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(plan_and_commit, sqlite_ledger, n) for n in range(5, 13)]:
            future.result(timeout=QUEUE_TIMEOUT_S)
    assert committed_work_ids(path) == {f"W{n}" for n in range(4, 13)}
