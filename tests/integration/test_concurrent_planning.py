"""Planning is idempotent across processes racing on the same jobs."""

from __future__ import annotations

import multiprocessing
from multiprocessing.synchronize import Barrier

from docstokg import JobSpec, Ledger
from tests.dbtools import run_in_processes

JOBS = 200
PROCESSES = 2


def _specs() -> list[JobSpec]:
    return [JobSpec(f"W{n}", "pdf", f"https://example.org/{n}.pdf") for n in range(JOBS)]


def _plan_all(url: str, start: Barrier, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    planned = []
    with Ledger.connect(url) as ledger:
        with ledger.unit_of_work(read_only=True):
            pass  # connect before the race starts
        start.wait(timeout=60)
        for spec in _specs():
            with ledger.unit_of_work() as uow:
                outcome = uow.jobs.plan(spec, now=uow.now())
                uow.commit()
            planned.append((outcome.job_id, outcome.created))
    results.put(planned)


def test_two_processes_planning_the_same_jobs_make_one_row_each(ledger: Ledger) -> None:
    url = ledger.url.render_as_string(hide_password=False)
    outcomes = run_in_processes(_plan_all, (url,), PROCESSES)

    ids_seen_by_each = [[job_id for job_id, _ in outcome] for outcome in outcomes]
    assert ids_seen_by_each[0] == ids_seen_by_each[1]
    created = sum(was_created for outcome in outcomes for _, was_created in outcome)
    assert created == JOBS  # every job was created by exactly one of the two
    with ledger.unit_of_work(read_only=True) as uow:
        assert sum(uow.jobs.count_by_state().values()) == JOBS
