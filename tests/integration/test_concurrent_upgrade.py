"""Workers that start together on a new database upgrade it once, without errors."""

from __future__ import annotations

import multiprocessing
from multiprocessing.synchronize import Barrier

from docstokg import Ledger
from docstokg.ledger import migrate
from tests.dbtools import run_in_processes

UPGRADERS = 3


def _upgrade(url: str, start: Barrier, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    start.wait(timeout=60)
    with Ledger.connect(url) as ledger:
        result = ledger.upgrade()
    results.put((result.from_revision, result.to_revision))


def test_simultaneous_upgrades_create_the_schema_once(empty_db_url: str) -> None:
    outcomes = run_in_processes(_upgrade, (empty_db_url,), UPGRADERS)

    head = migrate.head_revision()
    assert all(to_revision == head for _, to_revision in outcomes)
    # Exactly one of them found the database empty; the others found it done.
    assert sorted(str(from_revision) for from_revision, _ in outcomes) == sorted(
        ["None"] + [head] * (UPGRADERS - 1)
    )
    assert migrate.describe(empty_db_url).is_current
