"""The short chaos round, per backend: competing runs under faults break no invariant.

Three ``docstokg run`` processes share one manifest of 30 throttled artifacts
(64-512 KiB), one ``--out`` and one ledger; the harness SIGKILLs a working run
10 times (starting a replacement each time), SIGSTOPs one past its lease until
its jobs were taken over, and restarts PostgreSQL once (PostgreSQL) or holds
SQLite's write lock from another process for 3 s (SQLite).  After a final
clean run, every invariant of ``tests/chaos/harness.py`` must hold: each
artifact stored once with the right SHA-256, nothing else in the store, every
job ended, no finished artifact requested again, nothing left in staging,
bounded bytes re-sent, and no run printed a traceback or failed.  The long
version is ``bench/chaos.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from docstokg.testing.server import ArtifactServer
from tests.chaos.harness import ChaosPlan, ChaosRound, Database, postgres_restarter
from tests.pgcluster import ThrowawayPostgres


def test_competing_runs_under_kills_stops_and_database_faults_break_no_invariant(
    backend: str,
    empty_db_url: str,
    server: ArtifactServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    if backend == "postgresql":
        cluster: ThrowawayPostgres = request.getfixturevalue("postgres")
        database = Database(backend, empty_db_url, restart=postgres_restarter(cluster))
        plan = ChaosPlan(backend, kills=6, pg_restarts=1)
    else:
        database = Database(backend)  # the runs' own OUT/manifest.sqlite3
        plan = ChaosPlan(backend, kills=6, held_writers=1)

    result = ChaosRound(plan, work_dir=tmp_path, server=server, database=database).run()

    report = result.report()
    print(report)
    assert result.violations == [], report
    # The faults really happened (a round whose work ended early would prove little).
    assert result.count("kill") >= plan.kills // 2, report
    assert result.count("stop") == plan.stops, report
    assert result.count("pg_restart") == plan.pg_restarts, report
    assert result.count("held_writer") == plan.held_writers, report
