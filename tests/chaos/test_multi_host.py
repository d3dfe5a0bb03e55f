"""A fleet of three simulated machines on one PostgreSQL ledger and one shared store.

Each machine is a process group of its own (``docstokg`` runs of two
workers, two runs on the machine that dies; see ``host_child.py``), with its
own lease owners, a wall clock injected 30 s behind, right, or 30 s ahead
(:class:`~docstokg.ledger.clock.HostClock`), and its own path to the shared
store: the folder itself, a symlink to it, and a bind mount of its parent in
a private mount namespace (where the system lets one be made, as root or in
a user namespace; otherwise a symlinked parent).  The ledger binds the store
by the id file in it, not by a path, so all three are the same store.

Every GET pauses halfway until the machines are all downloading; then one
is SIGKILLed whole and the GETs go on: the other two finish every job,
including those it held.  A clean ``docstokg run`` must then find nothing
to do, and every invariant of the chaos suite must hold
(``tests/chaos/harness.py``), as well as two of the fleet: the dead
machine's jobs were granted again and stored by the others, and every time
in the ledger is the database's, not a drifting machine's.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from docstokg import JobRecord, Ledger
from docstokg.ledger.clock import HostClock
from docstokg.testing.server import ArtifactServer, RequestRecord
from tests.chaos.harness import (
    CLOCK_TOLERANCE_S,
    FINAL,
    POLL_S,
    STORED_STATES,
    ChaosPlan,
    Evidence,
    FaultEvent,
    Item,
    KiB,
    RunProcess,
    agent,
    check_invariants,
    read_ledger,
    run_outcome,
    serve_items,
    write_manifest,
)
from tests.pgcluster import ThrowawayPostgres

HOST_CHILD: Final = Path(__file__).with_name("host_child.py")
OFFSETS_S: Final = {"host-a": -30.0, "host-b": 0.0, "host-c": 30.0}
VICTIM: Final = "host-b"
PROCESSES: Final = {"host-a": 1, "host-b": 2, "host-c": 1}
"""Runs per machine: the victim's two die together; one each elsewhere keeps the test short."""
DEADLINE_S: Final = 120.0
BIND_SCRIPT: Final = 'mount --bind "$0" "$1" && shift && exec "$@"'
"""sh -c script: bind-mount $0 on $1 (in this mount namespace only), then become the rest."""


@dataclass(frozen=True)
class Host:
    """One simulated machine: the leader of its process group, and its path to the store."""

    label: str
    out: Path
    run: RunProcess


def test_three_machines_one_killed_whole_the_others_finish_and_no_invariant_breaks(
    postgres: ThrowawayPostgres, server: ArtifactServer, tmp_path: Path
) -> None:
    plan = ChaosPlan(
        "postgresql",
        urls=16,
        min_bytes=96 * KiB,
        max_bytes=320 * KiB,
        bytes_per_s=512 * KiB,
        workers=2,
        lease_ttl_s=2.0,
        pause_mid_body=True,
    )
    items = serve_items(server, plan, prefix="fleet")
    manifest = write_manifest(tmp_path / "manifest.jsonl", items)
    store = tmp_path / "shared" / "store"
    store.mkdir(parents=True)
    db_url = postgres.create_database("multi_host")
    try:
        with Ledger.connect(db_url) as ledger:
            ledger.upgrade()  # `docstokg db upgrade` once, then the workers
        began = time.time()
        hosts = [
            _start_host(
                label, work_dir=tmp_path, store=store, manifest=manifest, db_url=db_url, plan=plan
            )
            for label in OFFSETS_S
        ]
        try:
            victim = next(host for host in hosts if host.label == VICTIM)
            stranded, kill = _kill_mid_download(victim, hosts, db_url, items, server)
            for host in hosts:
                host.run.process.wait(timeout=DEADLINE_S)
            settled = time.time()
            final = RunProcess(
                FINAL,
                ["run", str(manifest), "--out", str(store), "--idempotency", "--json",
                 "--db", db_url],
                cwd=tmp_path,
                env=plan.run_env(FINAL),
            )  # fmt: skip
            try:
                final.process.wait(timeout=DEADLINE_S)
            finally:
                final.kill()  # reaps it; kills it only if it overran
        finally:
            for host in hosts:
                host.run.kill_group()
        ended = time.time()
        jobs, stored_at = read_ledger(db_url, items)
    finally:
        postgres.drop_database("multi_host")

    paths = {item.path for item in items}
    requests = [r for r in server.requests() if r.path in paths]
    evidence = Evidence(
        items=items,
        out=store,
        jobs=jobs,
        stored_at=stored_at,
        requests=requests,
        events=[kill],
        runs=[run_outcome(host.run) for host in hosts] + [run_outcome(final)],
        began=began,
    )
    violations = check_invariants(evidence)
    violations += check_taken_over(stranded, jobs, kill, requests, items)
    violations += check_ledger_times(jobs, began, ended)
    report = "\n".join(
        [f"{host.label} (clock {OFFSETS_S[host.label]:+.0f} s) reached the store at {host.out}"
         for host in hosts]
        + [f"{len(stranded)} jobs stranded by the kill of {VICTIM} at +{kill.at - began:.1f} s; "
           f"the others done at +{settled - began:.1f} s, the final run at +{ended - began:.1f} s"]
        + [f"VIOLATION {text}" for text in violations]
    )  # fmt: skip
    print(report)
    assert violations == [], report
    # The fleet really was one: every machine fetched, and the kill hit work in flight.
    assert {r.user_agent for r in requests} >= {agent(label) for label in OFFSETS_S}, report
    assert stranded, report


def test_a_host_clock_times_leases_only_where_the_host_is_the_ledger(db_url: str) -> None:
    """On PostgreSQL a machine's clock, however far off, never becomes the ledger's time.

    On SQLite (one machine) the host's clock is the ledger's; any other
    injected clock is the ledger's time on both (tests move time with one).
    """
    ahead = HostClock(3600.0)
    with Ledger.connect(db_url, clock=ahead) as ledger:
        drift = ledger.now() - time.time()
        dialect = ledger.dialect
    expected = 0.0 if dialect == "postgresql" else 3600.0
    assert abs(drift - expected) < CLOCK_TOLERANCE_S, (dialect, drift)
    with Ledger.connect(db_url, clock=lambda: 42.0) as moved:
        assert moved.now() == 42.0


# --- the machines ---------------------------------------------------------------------------


def _start_host(
    label: str, *, work_dir: Path, store: Path, manifest: Path, db_url: str, plan: ChaosPlan
) -> Host:
    """Start machine ``label``: its own process group, clock offset and path to ``store``."""
    command, out = _store_path(label, work_dir, store)
    argv = [
        str(manifest), "--out", str(out), "--db", db_url,
        "--offset-s", str(OFFSETS_S[label]), "--workers", str(plan.workers),
        "--processes", str(PROCESSES[label]),
    ]  # fmt: skip
    run = RunProcess(
        label,
        argv,
        cwd=work_dir,
        env=plan.run_env(label),
        command=[*command, sys.executable, str(HOST_CHILD)],
        own_group=True,
    )
    return Host(label, out, run)


def _store_path(label: str, work_dir: Path, store: Path) -> tuple[list[str], Path]:
    """How machine ``label`` reaches ``store``: (command prefix, its --out).

    host-a uses the folder itself, host-b a symlink to it, host-c a bind
    mount of its parent (its own mount namespace, so nothing outlives it),
    or a symlinked parent where no mount namespace can be made.
    """
    home = work_dir / "hosts" / label
    home.mkdir(parents=True)
    if label == "host-a":
        return [], store
    if label == "host-b":
        (home / "store").symlink_to(store, target_is_directory=True)
        return [], home / "store"
    mount_point = home / "mnt"
    prefix = _bind_mount_prefix()
    if prefix is None:
        mount_point.symlink_to(store.parent, target_is_directory=True)
        return [], mount_point / store.name
    mount_point.mkdir()
    return [*prefix, str(store.parent), str(mount_point)], mount_point / store.name


@functools.cache
def _bind_mount_prefix() -> tuple[str, ...] | None:
    """``unshare`` + sh that bind-mounts $0 on $1 then runs the rest; None if not allowed.

    Root with CAP_SYS_ADMIN makes a private mount namespace; anyone else
    needs a user namespace mapping them to root in it.  Docker's default
    profile allows neither: then host-c reaches the store through a symlink.
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    as_root = os.geteuid() == 0
    namespace = ["--mount", "--propagation", "private"]
    user = [] if as_root else ["--user", "--map-root-user"]
    prefix = (unshare, *user, *namespace, "sh", "-c", BIND_SCRIPT)
    probe = Path(os.environ.get("TMPDIR", "/tmp"))
    tried = subprocess.run(
        [*prefix, str(probe), str(probe), "true"], capture_output=True, check=False
    )
    return prefix if tried.returncode == 0 else None


def _group_pids(leader: int) -> set[int]:
    """The processes of the process group ``leader`` leads (Linux: read from /proc)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == leader:
                    pids.add(int(entry.name))
            except ProcessLookupError:
                continue
    return pids


def _leased_by(ledger: Ledger, items: Sequence[Item], pids: set[int]) -> dict[str, int]:
    """job_id -> lease epoch of the unfinished jobs leased by a process of ``pids``.

    An owner is host:pid:token (and a worker number): the pid says whose it is.
    """
    with ledger.unit_of_work(read_only=True) as uow:
        return {
            job.job_id: job.lease_epoch
            for job in uow.jobs.get_many([item.job_id for item in items])
            if job.lease_owner is not None
            and job.state.value not in STORED_STATES
            and _owner_pid(job.lease_owner) in pids
        }


def _owner_pid(owner: str) -> int | None:
    field = owner.split(":")[1:2]
    return int(field[0]) if field and field[0].isdigit() else None


def _kill_mid_download(
    victim: Host, hosts: Sequence[Host], db_url: str, items: Sequence[Item], server: ArtifactServer
) -> tuple[dict[str, int], FaultEvent]:
    """SIGKILL the victim's process group while every machine is halfway through a GET.

    Every GET pauses halfway through its body, so no machine can finish
    anything before the others started, however slowly each starts: the
    kill hits the victim's downloads in flight while the others work.  Then
    the GETs go on.  Returns the jobs the dead processes still hold (job_id
    -> lease epoch), and the kill.  Every process of the group exists before
    any sends a request (the leader starts its copies first), so the group
    is listed whole once one has.
    """
    deadline = time.monotonic() + DEADLINE_S
    with Ledger.connect(db_url) as ledger:
        while True:
            fetching = {
                r.user_agent for r in server.requests() if r.method == "GET" and r.ended_at is None
            }
            pids = _group_pids(victim.run.process.pid)
            if fetching >= {agent(host.label) for host in hosts} and _leased_by(
                ledger, items, pids
            ):
                break
            if time.monotonic() > deadline or not all(host.run.alive() for host in hosts):
                raise AssertionError(
                    "not every machine was downloading within the deadline: "
                    + "; ".join(f"{h.label} stderr:\n{h.run.stderr()}" for h in hosts)
                )
            time.sleep(POLL_S)
        at = time.time()
        victim.run.kill_group()
        event = FaultEvent("kill", at, time.time(), victim.label)
        for item in items:
            server.release(item.path)
        return _leased_by(ledger, items, pids), event


# --- the fleet's own invariants ----------------------------------------------------------


def check_taken_over(
    stranded: dict[str, int],
    jobs: dict[str, JobRecord],
    kill: FaultEvent,
    requests: Sequence[RequestRecord],
    items: Sequence[Item],
) -> list[str]:
    """Every job the dead machine held was granted again, by another machine, and stored."""
    paths = {item.job_id: item.path for item in items}
    found = []
    for job_id, epoch in stranded.items():
        job = jobs.get(job_id)
        if job is None or job.state.value not in STORED_STATES or job.lease_epoch <= epoch:
            state = "missing" if job is None else f"{job.state.value} at epoch {job.lease_epoch}"
            found.append(f"job {job_id} held by {kill.run} at epoch {epoch} ended {state}")
        elif not any(
            r.path == paths[job_id] and r.started_at > kill.until and r.user_agent != agent(FINAL)
            for r in requests
        ):
            found.append(f"no other machine sent a request for {paths[job_id]} after the kill")
    return found


def check_ledger_times(jobs: dict[str, JobRecord], began: float, ended: float) -> list[str]:
    """Every time the ledger recorded is the database's (this host's, here), not a machine's.

    The machines' clocks are 30 s off; had one of them timed a lease or a
    step, its times would lie 30 s outside the round.
    """
    low, high = began - CLOCK_TOLERANCE_S, ended + CLOCK_TOLERANCE_S
    found = []
    for job in jobs.values():
        for name, value in (("created_at", job.created_at), ("updated_at", job.updated_at)):
            if not low <= value <= high:
                found.append(
                    f"job {job.job_id} {name} is {value - began:+.1f} s from the round's start, "
                    f"outside the round ({ended - began:.1f} s long): a machine's clock, not "
                    "the database's"
                )
    return found
