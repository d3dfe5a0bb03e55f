"""Small helpers for tests that set up or inspect a database behind the ledger's back.

Tests use them to put a database into a situation (an old stamp, a dropped
index, a foreign table) and to look at the result independently of the code
under test; the code under test never uses them.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from alembic import command
from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.pool import NullPool

from docstokg.ledger import migrate


@contextmanager
def scratch_connection(url: str) -> Iterator[Connection]:
    """A connection of its own, in a transaction committed on success."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            yield connection
    finally:
        engine.dispose()


def execute_sql(url: str, statement: str) -> list[tuple[Any, ...]]:
    with scratch_connection(url) as connection:
        result = connection.execute(text(statement))
        return [tuple(row) for row in result] if result.returns_rows else []


def table_names(url: str) -> set[str]:
    with scratch_connection(url) as connection:
        return set(inspect(connection).get_table_names())


def alembic_check(url: str) -> None:
    """`alembic check` on the database: raises if models and schema differ."""
    config = migrate.alembic_config()
    with scratch_connection(url) as connection:
        config.attributes["connection"] = connection
        command.check(config)


def run_in_processes(target: Callable[..., None], args: Sequence[object], count: int) -> list[Any]:
    """Start ``count`` spawned processes of ``target(*args, barrier, results)`` at once.

    They wait on a shared barrier so they really overlap; each puts one result
    on the queue.  Returns the results; fails if a process did not exit cleanly.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(count)
    results = context.Queue()
    processes = [
        context.Process(target=target, args=(*args, barrier, results)) for _ in range(count)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0, f"a worker process exited with {process.exitcode}"
    return outcomes
