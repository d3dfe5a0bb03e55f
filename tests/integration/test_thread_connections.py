"""Units of work borrow pooled connections: however many threads come and go, all get served."""

from __future__ import annotations

import threading
from collections.abc import Callable

from docstokg import JobSpec, Ledger


def _in_threads(count: int, work: Callable[[], None]) -> list[BaseException]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except Exception as exc:  # noqa: BLE001 -- collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_more_threads_than_the_pool_holds_all_get_their_work_done(db_url: str) -> None:
    # pool_timeout=2: a unit of work waiting longer for a connection warns and waits on.
    with Ledger.connect(db_url, pool_size=3, max_overflow=0, pool_timeout=2) as ledger:
        counter = iter(range(10_000))
        lock = threading.Lock()

        def plan_some() -> None:
            for _ in range(5):
                with lock:
                    n = next(counter)
                with ledger.unit_of_work() as uow:
                    uow.jobs.plan(JobSpec(f"W{n}", "pdf", f"https://e.org/{n}"), now=1.0)
                    uow.commit()

        for _ in range(3):  # waves of threads that end: none leaves a connection behind
            assert _in_threads(8, plan_some) == []
        with ledger.unit_of_work(read_only=True) as uow:
            assert sum(uow.jobs.count_by_state().values()) == 3 * 8 * 5


def test_a_nested_unit_of_work_gets_its_own_connection(ledger: Ledger) -> None:
    with ledger.unit_of_work() as outer:
        outer.jobs.plan(JobSpec("W", "A", "https://e.org/x"), now=1.0)
        with ledger.unit_of_work(read_only=True) as inner:
            # The outer transaction is not committed: the inner one cannot see it.
            assert sum(inner.jobs.count_by_state().values()) == 0
        outer.commit()
    with ledger.unit_of_work(read_only=True) as after:
        assert sum(after.jobs.count_by_state().values()) == 1
