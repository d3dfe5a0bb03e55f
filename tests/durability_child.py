"""A process that writes to the ledger and reports each returned commit, and its killer.

Used by tests/integration/test_commit_durability.py and
bench/bench_commit_durability.py to check that ``uow.commit()`` means
committed: whatever a process was told is committed is in the database after
that process is SIGKILLed at any moment.

The child side.  Run as ``python -m tests.durability_child``, it imports the
ledger once and then, for each line ``URL ROUND SEED THREADS`` read on stdin,
forks a worker process, waits for it to die and says ``ended PID STATUS``.
Importing docstokg takes most of a second; forking an interpreter that
already holds it makes a kill point cost milliseconds, so a test can afford
20 of them.  (It forks with no thread and no database connection open: the
worker opens its own ledger.)

The worker says ``running PID`` once its threads start; each thread then loops on
small units of work and, right after ``commit()`` returns, reports what that
commit made durable, in one ``write`` of less than PIPE_BUF (atomic on a pipe):

* ``P JOB_ID``: a job planned (alone, or with a few others in one unit of work);
* ``S JOB_ID STATE EPOCH``: a job leased (LEASED) or advanced (HEAD_DONE) under
  the lease of that epoch.

Every line goes to the one stdout, so a worker's reports always come before
the ``ended`` line of its death.  A worker that fails on its own writes its
traceback to stderr and exits 70: the parent sees a status that is not SIGKILL.

The parent side is :class:`KillPoints`: it runs the child, kills a worker at a
chosen moment, collects its :class:`Reports`, and :func:`missing_commits`
reads the database behind the ledger's back for what the reports promised.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from sqlalchemy import bindparam, create_engine, text
from sqlalchemy.pool import NullPool

from docstokg import JobSpec, JobState, Ledger, advance_state, lease_next_job, plan_job_if_absent
from docstokg.iterables import batched
from docstokg.ledger import migrate
from docstokg.states import PATH_RANK

LEASE_TTL_S = 3600.0  # nobody takes over a killed worker's job while the parent looks at it
WORKER_FAILED = 70
REPO_ROOT = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT_S = 60.0  # only a broken child takes this long to answer


# --- the child: the worker process and the forking loop ------------------------------------


def emit(text: str) -> None:
    """Whole lines in one write: the reports of several threads never interleave."""
    data = text.encode()
    while data:
        data = data[os.write(sys.stdout.fileno(), data) :]


class Worker:
    """One thread's loop of units of work (planning, leasing, advancing), each reported."""

    def __init__(self, ledger: Ledger, prefix: str, rng: random.Random) -> None:
        self._ledger = ledger
        self._prefix = prefix
        self._rng = rng
        self._planned = 0

    def run_forever(self) -> None:
        while True:
            roll = self._rng.random()
            if roll < 0.5:
                self._plan_one()
            elif roll < 0.8:
                self._plan_several(self._rng.randint(2, 5))
            else:
                self._lease_and_advance()

    def _spec(self) -> JobSpec:
        self._planned += 1
        work_id = f"{self._prefix}-{self._planned}"
        return JobSpec(work_id, "pdf", f"https://example.org/{work_id}.pdf")

    def _plan_one(self) -> None:
        spec = self._spec()
        job_id = plan_job_if_absent(
            self._ledger,
            work_id=spec.work_id,
            artifact_id=spec.artifact_id,
            canonical_url=spec.canonical_url,
        )
        emit(f"P {job_id}\n")

    def _plan_several(self, count: int) -> None:
        with self._ledger.unit_of_work() as uow:
            now = uow.now()
            planned = [uow.jobs.plan(self._spec(), now=now) for _ in range(count)]
            uow.commit()
        emit("".join(f"P {job.job_id}\n" for job in planned))

    def _lease_and_advance(self) -> None:
        lease = lease_next_job(self._ledger, owner=self._prefix, ttl_s=LEASE_TTL_S)
        if lease is None:
            return
        emit(f"S {lease.job_id} {JobState.LEASED.value} {lease.epoch}\n")
        if not advance_state(
            self._ledger, lease, to_state=JobState.HEAD_DONE, allowed_from={JobState.LEASED}
        ):
            raise AssertionError(f"job {lease.job_id} did not move to HEAD_DONE under {lease}")
        emit(f"S {lease.job_id} {JobState.HEAD_DONE.value} {lease.epoch}\n")


def work(url: str, round_number: int, seed: int, threads: int) -> None:
    """The worker process: ``threads`` threads writing until SIGKILL ends it."""
    ledger = Ledger.connect(url)
    with ledger.unit_of_work(read_only=True) as uow:
        uow.jobs.count_by_state()  # connect and check the schema before the parent's clock starts
    for n in range(threads):
        worker = Worker(ledger, f"r{round_number}t{n}", random.Random(f"{seed}/{round_number}/{n}"))
        threading.Thread(target=_exit_on_failure, args=(worker.run_forever,), daemon=True).start()
    emit(f"running {os.getpid()}\n")
    threading.Event().wait()  # SIGKILL is the only way out


def _exit_on_failure(loop: Callable[[], None]) -> None:
    try:
        loop()
    except BaseException:  # noqa: BLE001 - shown to the parent, which fails on the exit status
        _die_telling()


def _die_telling() -> None:
    sys.stderr.write(traceback.format_exc())
    sys.stderr.flush()
    os._exit(WORKER_FAILED)


def warm_up() -> None:
    """Load now what a worker's first unit of work would load lazily (its schema check).

    Alembic's import and the scan of the migrations take longer than a kill
    point's whole work; done once here, every forked worker inherits them.
    """
    import alembic.runtime.migration  # noqa: F401 - imported for its side effect only

    migrate.head_revision()
    migrate.known_revisions()


def main() -> None:
    warm_up()
    for line in sys.stdin:
        url, round_number, seed, threads = line.split()
        pid = os.fork()
        if pid == 0:
            try:
                work(url, int(round_number), int(seed), int(threads))
            except BaseException:  # noqa: BLE001 - shown to the parent, as above
                _die_telling()
        _, status = os.waitpid(pid, 0)
        emit(f"ended {pid} {status}\n")


# --- the parent: kill points and what they must not lose -----------------------------------


@dataclass
class Reports:
    """What one killed worker reported committed before it died."""

    planned: set[str] = field(default_factory=set)
    # job_id -> (lease epoch, rank on the path) of the furthest move reported
    moved: dict[str, tuple[int, int]] = field(default_factory=dict)
    writes: int = 0  # reported lines: each a write promised durable

    def add(self, line: str) -> None:
        kind, job_id, *rest = line.split()
        self.writes += 1
        if kind == "P":
            self.planned.add(job_id)
            return
        state, epoch = rest
        reached = (int(epoch), PATH_RANK[JobState(state)])
        self.moved[job_id] = max(reached, self.moved.get(job_id, reached))


class KillPoints:
    """The child process of this module, and one SIGKILLed worker after another."""

    def __init__(self, stderr_path: Path) -> None:
        self._stderr_path = stderr_path
        self._lines: queue.Queue[str | None] = queue.Queue()
        # The tests package importable, and docstokg from wherever the parent has it.
        paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        with stderr_path.open("wb") as stderr:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tests.durability_child"],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                start_new_session=True,  # its workers too can be killed as one group
            )
        self._worker: int | None = None  # the pid of the worker running now, once it said so
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def kill_round(
        self, url: str, round_number: int, *, seed: int, threads: int, delay_s: float
    ) -> Reports:
        """Start a worker, SIGKILL it ``delay_s`` after it runs; what it reported before dying."""
        stdin = self._process.stdin
        assert stdin is not None
        stdin.write(f"{url} {round_number} {seed} {threads}\n")
        stdin.flush()
        reports = Reports()
        running = self._collect_until(("running", "ended"), reports)
        if running.startswith("running"):
            self._worker = int(running.split()[1])
            time.sleep(delay_s)  # the kill point, drawn at random: not a synchronisation
            self._kill_worker()
            ended = self._collect_until(("ended",), reports)
        else:
            ended = running
        _, pid, status_text = ended.split()
        status = int(status_text)
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            raise AssertionError(
                f"worker {pid} of round {round_number} died on its own (status {status}), "
                f"not by SIGKILL:\n{self.stderr()}"
            )
        return reports

    def stderr(self) -> str:
        return self._stderr_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    def close(self) -> None:
        """Let the child end (its stdin closed); a test that failed mid-round kills what runs."""
        self._kill_worker()
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # stuck waiting for a worker that never said it ran
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._reader.join(timeout=CHILD_TIMEOUT_S)  # it reads until the end of the pipe
        if self._process.stdout is not None:
            self._process.stdout.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _kill_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            with contextlib.suppress(ProcessLookupError):  # died on its own: see its status
                os.kill(worker, signal.SIGKILL)

    def _read(self) -> None:
        stdout: IO[str] | None = self._process.stdout
        assert stdout is not None
        for line in stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _next(self) -> str:
        try:
            line = self._lines.get(timeout=CHILD_TIMEOUT_S)
        except queue.Empty:
            raise AssertionError(
                f"the durability child said nothing for {CHILD_TIMEOUT_S} s:\n{self.stderr()}"
            ) from None
        if line is None:
            raise AssertionError(f"the durability child exited:\n{self.stderr()}")
        return line

    def _collect_until(self, words: tuple[str, ...], reports: Reports) -> str:
        """Add report lines to ``reports`` until a line starting with one of ``words``."""
        while True:
            line = self._next()
            if line.startswith(words):
                return line
            reports.add(line)


def missing_commits(url: str, reports: Reports) -> list[str]:
    """The reported commits the database does not hold, each described; [] if none is lost.

    Read with an engine of its own (no ledger code): a planned job must be
    there; a reported move must be there or further (a later epoch, or a
    later state on the same one).
    """
    wanted = reports.planned | set(reports.moved)
    found = dict(_job_positions(url, wanted))
    lost = [f"planned {job_id}: absent" for job_id in sorted(reports.planned - set(found))]
    for job_id, reached in sorted(reports.moved.items()):
        position = found.get(job_id)
        if position is None or position < reached:
            lost.append(f"moved {job_id} to (epoch, rank) {reached}: the database has {position}")
    return lost


def _job_positions(url: str, job_ids: Iterable[str]) -> Iterator[tuple[str, tuple[int, int]]]:
    query = text(
        "SELECT job_id, lease_epoch, state FROM artifact_jobs WHERE job_id IN :ids"
    ).bindparams(bindparam("ids", expanding=True))
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            for chunk in batched(sorted(job_ids), 500):
                for job_id, epoch, state in connection.execute(query, {"ids": list(chunk)}):
                    yield job_id, (int(epoch), PATH_RANK.get(JobState(state), -1))
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
