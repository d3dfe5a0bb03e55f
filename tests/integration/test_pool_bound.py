"""The ledger's connection pool is bounded: many workers share a few connections.

A worker holds a connection only inside a unit of work, never while it
downloads; one that finds every connection busy waits, it does not fail.  So
``pool_size`` bounds the connections of a process whatever its number of
workers, and a fleet of processes stays under PostgreSQL's connection limit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.pool import ConnectionPoolEntry, Pool

from docstokg import JobSpec, Ledger, lease_next_job, release_lease
from docstokg.testing.server import Artifact, ArtifactServer, generated_body
from docstokg.testing.slow_server import SlowServer
from tests.cli_kit import cli_env
from tests.pgcluster import ThrowawayPostgres
from tests.runner_kit import make_config, run_download, write_manifest

THREADS = 64
POOL_SIZE = 2


@dataclass
class PoolWatch:
    """Counts, from the pool's own events, the connections opened and those checked out."""

    opened: int = 0
    checked_out: int = 0
    most_checked_out: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on_connect(self, _dbapi: Any, _record: ConnectionPoolEntry) -> None:
        with self._lock:
            self.opened += 1

    def on_checkout(self, _dbapi: Any, _record: ConnectionPoolEntry, _proxy: Any) -> None:
        with self._lock:
            self.checked_out += 1
            self.most_checked_out = max(self.most_checked_out, self.checked_out)

    def on_checkin(self, _dbapi: Any, _record: ConnectionPoolEntry) -> None:
        with self._lock:
            self.checked_out -= 1


@contextmanager
def watching_pools() -> Iterator[PoolWatch]:
    """Every pool of this process, while the block runs (the test opens one ledger in it)."""
    watch = PoolWatch()
    hooks: list[tuple[str, Callable[..., None]]] = [
        ("connect", watch.on_connect),
        ("checkout", watch.on_checkout),
        ("checkin", watch.on_checkin),
    ]
    for name, hook in hooks:
        event.listen(Pool, name, hook)
    try:
        yield watch
    finally:
        for name, hook in hooks:
            event.remove(Pool, name, hook)


def _in_threads(count: int, work: Callable[[int], None]) -> list[BaseException]:
    errors: list[BaseException] = []

    def target(number: int) -> None:
        try:
            work(number)
        except Exception as exc:  # noqa: BLE001 -- collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_64_workers_on_a_pool_of_2_do_all_their_work_on_at_most_2_connections(
    db_url: str,
) -> None:
    with watching_pools() as watch, Ledger.connect(db_url, pool_size=POOL_SIZE) as ledger:

        def plan_lease_release(number: int) -> None:
            for step in range(4):
                with ledger.unit_of_work() as uow:
                    uow.jobs.plan(
                        JobSpec(f"W{number}", f"A{step}", f"https://e.org/{number}/{step}"), now=1.0
                    )
                    uow.commit()
                with ledger.unit_of_work(read_only=True) as uow:  # SQLite reads off the writer
                    assert sum(uow.jobs.count_by_state().values()) >= 1
                lease = lease_next_job(ledger, owner=f"t{number}", ttl_s=60.0)
                assert lease is not None
                release_lease(ledger, lease)

        assert _in_threads(THREADS, plan_lease_release) == []
        with ledger.unit_of_work(read_only=True) as uow:
            assert sum(uow.jobs.count_by_state().values()) == THREADS * 4
    assert watch.most_checked_out <= POOL_SIZE
    assert watch.opened <= POOL_SIZE


def test_a_worker_holds_no_ledger_connection_while_it_downloads(
    postgres: ThrowawayPostgres, server: ArtifactServer, tmp_path: Path
) -> None:
    workers = 4
    bodies = {f"/p/{n}": generated_body(f"/p/{n}", 64 * 1024) for n in range(workers)}
    for path, body in bodies.items():
        server.add(path, Artifact(body=body, pause_after=1024))  # held mid-body
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        [(f"W{n}", "pdf", server.url(path)) for n, path in enumerate(bodies)],
    )
    # Renewals every 100 s and no reconciliation pass: nothing else borrows a
    # connection while the downloads are held.
    config = make_config(lease_ttl_s=300.0).model_copy(
        update={"pool_size": POOL_SIZE, "reconciliation_interval_s": 3600.0}
    )
    db_url = postgres.create_database("pool_bound_download")
    during: list[int] = []
    summary: list[Any] = []

    with watching_pools() as watch:
        run = threading.Thread(
            target=lambda: summary.append(
                run_download(manifest, tmp_path / "out", config, db_url=db_url, workers=workers)
            )
        )
        run.start()
        try:
            for path in bodies:
                assert server.wait_paused(path, timeout=30.0)
            during.append(watch.checked_out)  # every worker is inside its download now
        finally:
            for path in bodies:
                server.release(path)
            run.join()
    assert during == [0]
    assert summary[0].counts["stored"] == workers
    assert watch.most_checked_out <= POOL_SIZE


def test_200_downloads_in_flight_from_2_processes_under_a_connection_limit(
    postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    """Two ``docstokg run`` processes of 100 workers each, pool_size 2, the database allowing 5.

    Each GET is held 0.5 s, so the downloads overlap.  The old per-thread
    connections kept one per worker up to the pool's 5 + 10 overflow, met "too
    many connections" and then the pool's 30 s timeout.
    """
    artifacts, processes, pool_size = 200, 2, 2
    limit = processes * pool_size + 1  # and the migration's connection, at start
    # A database's connection limit binds every role but superusers: the runs log in as another.
    name = "pool_bound_fleet"
    postgres.admin(f'CREATE ROLE "{name}" LOGIN')
    postgres.admin(f'CREATE DATABASE "{name}" OWNER "{name}" CONNECTION LIMIT {limit}')
    db_url = postgres.url(name).replace(f"{postgres.user}@", f"{name}@")
    with SlowServer(artifacts, 2048, hold_s=0.5) as slow:
        manifest = tmp_path / "m.jsonl"
        manifest.write_text(
            "".join(
                json.dumps(
                    {"work_id": f"W{n}", "artifact_id": "bin", "url": f"{slow.base_url}/a/{n}"}
                )
                + "\n"
                for n in range(artifacts)
            ),
            encoding="utf-8",
        )
        env = cli_env(
            DOCSTOKG_IDEMPOTENCY_ENABLED="true",
            DOCSTOKG_IDEMPOTENCY_POOL_SIZE=str(pool_size),
            DOCSTOKG_IDEMPOTENCY_LEASE_TTL_S="30",
        )
        command = [sys.executable, "-m", "docstokg", "run", str(manifest), "--out",
                   str(tmp_path / "out"), "--db", db_url, "--workers", "100", "--json"]  # fmt: skip
        logs = [(tmp_path / f"run{n}.out", tmp_path / f"run{n}.err") for n in range(processes)]
        runs = []
        for out_path, err_path in logs:  # files, not pipes: a full pipe would stall a run
            with out_path.open("wb") as out, err_path.open("wb") as err:
                runs.append(subprocess.Popen(command, env=env, stdout=out, stderr=err))
        for run in runs:
            run.wait(timeout=120)
        stats = slow.stats()
    for run, (out_path, err_path) in zip(runs, logs, strict=True):
        stderr = err_path.read_text(encoding="utf-8")
        assert run.returncode == 0, stderr
        assert "too many" not in stderr, stderr
        assert "not answering" not in stderr, stderr
        counts = json.loads(out_path.read_text(encoding="utf-8"))["counts"]
        assert counts["stored"] + counts["duplicates"] == artifacts
    assert stats.gets == {f"/a/{n}": 1 for n in range(artifacts)}  # each fetched once
