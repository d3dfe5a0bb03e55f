"""Job-queue throughput against the peers a user would pick instead (issue 15, line 8).

The workload: a producer process plans N jobs, one per transaction, while W
worker *processes* wait; each worker claims a job, runs 3 steps whose small
JSON result is recorded exactly once, and completes the job.  The timer runs
from the first plan to the last completion (both read from the system-wide
monotonic clock, in whichever process they happen).  Each contender is then
checked: N jobs complete, 3N step results, one per (job, step).

What each contender does (one job at a time per worker process, everywhere):

* ``docstokg-sqlite`` / ``docstokg-postgresql``: the public API, as the
  runner uses it.  ``claim_and_start`` leases a job and starts its first op;
  ``JobSteps.effect`` runs HEAD, STREAM and FINALIZE (LEASED -> HEAD_DONE ->
  STREAMING -> FINALIZED), each result committed with the start of the next
  op; ``JobSteps.ledger_steps`` then records FINALIZE's result, completes the
  job (two ledger steps, INDEX and DEDUPE, that write nothing: the path ends at
  DEDUPED) and claims the worker's next job, all in one commit.  Results live
  in ``artifact_ops`` (unique ``op_key``), fenced by the lease epoch.  The
  producer calls ``plan_job_if_absent`` once per job.
* ``sqlite3-floor``: hand-written ``sqlite3`` (WAL, synchronous=NORMAL, as
  docstokg): one UPDATE ... RETURNING claims, each step is one
  ``INSERT ... ON CONFLICT DO NOTHING`` into ``step_results`` keyed by
  (job, step), one UPDATE completes; autocommit, one transaction each.  No
  lease epoch, no fencing, no ORM: the floor, not a rival.
* ``huey``: Huey with ``SqliteStorage`` (WAL; synchronous=NORMAL as docstokg,
  where Huey's default leaves SQLite's FULL).  The producer enqueues a task
  per job; each worker process loops ``huey.dequeue()`` / ``huey.execute()``
  (what the consumer does, minus its scheduler thread and backoff); the task
  writes each step's result into ``step_results`` keyed by (job, step) with
  ``INSERT ... ON CONFLICT DO NOTHING`` in its own transaction, in the same
  file, and its return value is stored as Huey's result.  Huey deletes a task
  when it dequeues it: a worker dying mid-task loses the job (at-most-once).
* ``procrastinate``: Procrastinate on PostgreSQL (the same throwaway cluster
  as docstokg, LISTEN/NOTIFY on).  The producer ``defer``s a task per job;
  each worker process runs ``app.run_worker(concurrency=1)``; the async task
  records each step with ``INSERT ... ON CONFLICT DO NOTHING`` into
  ``step_results`` through the app's connector (autocommit); the worker then
  marks the job succeeded.  Its completion is counted when the task returns
  (the worker's own "succeeded" write follows it).
* ``dbos``: DBOS Transact with its SQLite system database (WAL and
  synchronous=NORMAL, as docstokg; its default is the rollback journal with
  FULL, an fsync per commit).  The producer
  enqueues a workflow per job with ``DBOSClient``; each worker process
  launches DBOS (its own executor id) and dequeues from a queue with
  ``worker_concurrency=1`` polled every DBOS_POLL_S; the workflow runs three
  ``@DBOS.step`` functions, whose outputs DBOS checkpoints exactly once.

Workers that find no job while the producer is still planning sleep POLL_S
(docstokg, the floor, Huey); Procrastinate is woken by NOTIFY; DBOS polls.

    .venv/bin/python bench/bench_peers.py                      # the whole table, N=2000, W=1,4
    .venv/bin/python bench/bench_peers.py --jobs 500 --rounds 1 --systems huey,sqlite3-floor
    .venv/bin/python bench/bench_peers.py --json               # the figures as JSON
    .venv/bin/python bench/bench_peers.py --count              # statements per docstokg job
    .venv/bin/python bench/bench_peers.py --profile DIR --systems docstokg-sqlite --workers 1

``--count`` runs each docstokg backend once (plan all, then one worker) and
prints its statements and transactions per job: SQLite's through the
driver's trace callback, PostgreSQL's from the server log (log_statement).
``--profile DIR`` runs each worker under cProfile, writes DIR/<system>-w<W>.prof
and prints the 15 top functions by cumulative and by own time.

The peers come with the ``bench`` extra: ``.venv/bin/pip install -e '.[bench]'``.
A peer that is not installed is reported and skipped.

Goals (issue 15): docstokg ahead of Huey on SQLite and of Procrastinate on
PostgreSQL at both W, and at least 20x DBOS.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import json
import multiprocessing
import os
import pstats
import re
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.pgcluster import ThrowawayPostgres

STEPS = 3
POLL_S = 0.001  # a worker's nap when no job is there yet
DBOS_POLL_S = 0.01  # DBOS's queue polling interval (its default is 1 s)
TTL_S = 300.0
READY_TIMEOUT_S = 120.0
ROUND_TIMEOUT_S = 900.0
STEP_RESULTS_DDL = (
    "CREATE TABLE step_results (job INTEGER NOT NULL, step INTEGER NOT NULL, "
    "result TEXT NOT NULL, PRIMARY KEY (job, step))"
)
RECORD_STEP = "INSERT INTO step_results (job, step, result) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
WORKER_EXIT_TIMEOUT_S = 30.0


class BenchError(RuntimeError):
    """A contender could not run, or did not do the work it was asked to."""


# --- the shared state of one round ------------------------------------------------------------


@dataclass
class Shared:
    """What the producer, the workers and the harness share (inherited by fork)."""

    ready: Synchronized[int]
    done: Synchronized[int]
    started_at: Synchronized[float]
    last_done_at: Synchronized[float]
    produced: Event
    stop: Event

    @classmethod
    def new(cls) -> Shared:
        ctx = multiprocessing.get_context("fork")
        return cls(
            ctx.Value("i", 0), ctx.Value("i", 0), ctx.Value("d", 0.0), ctx.Value("d", 0.0),
            ctx.Event(), ctx.Event(),
        )  # fmt: skip

    def worker_ready(self) -> None:
        with self.ready.get_lock():
            self.ready.value += 1

    def start_clock(self) -> None:
        """Called by the producer right before its first plan."""
        self.started_at.value = time.perf_counter()

    def job_done(self) -> None:
        with self.done.get_lock():
            self.done.value += 1
            self.last_done_at.value = time.perf_counter()

    def finished(self) -> bool:
        """No job left for a worker that found none: all planned, none claimable."""
        return self.stop.is_set() or self.produced.is_set()


def _step_result(job: int | str, step: int | str) -> dict[str, Any]:
    """The small JSON result every contender records for each step."""
    return {"job": job, "step": step, "ok": True}


# --- docstokg -----------------------------------------------------------------------------------


def _docstokg_prepare(url: str) -> str:
    from docstokg import Ledger

    with Ledger.connect(url) as ledger:
        ledger.upgrade()
    return url


def _docstokg_produce(url: str, jobs: int, shared: Shared) -> None:
    from docstokg import Ledger, plan_job_if_absent

    with Ledger.connect(url) as ledger:
        ledger.now()  # connected and schema checked before the clock starts
        shared.start_clock()
        for n in range(jobs):
            plan_job_if_absent(ledger, work_id=f"W{n:07d}", artifact_id="pdf",
                               canonical_url=f"https://example.org/{n}.pdf")  # fmt: skip


def _docstokg_work(url: str, index: int, shared: Shared) -> None:
    from docstokg import Ledger, op_key
    from docstokg.services import JobSteps, LedgerStep, NextClaim, claim_and_start
    from docstokg.states import JobState

    effects = (
        ("HEAD", JobState.LEASED, JobState.HEAD_DONE),
        ("STREAM", JobState.HEAD_DONE, JobState.STREAMING),
        ("FINALIZE", JobState.STREAMING, JobState.FINALIZED),
    )
    owner = f"bench-{index}"
    following = NextClaim(owner, TTL_S, effects[0][0])

    def nothing(_uow: object, _now: float) -> dict[str, Any]:
        return {}

    def completion(job_id: str) -> tuple[LedgerStep, LedgerStep]:
        """FINALIZED -> INDEXED -> DEDUPED: the two moves that end a job, writing nothing."""
        return (
            LedgerStep("INDEX", op_key("INDEX", job_id), nothing, JobState.INDEXED,
                       frozenset({JobState.FINALIZED})),
            LedgerStep("DEDUPE", op_key("DEDUPE", job_id), nothing, JobState.DEDUPED,
                       frozenset({JobState.INDEXED})),
        )  # fmt: skip

    with Ledger.connect(url) as ledger:
        ledger.now()
        shared.worker_ready()
        steps: JobSteps | None = None
        while not shared.stop.is_set():
            if steps is None:
                finished = shared.finished()  # read before the claim: see Shared.finished
                steps = claim_and_start(ledger, owner=owner, ttl_s=TTL_S, first_kind="HEAD")
                if steps is None:
                    if finished:
                        return
                    time.sleep(POLL_S)
                    continue
            job_id = steps.lease.job_id
            for number, (kind, before, after) in enumerate(effects):
                steps.effect(
                    kind=kind, opkey=op_key(kind, job_id),
                    effect_fn=functools.partial(_step_result, job_id, number),
                    advance_to=after, allowed_from=(before,),
                )  # fmt: skip
            steps.ledger_steps(*completion(job_id), then_claim=following)
            shared.job_done()
            steps = steps.next_job


def _docstokg_verify(url: str, jobs: int) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            done = connection.execute(
                text("SELECT count(*) FROM artifact_jobs WHERE state = 'DEDUPED'")
            ).scalar_one()
            results = connection.execute(
                text(
                    "SELECT count(*), count(DISTINCT op_key) FROM artifact_ops "
                    "WHERE op_type IN ('HEAD', 'STREAM', 'FINALIZE') AND status = 'SUCCEEDED' "
                    "AND result_json IS NOT NULL"
                )
            ).one()
    finally:
        engine.dispose()
    _check(done, tuple(results), jobs)


def _check(done: int, results: tuple[int, int], jobs: int) -> None:
    rows, distinct = results
    if done != jobs or rows != STEPS * jobs or distinct != rows:
        raise BenchError(
            f"{done} jobs complete and {rows} step results ({distinct} distinct) recorded; "
            f"expected {jobs} and {STEPS * jobs}"
        )


# --- the sqlite3 floor --------------------------------------------------------------------------

FLOOR_DDL = (
    "CREATE TABLE jobs (id INTEGER PRIMARY KEY, payload TEXT NOT NULL, state TEXT NOT NULL, "
    "owner TEXT, lease_until REAL)",
    "CREATE INDEX jobs_todo ON jobs (id) WHERE state = 'todo'",
    STEP_RESULTS_DDL,
)
FLOOR_CLAIM = (
    "UPDATE jobs SET state = 'leased', owner = ?, lease_until = ? WHERE id = "
    "(SELECT id FROM jobs WHERE state = 'todo' ORDER BY id LIMIT 1) RETURNING id"
)
FLOOR_COMPLETE = "UPDATE jobs SET state = 'done', lease_until = NULL WHERE id = ? AND owner = ?"


def _sqlite(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    return db


def _floor_prepare(path: str) -> str:
    with contextlib.closing(_sqlite(path)) as db:
        for ddl in FLOOR_DDL:
            db.execute(ddl)
    return path


def _floor_produce(path: str, jobs: int, shared: Shared) -> None:
    with contextlib.closing(_sqlite(path)) as db:
        shared.start_clock()
        for n in range(jobs):
            db.execute("INSERT INTO jobs (id, payload, state) VALUES (?, ?, 'todo')",
                       (n, f"https://example.org/{n}.pdf"))  # fmt: skip


def _floor_work(path: str, index: int, shared: Shared) -> None:
    owner = f"floor-{index}"
    with contextlib.closing(_sqlite(path)) as db:
        shared.worker_ready()
        while not shared.stop.is_set():
            finished = shared.finished()
            row = db.execute(FLOOR_CLAIM, (owner, time.time() + TTL_S)).fetchone()
            if row is None:
                if finished:
                    return
                time.sleep(POLL_S)
                continue
            (job,) = row
            for step in range(STEPS):
                db.execute(RECORD_STEP, (job, step, json.dumps(_step_result(job, step))))
            db.execute(FLOOR_COMPLETE, (job, owner))
            shared.job_done()


def _floor_verify(path: str, jobs: int) -> None:
    with contextlib.closing(_sqlite(path)) as db:
        (done,) = db.execute("SELECT count(*) FROM jobs WHERE state = 'done'").fetchone()
        results = db.execute("SELECT count(*), count(DISTINCT job || '/' || step) "
                             "FROM step_results").fetchone()  # fmt: skip
    _check(done, results, jobs)


# --- Huey (SqliteStorage) -----------------------------------------------------------------------


def _huey(path: str) -> Any:
    """A Huey on ``path`` with synchronous=NORMAL (docstokg's), and its job task."""
    from huey import Huey  # type: ignore[import-untyped]
    from huey.storage import SqliteStorage  # type: ignore[import-untyped]

    class NormalSyncStorage(SqliteStorage):  # type: ignore[misc]
        def _create_connection(self) -> sqlite3.Connection:
            conn: sqlite3.Connection = super()._create_connection()
            conn.execute("PRAGMA synchronous = NORMAL")
            return conn

    huey = Huey("bench", storage_class=NormalSyncStorage, filename=path, timeout=30,
                results=True)  # fmt: skip
    results = _sqlite(path)

    @huey.task(name="bench_job")  # type: ignore[untyped-decorator]
    def bench_job(job: int) -> dict[str, int]:
        for step in range(STEPS):
            results.execute(RECORD_STEP, (job, step, json.dumps(_step_result(job, step))))
        return {"job": job}

    huey.bench_job = bench_job
    return huey


def _huey_prepare(path: str) -> str:
    _huey(path).storage.close()
    with contextlib.closing(_sqlite(path)) as db:
        db.execute(STEP_RESULTS_DDL)
    return path


def _huey_produce(path: str, jobs: int, shared: Shared) -> None:
    huey = _huey(path)
    huey.storage.queue_size()  # connected before the clock starts
    shared.start_clock()
    for n in range(jobs):
        huey.bench_job(n)


def _huey_work(path: str, index: int, shared: Shared) -> None:
    del index
    huey = _huey(path)
    huey.storage.queue_size()
    shared.worker_ready()
    while not shared.stop.is_set():
        finished = shared.finished()
        task = huey.dequeue()
        if task is None:
            if finished:
                return
            time.sleep(POLL_S)
            continue
        huey.execute(task)
        shared.job_done()


def _huey_verify(path: str, jobs: int) -> None:
    with contextlib.closing(_sqlite(path)) as db:
        (done,) = db.execute("SELECT count(*) FROM kv WHERE queue = 'bench'").fetchone()
        results = db.execute("SELECT count(*), count(DISTINCT job || '/' || step) "
                             "FROM step_results").fetchone()  # fmt: skip
    _check(done, results, jobs)


# --- Procrastinate (PostgreSQL) -----------------------------------------------------------------


def _conninfo(url: str) -> str:
    """A libpq conninfo for a ``postgresql+psycopg://user@host:port/db`` URL."""
    match = re.fullmatch(r"postgresql\+psycopg://(\w+)@([\d.]+):(\d+)/(\w+)", url)
    if match is None:
        raise BenchError(f"cannot read the PostgreSQL URL {url!r}")
    user, host, port, dbname = match.groups()
    return f"host={host} port={port} user={user} dbname={dbname}"


def _procrastinate(url: str, shared: Shared | None) -> Any:
    """A Procrastinate app on ``url`` with the job task (which counts completions in ``shared``)."""
    import logging

    import procrastinate

    # Quiet its advice about apps defined in a script's main module (ours is, on purpose).
    logging.getLogger("procrastinate").setLevel(logging.ERROR)
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=_conninfo(url), min_size=1, max_size=2)
    )
    record = RECORD_STEP.replace("?", "%s").replace("(%s, %s, %s)",
                                                     "(%(job)s, %(step)s, %(result)s)")  # fmt: skip

    @app.task(name="bench_job")
    async def bench_job(job: int) -> None:
        for step in range(STEPS):
            await app.connector.execute_query_async(
                record, job=job, step=step, result=json.dumps(_step_result(job, step))
            )
        if shared is not None:
            shared.job_done()

    return app, bench_job


def _procrastinate_prepare(url: str) -> str:
    import psycopg

    app, _ = _procrastinate(url, None)
    with app.open():
        app.schema_manager.apply_schema()
    with psycopg.connect(_conninfo(url), autocommit=True) as connection:
        connection.execute(STEP_RESULTS_DDL.replace("TEXT", "text"))
    return url


def _procrastinate_produce(url: str, jobs: int, shared: Shared) -> None:
    app, bench_job = _procrastinate(url, None)
    with app.open():
        app.check_connection()
        shared.start_clock()
        for n in range(jobs):
            bench_job.defer(job=n)


def _procrastinate_work(url: str, index: int, shared: Shared) -> None:
    app, _ = _procrastinate(url, shared)
    shared.worker_ready()
    # Stopped by SIGTERM (a graceful stop) once every job is done.
    app.run_worker(name=f"bench-{index}", concurrency=1, wait=True)


def _procrastinate_verify(url: str, jobs: int) -> None:
    import psycopg

    with psycopg.connect(_conninfo(url)) as connection:
        row = connection.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
        ).fetchone()
        results = connection.execute(
            "SELECT count(*), count(DISTINCT (job, step)) FROM step_results"
        ).fetchone()
    assert row is not None
    assert results is not None
    _check(row[0], (results[0], results[1]), jobs)


# --- DBOS (SQLite system database) --------------------------------------------------------------

DBOS_QUEUE = "bench_jobs"
DBOS_WORKFLOW = "bench_job"
DBOS_QUEUE_DISCOVERY_S = 1.2


def _dbos_register(shared: Shared | None) -> None:
    """Declare the workflow and its three steps (before DBOS is launched)."""
    from dbos import DBOS

    @DBOS.step(name="bench_step")
    def bench_step(job: int, step: int) -> dict[str, Any]:
        return _step_result(job, step)

    @DBOS.workflow(name=DBOS_WORKFLOW)
    def bench_job(job: int) -> int:
        for step in range(STEPS):
            bench_step(job, step)
        if shared is not None:
            shared.job_done()
        return job


def _dbos_engine(path: str) -> Any:
    """DBOS's own SQLite engine (IMMEDIATE, busy timeout), with docstokg's synchronous=NORMAL."""
    from sqlalchemy import create_engine, event

    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def configure(dbapi_connection: Any, _record: object) -> None:
        dbapi_connection.isolation_level = "IMMEDIATE"
        dbapi_connection.execute("PRAGMA busy_timeout=30000")
        dbapi_connection.execute("PRAGMA foreign_keys=ON")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    return engine


def _dbos_config(path: str, executor: str) -> Any:
    from dbos import DBOSConfig

    config: DBOSConfig = {
        "name": "bench-peers",
        "system_database_url": f"sqlite:///{path}",
        "system_database_engine": _dbos_engine(path),
        "executor_id": executor,
        "log_level": "WARNING",
    }
    return config


def _dbos_prepare(path: str) -> str:
    from dbos import DBOS

    with contextlib.closing(_sqlite(path)):
        pass  # WAL, which the file keeps (DBOS leaves SQLite's rollback journal)
    _dbos_register(None)
    dbos = DBOS(config=_dbos_config(path, "prepare"))
    DBOS.listen_queues([])
    DBOS.launch()
    DBOS.register_queue(DBOS_QUEUE, worker_concurrency=1, polling_interval_sec=DBOS_POLL_S)
    DBOS.destroy(destroy_registry=True)
    del dbos
    return path


def _dbos_produce(path: str, jobs: int, shared: Shared) -> None:
    from dbos import DBOSClient, EnqueueOptions

    client = DBOSClient(system_database_url=f"sqlite:///{path}",
                        system_database_engine=_dbos_engine(path))  # fmt: skip
    try:
        options: EnqueueOptions = {"queue_name": DBOS_QUEUE, "workflow_name": DBOS_WORKFLOW}
        shared.start_clock()
        for n in range(jobs):
            client.enqueue(options, n)
    finally:
        client.destroy()


def _dbos_work(path: str, index: int, shared: Shared) -> None:
    from dbos import DBOS

    _dbos_register(shared)
    DBOS(config=_dbos_config(path, f"bench-{index}"))
    DBOS.launch()
    DBOS.register_queue(DBOS_QUEUE, worker_concurrency=1, polling_interval_sec=DBOS_POLL_S)
    # DBOS looks for registered queues once a second; ready once it has surely seen ours.
    time.sleep(DBOS_QUEUE_DISCOVERY_S)
    shared.worker_ready()
    shared.stop.wait()
    DBOS.destroy()


def _dbos_verify(path: str, jobs: int) -> None:
    with contextlib.closing(_sqlite(path)) as db:
        (done,) = db.execute(
            "SELECT count(*) FROM workflow_status WHERE status = 'SUCCESS' AND name = ?",
            (DBOS_WORKFLOW,),
        ).fetchone()
        results = db.execute(
            "SELECT count(*), count(DISTINCT workflow_uuid || '/' || function_id) "
            "FROM operation_outputs WHERE function_name = 'bench_step'"
        ).fetchone()
    _check(done, results, jobs)


# --- the contenders -----------------------------------------------------------------------------


DOCSTOKG = (_docstokg_prepare, _docstokg_produce, _docstokg_work, _docstokg_verify)
FLOOR = (_floor_prepare, _floor_produce, _floor_work, _floor_verify)
HUEY = (_huey_prepare, _huey_produce, _huey_work, _huey_verify)
PROCRASTINATE = (
    _procrastinate_prepare, _procrastinate_produce, _procrastinate_work, _procrastinate_verify
)  # fmt: skip
DBOS_CALLS = (_dbos_prepare, _dbos_produce, _dbos_work, _dbos_verify)


@dataclass(frozen=True)
class Contender:
    """One system under test: how to set up its database, plan, work and check."""

    name: str
    backend: str  # "sqlite" or "postgresql"
    module: str  # what must be importable for it to run
    prepare: Callable[[str], str]
    produce: Callable[[str, int, Shared], None]
    work: Callable[[str, int, Shared], None]
    verify: Callable[[str, int], None]
    peer_of: str | None = None  # the docstokg contender it is compared with
    stops_itself: bool = True  # its workers end on Shared.stop; else SIGTERM ends them


CONTENDERS = {
    c.name: c
    for c in (
        Contender("docstokg-sqlite", "sqlite", "docstokg", *DOCSTOKG),
        Contender("docstokg-postgresql", "postgresql", "docstokg", *DOCSTOKG),
        Contender("sqlite3-floor", "sqlite", "sqlite3", *FLOOR, peer_of="docstokg-sqlite"),
        Contender("huey", "sqlite", "huey", *HUEY, peer_of="docstokg-sqlite"),
        Contender(
            "procrastinate",
            "postgresql",
            "procrastinate",
            *PROCRASTINATE,
            peer_of="docstokg-postgresql",
            stops_itself=False,
        ),
        Contender("dbos", "sqlite", "dbos", *DBOS_CALLS, peer_of="docstokg-sqlite"),
    )
}


# --- one round ----------------------------------------------------------------------------------


@dataclass
class Place:
    """Where a round's databases go: a temporary folder, and the PostgreSQL cluster if any."""

    folder: Path
    server: ThrowawayPostgres | None
    made: int = 0

    def target(self, contender: Contender) -> str:
        self.made += 1
        tag = f"{contender.name.replace('-', '_')}_{self.made}"
        if contender.backend == "sqlite":
            path = str(self.folder / f"{tag}.sqlite3")
            return f"sqlite:///{path}" if contender.module == "docstokg" else path
        if self.server is None:
            raise BenchError(f"{contender.name} needs PostgreSQL, and none was started")
        return self.server.create_database(tag)


def _child(role: str, body: Callable[[], None], profile: Path | None) -> None:
    """A producer's or worker's process body: its errors and exit code tell the harness."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is the harness's to handle
    profiler = cProfile.Profile() if profile is not None else None
    try:
        if profiler is not None:
            profiler.runcall(body)
        else:
            body()
    except BaseException as exc:
        print(f"{role} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        raise
    finally:
        if profiler is not None and profile is not None:
            profiler.dump_stats(profile.with_name(f"{profile.stem}-{os.getpid()}.prof"))


def run_round(
    contender: Contender, place: Place, jobs: int, workers: int, profile: Path | None = None
) -> float:
    """Seconds from the first plan to the last completion of ``jobs`` jobs with ``workers``."""
    target = contender.prepare(place.target(contender))
    shared = Shared.new()
    ctx = multiprocessing.get_context("fork")
    procs: list[BaseProcess] = []
    try:
        for index in range(workers):
            body = _bound(contender.work, target, index, shared)
            procs.append(ctx.Process(target=_child, args=(f"worker {index}", body, profile)))
            procs[-1].start()
        _wait(lambda: shared.ready.value >= workers, procs, READY_TIMEOUT_S, "workers ready")
        body = _bound(contender.produce, target, jobs, shared)
        producer = ctx.Process(target=_child, args=("producer", body, None))
        producer.start()
        procs.append(producer)
        _wait(lambda: shared.done.value >= jobs, procs, ROUND_TIMEOUT_S, f"{jobs} jobs done")
        producer.join(WORKER_EXIT_TIMEOUT_S)
        if producer.exitcode != 0:
            raise BenchError(f"{contender.name}: the producer ended with {producer.exitcode}")
        shared.stop.set()
        if not contender.stops_itself:
            for proc in procs:
                proc.terminate()  # SIGTERM: the worker's graceful stop
    finally:
        shared.stop.set()
        _stop(procs)
    contender.verify(target, jobs)
    return shared.last_done_at.value - shared.started_at.value


def _bound(
    function: Callable[[str, int, Shared], None], target: str, number: int, shared: Shared
) -> Callable[[], None]:
    return lambda: function(target, number, shared)


def _wait(
    condition: Callable[[], bool], procs: list[BaseProcess], timeout_s: float, what: str
) -> None:
    """Wait for ``condition``, failing at once if a process died or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        for proc in procs:
            if proc.exitcode not in (None, 0):
                raise BenchError(f"waiting for {what}: a process ended with {proc.exitcode}")
        if time.monotonic() > deadline:
            raise BenchError(f"waited {timeout_s:.0f} s for {what}; giving up")
        time.sleep(0.002)


def _stop(procs: list[BaseProcess]) -> None:
    """Let the processes end (stop is set), then SIGTERM, then SIGKILL the ones that stay."""
    deadline = time.monotonic() + WORKER_EXIT_TIMEOUT_S
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
            proc.join(WORKER_EXIT_TIMEOUT_S)
        if proc.is_alive():
            proc.kill()
            proc.join()


# --- statement counts (docstokg) --------------------------------------------------------------


@dataclass
class Tally:
    """Statements seen, by their first keyword."""

    by_kind: Counter[str] = field(default_factory=Counter)

    def see(self, sql: str) -> None:
        words = sql.split(None, 2)
        kind = words[0].upper() if words else "?"
        self.by_kind[kind] += 1
        if kind not in {"BEGIN", "COMMIT", "ROLLBACK"}:
            self.by_kind["statements"] += 1

    def per_job(self, jobs: int) -> dict[str, float]:
        return {kind: round(count / jobs, 2) for kind, count in sorted(self.by_kind.items())}


def _traced(body: Callable[[], None], out: Path) -> Callable[[], None]:
    """``body`` with every SQLite statement of its process counted into ``out`` (JSON)."""

    def run() -> None:
        from sqlalchemy import Engine, event

        tally = Tally()

        def on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
            dbapi_connection.set_trace_callback(tally.see)

        event.listen(Engine, "connect", on_connect)
        try:
            body()
        finally:
            out.write_text(json.dumps(dict(tally.by_kind)))

    return run


def count_statements(contender: Contender, place: Place, jobs: int) -> dict[str, Any]:
    """Plan ``jobs`` jobs, then work them off with one worker: statements per job of each."""
    target = contender.prepare(place.target(contender))
    pg_log = None
    if contender.backend == "postgresql" and place.server is not None:
        pg_log = place.server.root / "server.log"
        dbname = target.rsplit("/", 1)[1]
        place.server.admin(f"ALTER DATABASE \"{dbname}\" SET log_statement = 'all'")
    figures: dict[str, Any] = {}
    for role, function, number in (("producer", contender.produce, jobs),
                                   ("worker", contender.work, 0)):  # fmt: skip
        shared = Shared.new()
        shared.produced.set()  # the worker ends when it finds nothing left
        out = place.folder / f"count-{role}.json"
        offset = pg_log.stat().st_size if pg_log is not None else 0
        body = _bound(function, target, number, shared)
        if pg_log is None:
            body = _traced(body, out)
        proc = multiprocessing.get_context("fork").Process(target=_child,
                                                           args=(role, body, None))  # fmt: skip
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise BenchError(f"counting {contender.name}: the {role} ended with {proc.exitcode}")
        tally = Tally()
        if pg_log is not None:
            for sql in _logged_statements(pg_log, offset):
                tally.see(sql)
        else:
            tally.by_kind.update(json.loads(out.read_text()))
        figures[role] = tally.per_job(jobs)
    contender.verify(target, jobs)
    return figures


LOGGED = re.compile(r"LOG:  (?:statement|execute [^:]*): (.*)")


def _logged_statements(log: Path, offset: int) -> Iterator[str]:
    """The statements PostgreSQL logged (log_statement = all) after ``offset``."""
    with log.open(errors="replace") as handle:
        handle.seek(offset)
        for line in handle:
            if match := LOGGED.search(line):
                yield match.group(1)


# --- the harness ----------------------------------------------------------------------------------


@dataclass
class Row:
    system: str
    workers: int
    jobs: int
    seconds: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def jobs_per_s(self) -> float | None:
        return None if not self.seconds else self.jobs / statistics.median(self.seconds)


def _available(contender: Contender) -> str | None:
    """None if the contender's package imports, else why not (with the error)."""
    try:
        __import__(contender.module)
    except ImportError as exc:
        return (
            f"cannot import {contender.module} ({exc}); the peers come with "
            ".venv/bin/pip install -e '.[bench]'"
        )
    return None


def measure(args: argparse.Namespace, place: Place) -> list[Row]:
    rows: list[Row] = []
    for workers in args.workers:
        for name in args.systems:
            contender = CONTENDERS[name]
            row = Row(name, workers, args.jobs)
            rows.append(row)
            row.error = _available(contender)
            for round_number in range(args.rounds if row.error is None else 0):
                profile = None
                if args.profile is not None:
                    profile = args.profile / f"{name}-w{workers}-r{round_number}"
                try:
                    row.seconds.append(run_round(contender, place, args.jobs, workers, profile))
                except (BenchError, OSError, ImportError) as exc:
                    row.error = f"{type(exc).__name__}: {exc}"
                    break
            _print_progress(row, args)
    return rows


def _print_progress(row: Row, args: argparse.Namespace) -> None:
    if args.json:
        return
    rate = row.jobs_per_s
    runs = " ".join(f"{row.jobs / s:,.0f}" for s in row.seconds)
    text = f"{rate:,.0f} jobs/s (rounds: {runs})" if rate else f"FAILED: {row.error}"
    print(f"  {row.system:<20} W={row.workers}: {text}", file=sys.stderr, flush=True)


def _ratios(rows: list[Row]) -> dict[tuple[str, int], float]:
    """docstokg's jobs/s over each peer's (above 1: docstokg is faster)."""
    rates = {(row.system, row.workers): row.jobs_per_s for row in rows}
    ratios = {}
    for (system, workers), rate in rates.items():
        peer_of = CONTENDERS[system].peer_of
        ours = rates.get((peer_of, workers)) if peer_of else None
        if rate and ours:
            ratios[(system, workers)] = ours / rate
    return ratios


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    ratios = _ratios(rows)
    print(f"job queue: N={args.jobs:,} jobs, {STEPS} recorded steps each, median of "
          f"{args.rounds} round(s); jobs/s, and docstokg's jobs/s over the peer's")  # fmt: skip
    print(f"load average at the end: {' '.join(f'{n:.1f}' for n in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs")  # fmt: skip
    header = f"{'system':<20}" + "".join(
        f"{f'W={w} jobs/s':>14}{'docstokg/x':>11}" for w in args.workers
    )
    print(header)
    for name in args.systems:
        cells = []
        for workers in args.workers:
            row = next(r for r in rows if r.system == name and r.workers == workers)
            rate = row.jobs_per_s
            ratio = ratios.get((name, workers))
            cells.append(f"{f'{rate:,.0f}' if rate else 'failed':>14}"
                         f"{f'{ratio:.2f}' if ratio else '':>11}")  # fmt: skip
        print(f"{name:<20}" + "".join(cells))
    for row in rows:
        if row.error:
            print(f"{row.system} W={row.workers}: {row.error}")
    _print_goals(ratios, args)


GOALS = (("huey", 1.0), ("procrastinate", 1.0), ("dbos", 20.0))


def _print_goals(ratios: dict[tuple[str, int], float], args: argparse.Namespace) -> None:
    for peer, factor in GOALS:
        for workers in args.workers:
            ratio = ratios.get((peer, workers))
            if ratio is not None:
                verdict = "met" if ratio > factor else "NOT MET"
                print(f"goal: docstokg > {factor:g}x {peer} at W={workers}: {ratio:.2f}x, "
                      f"{verdict}")  # fmt: skip


def _as_json(rows: list[Row], args: argparse.Namespace) -> str:
    ratios = _ratios(rows)
    return json.dumps(
        {
            "jobs": args.jobs,
            "steps": STEPS,
            "rounds": args.rounds,
            "results": [
                {
                    "system": row.system,
                    "workers": row.workers,
                    "seconds": [round(s, 4) for s in row.seconds],
                    "jobs_per_s": round(row.jobs_per_s, 1) if row.jobs_per_s else None,
                    "docstokg_over_peer": round(ratios[(row.system, row.workers)], 3)
                    if (row.system, row.workers) in ratios
                    else None,
                    "error": row.error,
                }
                for row in rows
            ],
        },
        indent=2,
    )


def print_profiles(folder: Path, top: int = 15) -> None:
    """The workers' profiles, summed per system and W: top functions by cumulative and own time."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(folder.glob("*.prof")):
        groups.setdefault(path.name.split("-r")[0], []).append(path)
    for group, paths in groups.items():
        stats = pstats.Stats(str(paths[0]), stream=io.StringIO())
        for path in paths[1:]:
            stats.add(str(path))
        for order in ("cumulative", "tottime"):
            out = io.StringIO()
            stats.stream = out  # type: ignore[attr-defined]
            stats.sort_stats(order).print_stats(top)
            print(f"--- {group} ({len(paths)} worker runs), top {top} by {order}")
            print(out.getvalue().split("\n\n", 1)[-1].rstrip())


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", "-n", type=int, default=2_000, help="jobs per round (2000)")
    parser.add_argument("--workers", "-w", default="1,4",
                        help="worker process counts, comma-separated (1,4)")  # fmt: skip
    parser.add_argument("--rounds", "-r", type=int, default=3,
                        help="rounds per system and W; the median is reported (3)")  # fmt: skip
    parser.add_argument("--systems", "-s", default=",".join(CONTENDERS),
                        help=f"comma-separated, from: {', '.join(CONTENDERS)} (all)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--count", action="store_true",
                        help="count docstokg's statements and transactions per job "
                        "instead of timing")  # fmt: skip
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run workers under cProfile, keep the profiles in DIR, print the "
                        "top functions")  # fmt: skip
    args = parser.parse_args(argv)
    args.workers = [int(n) for n in args.workers.split(",")]
    args.systems = args.systems.split(",")
    unknown = [name for name in args.systems if name not in CONTENDERS]
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(CONTENDERS)}")
    if args.jobs < 1 or args.rounds < 1 or min(args.workers) < 1:
        parser.error("--jobs, --rounds and every --workers count must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    needs_pg = any(CONTENDERS[name].backend == "postgresql" for name in args.systems)
    server = ThrowawayPostgres().start() if needs_pg else None
    try:
        with tempfile.TemporaryDirectory(prefix="docstokg-peers-") as folder:
            place = Place(Path(folder), server)
            if args.count:
                for name in args.systems:
                    if CONTENDERS[name].module == "docstokg":
                        figures = count_statements(CONTENDERS[name], place, args.jobs)
                        print(json.dumps({name: figures}) if args.json else f"{name} per job: "
                              f"{json.dumps(figures)}")  # fmt: skip
                return
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
            rows = measure(args, place)
    finally:
        if server is not None:
            server.stop()
    print(_as_json(rows, args) if args.json else "", end="\n" if args.json else "")
    if not args.json:
        print_table(rows, args)
    if args.profile is not None:
        print_profiles(args.profile)


if __name__ == "__main__":
    main()
