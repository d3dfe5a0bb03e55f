"""A worker killed with SIGKILL in the middle of an effect.

A spawned child leases a job, runs its HEAD effect and moves it to HEAD_DONE,
then starts the STREAM effect, whose body writes a marker line and then blocks
forever.  The parent kills the child with SIGKILL while the body is blocked:
the STREAM op is left IN_PROGRESS under the child's lease.  Once that lease
expires (real time, no injected clock) a rescuer is granted the job where the
child stopped, runs STREAM once more (attempt 2) and finishes the job.  The
marker file, written outside the database, proves the body ran exactly twice,
never a third time, and that HEAD was not run again.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from docstokg import (
    JobState,
    Lease,
    LeaseLost,
    Ledger,
    advance_state,
    get_effect_result,
    lease_next_job,
    op_key,
    plan_job_if_absent,
    renew_lease,
    run_effect,
)

CHILD_TTL_S = 2.0
RESCUER_TTL_S = 60.0
DEADLINE_S = 60.0
Effect = Callable[[], dict[str, Any]]

# The rest of the path after STREAM: (kind, from, to).
REMAINING_STEPS = (
    ("FINALIZE", JobState.STREAMING, JobState.FINALIZED),
    ("INDEX", JobState.FINALIZED, JobState.INDEXED),
    ("DEDUPE", JobState.INDEXED, JobState.DEDUPED),
)


def _mark(markers: Path, kind: str, who: str) -> None:
    """Count one start of an effect body, outside the database (one line per start)."""
    descriptor = os.open(markers / kind, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(descriptor, f"{who}\n".encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _marking(markers: Path, kind: str, who: str, result: dict[str, Any]) -> Effect:
    """An effect body that counts its start in the marker file, then returns ``result``."""

    def effect() -> dict[str, Any]:
        _mark(markers, kind, who)
        return result

    return effect


def _starts(markers: Path, kind: str) -> list[str]:
    path = markers / kind
    return path.read_text().splitlines() if path.exists() else []


def _child(url: str, markers: str, report: Connection, never: Event) -> None:
    """Lease the job, do HEAD, then block forever inside the STREAM effect body.

    Whatever goes wrong before the body blocks is sent to the parent, which fails at once.
    """
    try:
        _doomed_worker(url, Path(markers), report, never)
    except BaseException:  # noqa: BLE001  reported to the parent, which fails the test
        report.send(traceback.format_exc())


def _doomed_worker(url: str, folder: Path, report: Connection, never: Event) -> None:
    with Ledger.connect(url) as ledger:
        lease = lease_next_job(ledger, owner="doomed", ttl_s=CHILD_TTL_S)
        assert lease is not None
        run_effect(
            ledger,
            lease,
            kind="HEAD",
            opkey=op_key("HEAD", lease.job_id),
            effect_fn=_marking(folder, "HEAD", "doomed", {"status": 200}),
        )
        assert advance_state(
            ledger, lease, to_state=JobState.HEAD_DONE, allowed_from={JobState.LEASED}
        )
        # Renewing works past LEASED; the STREAM effect then starts with a full TTL.
        lease = renew_lease(ledger, lease, ttl_s=CHILD_TTL_S)

        def stream_forever() -> dict[str, Any]:
            _mark(folder, "STREAM", "doomed")
            report.send(lease)  # the body has started and its start is on disk
            never.wait()  # never set: only SIGKILL ends this
            raise AssertionError("the never-set event was set")

        run_effect(
            ledger,
            lease,
            kind="STREAM",
            opkey=op_key("STREAM", lease.job_id),
            effect_fn=stream_forever,
        )


def test_sigkilled_worker_effect_runs_once_more_after_its_lease_expires(
    db_url: str, tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    with Ledger.connect(db_url) as ledger:
        job_id = plan_job_if_absent(
            ledger, work_id="W1", artifact_id="pdf", canonical_url="https://example.org/1.pdf"
        )
        stream_key = op_key("STREAM", job_id)

        context = multiprocessing.get_context("spawn")
        receiver, sender = context.Pipe(duplex=False)
        never = context.Event()
        child = context.Process(target=_child, args=(db_url, str(markers), sender, never))
        child.start()
        try:
            assert receiver.poll(DEADLINE_S), "the child never started its STREAM effect"
            doomed = receiver.recv()
            assert isinstance(doomed, Lease), f"the child failed:\n{doomed}"
            assert child.is_alive()
            assert _starts(markers, "STREAM") == ["doomed"]

            # The effect is running: its op is recorded IN_PROGRESS, committed.
            with ledger.unit_of_work(read_only=True) as uow:
                op = uow.ops.get(stream_key)
                job = uow.jobs.get(job_id)
            assert op is not None
            assert (op.status, op.attempt, op.lease_epoch) == ("IN_PROGRESS", 1, doomed.epoch)
            assert job is not None
            assert (job.state, job.lease_owner, job.lease_epoch) == (
                JobState.HEAD_DONE,
                "doomed",
                doomed.epoch,
            )

            assert child.pid is not None
            os.kill(child.pid, signal.SIGKILL)
            child.join(timeout=DEADLINE_S)
            assert child.exitcode == -signal.SIGKILL
        finally:
            if child.is_alive():
                child.kill()
                child.join()
            receiver.close()
            sender.close()

        # Time is moved, not waited for: ledgers whose clock stands just before
        # and just after the dead worker's lease runs out (the same clock that
        # wrote lease_until: this host's for SQLite, the database's for PostgreSQL).
        with Ledger.connect(db_url, clock=lambda: doomed.lease_until - 0.5) as before:
            assert lease_next_job(before, owner="too-early", ttl_s=RESCUER_TTL_S) is None
        with Ledger.connect(db_url, clock=lambda: doomed.lease_until + 0.5) as after:
            rescue = lease_next_job(after, owner="rescuer", ttl_s=RESCUER_TTL_S)
        assert rescue is not None
        assert rescue.job_id == job_id
        assert rescue.epoch == doomed.epoch + 1
        assert rescue.state is JobState.HEAD_DONE  # resumes where the dead worker stopped
        assert rescue.lease_until > doomed.lease_until

        stream_again = _marking(markers, "STREAM", "rescuer", {"bytes": 1234})
        must_not_run = _marking(markers, "STREAM", "replay", {"bytes": -1})

        # HEAD succeeded before the crash: replayed, its body does not run again.
        head = run_effect(
            ledger,
            rescue,
            kind="HEAD",
            opkey=op_key("HEAD", job_id),
            effect_fn=_marking(markers, "HEAD", "rescuer", {"status": -1}),
        )
        assert head == {"status": 200}
        assert _starts(markers, "HEAD") == ["doomed"]

        result = run_effect(ledger, rescue, kind="STREAM", opkey=stream_key, effect_fn=stream_again)
        assert result == {"bytes": 1234}
        assert _starts(markers, "STREAM") == ["doomed", "rescuer"]
        with ledger.unit_of_work(read_only=True) as uow:
            op = uow.ops.get(stream_key)
        assert op is not None
        assert (op.status, op.attempt, op.lease_epoch) == ("SUCCEEDED", 2, rescue.epoch)

        # Replays return the recorded result and never start the body a third time.
        again = run_effect(ledger, rescue, kind="STREAM", opkey=stream_key, effect_fn=must_not_run)
        assert again == {"bytes": 1234}
        assert get_effect_result(ledger, stream_key) == {"bytes": 1234}
        assert _starts(markers, "STREAM") == ["doomed", "rescuer"]

        # The dead worker's lease is fenced out for good.
        try:
            advance_state(
                ledger, doomed, to_state=JobState.STREAMING, allowed_from={JobState.HEAD_DONE}
            )
        except LeaseLost:
            pass
        else:
            raise AssertionError("a write with the killed worker's stale lease was accepted")

        assert advance_state(
            ledger, rescue, to_state=JobState.STREAMING, allowed_from={JobState.HEAD_DONE}
        )
        for kind, origin, target in REMAINING_STEPS:
            run_effect(
                ledger,
                rescue,
                kind=kind,
                opkey=op_key(kind, job_id),
                effect_fn=_marking(markers, kind, "rescuer", {"kind": kind}),
            )
            assert advance_state(ledger, rescue, to_state=target, allowed_from={origin})

        with ledger.unit_of_work(read_only=True) as uow:
            job = uow.jobs.get(job_id)
            ops = {op.op_type: op for op in uow.ops.list_for_job(job_id)}
        assert job is not None
        assert job.state is JobState.DEDUPED
        assert {kind: (op.status, op.attempt) for kind, op in ops.items()} == {
            "HEAD": ("SUCCEEDED", 1),
            "STREAM": ("SUCCEEDED", 2),
            "FINALIZE": ("SUCCEEDED", 1),
            "INDEX": ("SUCCEEDED", 1),
            "DEDUPE": ("SUCCEEDED", 1),
        }
        assert {kind: len(_starts(markers, kind)) for kind in ops} == {
            "HEAD": 1,
            "STREAM": 2,
            "FINALIZE": 1,
            "INDEX": 1,
            "DEDUPE": 1,
        }
