"""Planning is idempotent across processes racing on the same jobs."""

from __future__ import annotations

import multiprocessing
from multiprocessing.synchronize import Barrier

from docstokg import JobSpec, Ledger

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
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PROCESSES)
    results: multiprocessing.Queue = context.Queue()  # type: ignore[type-arg]
    url = ledger.url.render_as_string(hide_password=False)
    workers = [
        context.Process(target=_plan_all, args=(url, start, results)) for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0

    ids_seen_by_each = [[job_id for job_id, _ in outcome] for outcome in outcomes]
    assert ids_seen_by_each[0] == ids_seen_by_each[1]
    created = sum(was_created for outcome in outcomes for _, was_created in outcome)
    assert created == JOBS  # every job was created by exactly one of the two
    with ledger.unit_of_work(read_only=True) as uow:
        assert sum(uow.jobs.count_by_state().values()) == JOBS
