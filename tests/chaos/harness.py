"""Chaos for ``docstokg run``: competing runs, injected faults, then every invariant checked.

One *round* serves throttled artifacts from an :class:`ArtifactServer` in this
process (its request log says which run fetched which bytes, and when: each
run sends its own User-Agent), starts ``plan.runs`` concurrent ``docstokg
run`` processes on one manifest, one ``--out`` and one ledger, and applies
faults at random moments while they work:

- ``kill``: SIGKILL a working run, then start a replacement;
- ``stop``: SIGSTOP a run until every lease it held expired and was taken
  over (or ended), then SIGCONT it;
- ``pg_restart``: ``pg_ctl restart -m fast`` of the PostgreSQL cluster;
- ``held_writer``: another process holds SQLite's write lock (``BEGIN
  IMMEDIATE``) for ``plan.hold_s`` seconds.

Then the surviving runs finish, a recovery run finishes what faults left (if
anything), and a final clean run must find nothing to do.
:func:`check_invariants` turns what is on disk, in the ledger, in the
server's log and in the runs' output into a list of violations (empty: all
held).  ``tests/chaos/test_chaos.py`` runs a short round per backend;
``bench/chaos.py`` runs long ones and prints the figures;
``tests/chaos/test_multi_host.py`` checks the same invariants on a fleet of
simulated machines (process groups) sharing one PostgreSQL ledger.

Waiting a random moment before a fault is the point of chaos, not a way to
synchronise; the harness polls only what a child process cannot signal (its
requests in the log, its leases in the ledger), each with a deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from docstokg import JobRecord, Ledger
from docstokg.keys import job_id_for, job_key
from docstokg.testing.server import Artifact, ArtifactServer, RequestRecord, generated_body
from tests.cli_kit import cli_env
from tests.manifests import write_jsonl
from tests.pgcluster import ThrowawayPostgres

KiB: Final = 1024
AGENT_PREFIX: Final = "docstokg-chaos/"
STORED_STATES: Final = frozenset({"DEDUPED", "SKIPPED_DUPLICATE"})
CLOCK_TOLERANCE_S: Final = 1.0
"""Slack between the ledger's clock and this host's, for "requested after it was stored".

On SQLite both are this host's ``time.time()``; on PostgreSQL the ledger reads
the server's clock (same host here) and carries it forward with a monotonic
clock, so they agree to well under a second.
"""
POLL_S: Final = 0.05
MAX_LISTED: Final = 12
"""At most this many violations of one kind are spelled out; the rest are counted."""
FINAL: Final = "final"
RECOVER: Final = "recover"
TRACEBACK: Final = "Traceback (most recent call last)"

_HOLDER: Final = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=120)
connection.execute("BEGIN IMMEDIATE")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
connection.execute("COMMIT")
"""
"""A process that takes SQLite's write lock, says so, holds it, and lets go."""


@dataclass(frozen=True)
class ChaosPlan:
    """What one round serves, how many runs compete, and which faults it applies."""

    backend: str
    urls: int = 30
    duplicates: int = 2
    min_bytes: int = 64 * KiB
    max_bytes: int = 512 * KiB
    bytes_per_s: int = 128 * KiB
    runs: int = 3
    workers: int = 2
    kills: int = 10
    stops: int = 1
    pg_restarts: int = 0
    held_writers: int = 0
    lease_ttl_s: float = 2.0
    hold_s: float = 3.0
    max_delay_s: float = 1.5
    settle_timeout_s: float = 120.0
    seed: int = 0
    pause_mid_body: bool = False
    """Every GET stops halfway through the body until the test releases its path."""

    def schedule(self) -> list[str]:
        """The faults in order: the kills, with the other faults spread evenly among them."""
        kinds = ["kill"] * self.kills
        specials = (
            ["stop"] * self.stops
            + ["pg_restart"] * self.pg_restarts
            + ["held_writer"] * self.held_writers
        )
        random.Random(self.seed).shuffle(specials)
        for number, kind in reversed(list(enumerate(specials, start=1))):
            kinds.insert(round(number * self.kills / (len(specials) + 1)), kind)
        return kinds

    def run_env(self, label: str) -> dict[str, str]:
        """A clean environment (:func:`tests.cli_kit.cli_env`) plus the round's settings.

        A short lease makes takeovers happen within the round; many attempts
        and a short backoff keep a job that faults hit often from running out
        or waiting minutes (a worker's death counts as an attempt).
        """
        return cli_env(
            columns=400,
            DOCSTOKG_IDEMPOTENCY_LEASE_TTL_S=str(self.lease_ttl_s),
            DOCSTOKG_IDEMPOTENCY_MAX_ATTEMPTS="100",
            DOCSTOKG_IDEMPOTENCY_BACKOFF_BASE_S="0.2",
            DOCSTOKG_IDEMPOTENCY_BACKOFF_MAX_S="1",
            DOCSTOKG_IDEMPOTENCY_RECONCILIATION_INTERVAL_S="5",
            DOCSTOKG_IDEMPOTENCY_USER_AGENT=agent(label),
        )


def agent(label: str) -> str:
    """The User-Agent of the run called ``label``: how the server's log tells runs apart."""
    return AGENT_PREFIX + label


@dataclass(frozen=True)
class Item:
    """One manifest row and the bytes its URL serves."""

    path: str
    url: str
    body: bytes
    work_id: str
    sha256: str

    @property
    def job_id(self) -> str:
        return job_id_for(job_key(self.work_id, "bin", self.url))

    @property
    def final_path(self) -> str:
        return f"artifacts/{self.sha256[:2]}/{self.sha256}"


def serve_items(server: ArtifactServer, plan: ChaosPlan, prefix: str) -> list[Item]:
    """``plan.urls`` throttled artifacts of random sizes; the last ``duplicates`` repeat bodies.

    With ``plan.pause_mid_body`` each GET waits halfway until ``server.release(path)``.
    """
    rng = random.Random(f"{plan.seed}:{prefix}")
    items: list[Item] = []
    for number in range(plan.urls):
        path = f"/{prefix}/{number}.bin"
        if number >= plan.urls - plan.duplicates and number > 0:
            body = items[rng.randrange(plan.urls - plan.duplicates)].body
        else:
            body = generated_body(path, rng.randint(plan.min_bytes, plan.max_bytes))
        pause_after = len(body) // 2 if plan.pause_mid_body else None
        url = server.add(
            path, Artifact(body, bytes_per_s=plan.bytes_per_s, pause_after=pause_after)
        )
        digest = hashlib.sha256(body).hexdigest()
        items.append(Item(path, url, body, f"{prefix}-{number}", digest))
    return items


def write_manifest(path: Path, items: Sequence[Item]) -> Path:
    return write_jsonl(path, [(item.work_id, "bin", item.url) for item in items])


# --- databases ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Database:
    """The ledger the runs share: ``url`` None is the run's default ``OUT/manifest.sqlite3``."""

    backend: str
    url: str | None = None
    restart: Callable[[], None] | None = None

    def ledger_url(self, out: Path) -> str:
        return self.url if self.url is not None else f"sqlite:///{out.resolve()}/manifest.sqlite3"

    def run_args(self) -> list[str]:
        return [] if self.url is None else ["--db", self.url]

    def sqlite_file(self, out: Path) -> Path:
        prefix = "sqlite:///"
        url = self.ledger_url(out)
        if not url.startswith(prefix):
            raise ValueError(f"a held SQLite writer needs a SQLite ledger, not {url}")
        return Path(url.removeprefix(prefix))


def postgres_restarter(cluster: ThrowawayPostgres) -> Callable[[], None]:
    """``pg_ctl restart -m fast`` of ``cluster``: every connection is cut, the server comes back.

    pg_ctl reuses the options the cluster was started with (``postmaster.opts``),
    so it comes back on the same port.
    """

    def restart() -> None:
        cluster.restart()

    return restart


# --- runs -----------------------------------------------------------------------------------


class RunProcess:
    """One ``docstokg run``; output goes to files, so no pipe fills up while it is stopped.

    ``command`` replaces ``python -m docstokg`` (a simulated machine, say);
    ``own_group`` starts it as the leader of a process group of its own, so
    that :meth:`kill_group` kills it with everything it started.
    """

    def __init__(
        self,
        label: str,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: dict[str, str],
        command: Sequence[str] = (sys.executable, "-m", "docstokg"),
        own_group: bool = False,
    ) -> None:
        logs = cwd / "logs"
        logs.mkdir(exist_ok=True)
        self.label = label
        self.stdout_path = logs / f"{label}.out"
        self.stderr_path = logs / f"{label}.err"
        self.killed = False
        self.stopped = False
        self.started_at = time.time()
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [*command, *argv],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                process_group=0 if own_group else None,
            )

    def alive(self) -> bool:
        return self.process.poll() is None

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        """SIGKILL (a stopped process dies too) and reap; idempotent."""
        if self.alive():
            self.killed = True
            self.process.kill()
        self.process.wait()

    def kill_group(self) -> None:
        """SIGKILL the process group it leads (a whole machine at once) and reap the leader."""
        with contextlib.suppress(ProcessLookupError):  # the group already ended
            os.killpg(self.process.pid, signal.SIGKILL)
            self.killed = True
        self.process.wait()


@dataclass(frozen=True)
class FaultEvent:
    """A fault applied: ``run`` is the run it hit (None: all of them), times are time.time()."""

    kind: str
    at: float
    until: float
    run: str | None
    note: str = ""


@dataclass(frozen=True)
class RunOutcome:
    label: str
    returncode: int
    killed: bool
    stopped: bool
    stderr: str
    stdout: str
    started_at: float = 0.0


# --- the evidence, and the invariants ------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """Everything the invariants are checked against, gathered after the final run."""

    items: Sequence[Item]
    out: Path
    jobs: Mapping[str, JobRecord]
    stored_at: Mapping[str, float]
    requests: Sequence[RequestRecord]
    events: Sequence[FaultEvent]
    runs: Sequence[RunOutcome]
    began: float


def check_invariants(evidence: Evidence) -> list[str]:
    """Every broken invariant, one message each (at most MAX_LISTED per kind); [] if all hold."""
    checks: list[Callable[[Evidence], list[str]]] = [
        check_runs,
        check_store,
        check_jobs,
        check_staging,
        check_no_refetch,
        check_bytes,
    ]
    violations: list[str] = []
    for check in checks:
        found = check(evidence)
        violations += found[:MAX_LISTED]
        if len(found) > MAX_LISTED:
            violations.append(f"... and {len(found) - MAX_LISTED} more from {check.__name__}")
    return violations


def check_runs(evidence: Evidence) -> list[str]:
    """No run printed a traceback; every run no one killed exited 0 (its work all ended)."""
    found = []
    for run in evidence.runs:
        if TRACEBACK in run.stderr:
            found.append(f"run {run.label} printed a traceback:\n{_traceback_text(run.stderr)}")
        if not run.killed and run.returncode != 0 and not _refused_during_a_restart(run, evidence):
            tail = "\n".join(run.stderr.strip().splitlines()[-6:])
            stopped = " (it had been SIGSTOPped)" if run.stopped else ""
            found.append(
                f"run {run.label}{stopped} exited {run.returncode} though no one killed it; "
                f"stderr ends:\n{tail}"
            )
    return found


def _refused_during_a_restart(run: RunOutcome, evidence: Evidence) -> bool:
    """The run met the server down before it ever reached it, and said so cleanly.

    A database that never answered is reported at once, not waited out
    (AGENTS.md: a wrong host or port is said at once): a run that starts
    while PostgreSQL restarts ends with that one line, and its replacement
    does the work.
    """
    lines = run.stderr.strip().splitlines()
    said = lines[-1] if lines else ""
    restarted_while_it_lived = any(
        event.kind == "pg_restart" and event.until >= run.started_at for event in evidence.events
    )
    return (
        run.returncode == 1
        and TRACEBACK not in run.stderr
        and said.startswith("error: cannot use the ledger database")
        and "Connection refused" in said
        and restarted_while_it_lived
    )


def _traceback_text(stderr: str) -> str:
    """From the first traceback to at most 40 lines on, indented."""
    lines = stderr[stderr.index(TRACEBACK) :].splitlines()
    shown = lines[:40] + ([f"... ({len(lines) - 40} more lines)"] if len(lines) > 40 else [])
    return "\n".join("    " + line for line in shown)


def check_store(evidence: Evidence) -> list[str]:
    """``artifacts/`` holds exactly one file per content, named by its SHA-256, and nothing else."""
    artifacts = evidence.out / "artifacts"
    expected = {item.sha256: len(item.body) for item in evidence.items}
    found: list[str] = []
    seen: set[str] = set()
    for entry in sorted(artifacts.rglob("*")):
        where = entry.relative_to(evidence.out)
        if entry.is_dir() and not entry.is_symlink():
            if entry.parent != artifacts or len(entry.name) != 2:
                found.append(f"unexpected folder {where} in the store")
            continue
        seen.add(entry.name)  # a corrupt file is reported as such, not also as missing
        problem = _stored_file_problem(entry, expected)
        if problem is not None:
            found.append(f"{where}: {problem}")
    found += [
        f"artifacts/{sha[:2]}/{sha} ({size:,} bytes) is missing from the store"
        for sha, size in expected.items()
        if sha not in seen
    ]
    return found


def _stored_file_problem(entry: Path, expected: Mapping[str, int]) -> str | None:
    if entry.is_symlink() or not entry.is_file():
        return "not a regular file"
    if entry.name not in expected or entry.parent.name != entry.name[:2]:
        return f"an extra file ({entry.stat().st_size:,} bytes) no artifact of the manifest names"
    data = entry.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.name or len(data) != expected[entry.name]:
        return (
            f"holds {len(data):,} bytes hashing to {digest[:16]}…, not the "
            f"{expected[entry.name]:,} bytes its name promises"
        )
    return None


def check_jobs(evidence: Evidence) -> list[str]:
    """Every job ended stored, with the right hash, size and path; one DEDUPED per content."""
    found = []
    for item in evidence.items:
        job = evidence.jobs.get(item.job_id)
        if job is None:
            found.append(f"job of {item.path} ({item.job_id}) is not in the ledger")
        elif job.state.value not in STORED_STATES:
            found.append(
                f"job of {item.path} ended {job.state.value} after {job.attempts} attempts "
                f"(last error: {job.last_error})"
            )
        elif (job.sha256, job.size_bytes, job.final_path) != (
            item.sha256,
            len(item.body),
            item.final_path,
        ):
            found.append(
                f"job of {item.path} records sha256 {job.sha256}, {job.size_bytes} bytes at "
                f"{job.final_path}; the server's body is {item.sha256}, {len(item.body)} bytes"
            )
    owners = Counter(job.sha256 for job in evidence.jobs.values() if job.state.value == "DEDUPED")
    found += [
        f"{count} jobs are DEDUPED for content {sha}" for sha, count in owners.items() if count != 1
    ]
    return found


def check_staging(evidence: Evidence) -> list[str]:
    """Every job ended, so nothing of any of them may be left in ``.staging``."""
    staging = evidence.out / ".staging"
    if not staging.is_dir():
        return []
    ended = {job_id for job_id, job in evidence.jobs.items() if job.state.value in STORED_STATES}
    found = []
    for entry in sorted(staging.iterdir()):
        owner = entry.name.split(".", 1)[0]
        whose = "a finished job's" if owner in ended else "an unknown"
        found.append(f".staging/{entry.name} ({whose} file) was left behind")
    return found


def check_no_refetch(evidence: Evidence) -> list[str]:
    """No request began after the ledger recorded its artifact stored; the final run sent none."""
    by_path = {item.path: item for item in evidence.items}
    found = []
    for request in evidence.requests:
        item = by_path.get(request.path)
        stored = None if item is None else evidence.stored_at.get(item.job_id)
        if request.user_agent == agent(FINAL):
            found.append(
                f"the final clean run sent {request.method} {request.path} (it had nothing to do)"
            )
        elif stored is not None and request.started_at > stored + CLOCK_TOLERANCE_S:
            found.append(
                f"{request.method} {request.path} by {request.user_agent} at "
                f"+{request.started_at - evidence.began:.2f} s, "
                f"{request.started_at - stored:.2f} s after the ledger recorded it stored"
            )
    return found


def check_bytes(evidence: Evidence) -> list[str]:
    """Per artifact, bytes sent <= size x (2 + faults that hit a download of it).

    One full copy is needed.  A fault can waste at most one copy of each
    download it hits (a SIGKILL past the last checkpoint, or a takeover that
    cannot resume, restarts it from zero); the second copy is slack for one
    refused resume (a checkpoint that no longer matches restarts from zero).
    More than that means something fetched a finished artifact again, or
    restarted a download for no reason.
    """
    found = []
    for item in evidence.items:
        sent = sum(r.bytes_sent for r in evidence.requests if r.path == item.path)
        hits = fault_hits(item, evidence)
        bound = len(item.body) * (2 + hits)
        if sent > bound:
            found.append(
                f"{item.path}: {sent:,} bytes sent for {len(item.body):,} needed, more than "
                f"(2 + {hits} faults that hit it) copies"
            )
    return found


def fault_hits(item: Item, evidence: Evidence) -> int:
    """Faults applied while an affected run had begun fetching ``item`` and it was not stored."""
    stored = evidence.stored_at.get(item.job_id, float("inf"))
    gets = [r for r in evidence.requests if r.path == item.path and r.method == "GET"]
    hits = 0
    for event in evidence.events:
        affected = None if event.run is None else agent(event.run)
        if event.at < stored and any(
            r.started_at <= event.at and affected in (None, r.user_agent) for r in gets
        ):
            hits += 1
    return hits


def read_ledger(url: str, items: Sequence[Item]) -> tuple[dict[str, JobRecord], dict[str, float]]:
    """The jobs of ``items``, and when each stored one's DEDUPE step was recorded (ledger time)."""
    with Ledger.connect(url) as ledger, ledger.unit_of_work(read_only=True) as uow:
        jobs = {job.job_id: job for job in uow.jobs.get_many([i.job_id for i in items])}
        stored_at = {}
        for job in jobs.values():
            if job.state.value not in STORED_STATES:
                continue
            finished = [
                op.finished_at
                for op in uow.ops.list_for_job(job.job_id)
                if op.op_type == "DEDUPE" and op.status == "SUCCEEDED" and op.finished_at
            ]
            stored_at[job.job_id] = min(finished, default=job.updated_at)
    return jobs, stored_at


# --- one round ------------------------------------------------------------------------------


@dataclass
class ChaosResult:
    """What a round did and found."""

    backend: str
    events: list[FaultEvent] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    bytes_needed: int = 0
    wall_s: float = 0.0
    runs_started: int = 0
    recovered: int = 0
    phases: dict[str, float] = field(default_factory=dict)

    def count(self, kind: str) -> int:
        return sum(1 for event in self.events if event.kind == kind)

    @property
    def resent_pct(self) -> float:
        if self.bytes_needed == 0:
            return 0.0
        return 100.0 * (self.bytes_sent - self.bytes_needed) / self.bytes_needed

    def report(self) -> str:
        lines = [
            f"{self.backend}: {self.count('kill')} kills, {self.count('stop')} stops past the "
            f"lease, {self.count('pg_restart')} PostgreSQL restarts, "
            f"{self.count('held_writer')} held SQLite writers; {self.runs_started} runs; "
            f"{len(self.violations)} violations; bytes sent {self.bytes_sent:,} for "
            f"{self.bytes_needed:,} needed (+{self.resent_pct:.1f} % re-sent); "
            f"{self.recovered} jobs left to a recovery run; {self.wall_s:.1f} s ("
            + ", ".join(f"{name} at {at:.1f} s" for name, at in self.phases.items())
            + ")",
        ]
        lines += [f"  {event.kind}: {event.note}" for event in self.events if event.note]
        lines += [f"  VIOLATION {text}" for text in self.violations]
        return "\n".join(lines)


class ChaosRound:
    """Runs, faults, settling, the final run and the check, for one manifest and one ``--out``."""

    def __init__(
        self, plan: ChaosPlan, *, work_dir: Path, server: ArtifactServer, database: Database
    ) -> None:
        self.plan = plan
        self.work_dir = work_dir
        self.server = server
        self.database = database
        self.out = work_dir / "out"
        self.rng = random.Random(plan.seed)
        self.items = serve_items(server, plan, prefix=f"c{plan.seed}")
        self.manifest = write_manifest(work_dir / "manifest.jsonl", self.items)
        self.runs: list[RunProcess] = []
        self.live: list[RunProcess] = []
        self.events: list[FaultEvent] = []
        self.result = ChaosResult(plan.backend)

    # -- the round --

    def run(self) -> ChaosResult:
        began = time.time()
        try:
            for _ in range(self.plan.runs):
                self._start_run()
            pending = self.plan.schedule()
            while pending and self._apply(pending[0]):
                pending.pop(0)
            # Every run exited (the work is done): the faults of the database
            # itself are still applied, and the final run meets the database after them.
            for kind in pending:
                if kind in ("pg_restart", "held_writer"):
                    self.events.append(self._database_fault(kind))
            self.result.phases["faults"] = time.time() - began
            self._settle()
            self.result.phases["settled"] = time.time() - began
            self._finish_work()
        finally:
            self._kill_all()
        self.result.wall_s = time.time() - began
        self._check(began)
        return self.result

    def _start_run(self, label: str | None = None) -> RunProcess:
        label = label or f"r{len(self.runs)}"
        argv = [
            "run", str(self.manifest), "--out", str(self.out), "--idempotency",
            "--workers", str(self.plan.workers), "--json", *self.database.run_args(),
        ]  # fmt: skip
        run = RunProcess(label, argv, cwd=self.work_dir, env=self.plan.run_env(label))
        self.runs.append(run)
        self.live.append(run)
        self.result.runs_started += 1
        return run

    def _reap(self) -> None:
        """Forget runs that exited; replace one that exited non-zero (a fault ended it)."""
        for run in list(self.live):
            if run.alive():
                continue
            self.live.remove(run)
            if run.process.returncode != 0:
                self._start_run()

    def _apply(self, kind: str) -> bool:
        """Wait for a random moment while a run works, then apply one fault; False: no run left."""
        self._reap()
        target = self._working_run()
        if target is None:
            return False
        time.sleep(self.rng.uniform(0.0, self.plan.max_delay_s))  # the random moment
        if not target.alive():
            return True
        appliers: dict[str, Callable[[RunProcess], FaultEvent]] = {
            "kill": self._kill,
            "stop": self._stop,
            "pg_restart": self._restart_postgres,
            "held_writer": self._hold_writer,
        }
        self.events.append(appliers[kind](target))
        self._reap()
        return True

    def _working_run(self, timeout_s: float = 10.0) -> RunProcess | None:
        """A live run that has sent a request, once at most one other is still starting.

        Faults should hit work, not start-up: killing every run while its
        replacements still import would leave no run working (a start costs
        seconds of CPU).  A run that sent nothing by the deadline may simply
        find every job held by others: then any live run will do.  None: no
        run lives (the work is done).
        """
        deadline = time.monotonic() + timeout_s
        first_deadline = time.monotonic() + self.plan.settle_timeout_s
        while True:
            alive = [run for run in self.live if run.alive()]
            if not alive:
                return None
            # A run that was stopped and woken lives on: what it does then is under test.
            live = [run for run in alive if not run.stopped] or alive
            agents = {r.user_agent for r in self.server.requests()}
            working = [run for run in live if agent(run.label) in agents]
            if (working and len(live) - len(working) <= 1) or (
                agents and time.monotonic() > deadline  # not before the round's first request
            ):
                return self.rng.choice(working or live)
            if time.monotonic() > first_deadline:
                raise RuntimeError(f"no run sent a request in {self.plan.settle_timeout_s} s")
            time.sleep(POLL_S)

    # -- the faults --

    def _kill(self, target: RunProcess) -> FaultEvent:
        at = time.time()
        target.kill()
        self.live.remove(target)
        self._start_run()
        return FaultEvent("kill", at, time.time(), target.label)

    def _stop(self, target: RunProcess) -> FaultEvent:
        """SIGSTOP until the leases the run held expired and were taken over (or ended)."""
        at = time.time()
        target.process.send_signal(signal.SIGSTOP)
        target.stopped = True
        try:
            note = self._await_takeover(target.process.pid)
        finally:
            target.process.send_signal(signal.SIGCONT)
        return FaultEvent("stop", at, time.time(), target.label, note=f"{target.label}: {note}")

    def _await_takeover(self, pid: int) -> str:
        url = self.database.ledger_url(self.out)
        job_ids = [item.job_id for item in self.items]
        deadline = time.monotonic() + 6 * self.plan.lease_ttl_s
        with Ledger.connect(url) as ledger:
            held = _held_by(ledger, job_ids, pid)
            if not held:
                time.sleep(self.plan.lease_ttl_s + 1.0)
                return "held no job when stopped; stopped past one lease"
            while time.monotonic() < deadline:
                if all(_moved_on(ledger, job_id, epoch) for job_id, epoch in held.items()):
                    return f"all {len(held)} jobs it held were taken over or ended"
                time.sleep(POLL_S * 4)
        return f"of {len(held)} jobs it held, some were not taken over within the deadline"

    def _database_fault(self, kind: str) -> FaultEvent:
        """A fault of the database itself, applied with no run to aim at."""
        if kind == "pg_restart":
            return self._restart_postgres(None)
        return self._hold_writer(None)

    def _restart_postgres(self, target: RunProcess | None) -> FaultEvent:
        if self.database.restart is None:
            raise ValueError(f"a PostgreSQL restart was planned on {self.plan.backend}")
        at = time.time()
        self.database.restart()
        return FaultEvent("pg_restart", at, time.time(), None)

    def _hold_writer(self, target: RunProcess | None) -> FaultEvent:
        path = self.database.sqlite_file(self.out)
        with subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(path), str(self.plan.hold_s)],
            stdout=subprocess.PIPE,
            text=True,
        ) as holder:
            assert holder.stdout is not None
            line = holder.stdout.readline().strip()  # "held" once the lock is taken
            at = time.time()
            holder.wait(timeout=self.plan.hold_s + 120)
        note = "" if line == "held" else f"the holder did not take the lock (said {line!r})"
        return FaultEvent("held_writer", at, time.time(), None, note=note)

    # -- after the faults --

    def _settle(self) -> None:
        deadline = time.monotonic() + self.plan.settle_timeout_s
        for run in list(self.live):
            try:
                run.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                run.kill()
                self.result.violations.append(
                    f"run {run.label} had not finished {self.plan.settle_timeout_s:.0f} s "
                    "after the last fault (killed)"
                )
        self.live.clear()

    def _finish_work(self) -> None:
        """A recovery run if faults left work, then the final clean run (which must do nothing)."""
        jobs, _ = read_ledger(self.database.ledger_url(self.out), self.items)
        unfinished = [
            i
            for i in self.items
            if i.job_id not in jobs or jobs[i.job_id].state.value not in STORED_STATES
        ]
        self.result.recovered = len(unfinished)
        for label in ([RECOVER] if unfinished else []) + [FINAL]:
            run = self._start_run(label)
            try:
                run.process.wait(timeout=self.plan.settle_timeout_s)
            except subprocess.TimeoutExpired:
                run.kill()
                self.result.violations.append(f"the {label} run did not finish (killed)")
            self.live.clear()

    def _kill_all(self) -> None:
        for run in self.runs:
            if run.alive():
                with contextlib.suppress(ProcessLookupError):
                    run.process.send_signal(signal.SIGCONT)
                run.kill()

    def _check(self, began: float) -> None:
        jobs, stored_at = read_ledger(self.database.ledger_url(self.out), self.items)
        paths = {item.path for item in self.items}
        requests = [r for r in self.server.requests() if r.path in paths]
        evidence = Evidence(
            items=self.items,
            out=self.out,
            jobs=jobs,
            stored_at=stored_at,
            requests=requests,
            events=self.events,
            runs=[run_outcome(run) for run in self.runs],
            began=began,
        )
        self.result.events = list(self.events)
        self.result.violations += check_invariants(evidence)
        self.result.bytes_sent = sum(r.bytes_sent for r in requests)
        self.result.bytes_needed = sum(len(item.body) for item in self.items)


def run_outcome(run: RunProcess) -> RunOutcome:
    """What ``run`` did, once it ended (waits for it)."""
    return RunOutcome(
        label=run.label,
        returncode=run.process.wait(),
        killed=run.killed,
        stopped=run.stopped,
        stderr=run.stderr(),
        stdout=run.stdout(),
        started_at=run.started_at,
    )


def _held_by(ledger: Ledger, job_ids: Sequence[str], pid: int) -> dict[str, int]:
    """job_id -> lease epoch of the jobs whose lease names process ``pid`` (host:pid:run:wN)."""
    with ledger.unit_of_work(read_only=True) as uow:
        return {
            job.job_id: job.lease_epoch
            for job in uow.jobs.get_many(job_ids)
            if job.lease_owner is not None and job.lease_owner.split(":")[1:2] == [str(pid)]
        }


def _moved_on(ledger: Ledger, job_id: str, epoch: int) -> bool:
    """The job was granted again (a takeover) or ended since it was held at ``epoch``."""
    with ledger.unit_of_work(read_only=True) as uow:
        job = uow.jobs.get(job_id)
    return job is None or job.lease_epoch > epoch or job.state.value in STORED_STATES
