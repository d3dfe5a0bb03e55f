"""A job that kills its worker every time ends FAILED after max_attempts; the run never hangs.

The "poison" is an artifact whose download the test answers by SIGKILLing the
run (as an OOM kill on one artifact would): the server pauses its body, the
test kills the process that is fetching it.  Each takeover of the dead run's
expired lease costs the job an attempt.
"""

from __future__ import annotations

import signal
from pathlib import Path

from docstokg import JobState, Ledger
from docstokg.testing.server import Artifact, ArtifactServer, generated_body
from tests.e2e.test_run_cli import (
    LEASE_TTL_ENV,
    Served,
    db_args,
    ledger_url,
    run_env,
    start,
)
from tests.manifests import write_jsonl

POISON = "/poison/kills-its-worker.bin"
MAX_ATTEMPTS = 2


def test_a_job_that_kills_every_worker_ends_failed_and_the_run_ends(
    backend: str, empty_db_url: str, server: ArtifactServer, tmp_path: Path
) -> None:
    body = generated_body(POISON, 256 * 1024)
    poison = Served(POISON, server.add(POISON, Artifact(body, pause_after=64 * 1024)), body, "W-p")
    manifest = write_jsonl(tmp_path / "manifest.jsonl", [poison.row()])
    out = tmp_path / "out"
    args = [
        "run", str(manifest), "--out", str(out), "--idempotency", "--workers", "1", "--json",
        *db_args(backend, empty_db_url),
    ]  # fmt: skip
    env = run_env(**{LEASE_TTL_ENV: "1", "DOCSTOKG_IDEMPOTENCY_MAX_ATTEMPTS": str(MAX_ATTEMPTS)})

    # Every run that reaches the poison's body dies there; each next run takes
    # the dead one's expired lease over, which costs an attempt.
    for killed in range(MAX_ATTEMPTS):
        dying = start(*args, cwd=tmp_path, env=env)
        reached = server.wait_paused(POISON, timeout=60, count=killed + 1)
        assert reached, dying.finish(timeout=5).explain()
        dying.process.kill()
        assert dying.process.wait(timeout=10) == -signal.SIGKILL
    server.release(POISON)  # the dead runs' senders end
    server.reset_stats()

    last = start(*args, cwd=tmp_path, env=env).finish(timeout=60)  # must not hang

    assert last.returncode == 1, last.explain()
    [job] = last.summary()["jobs"]
    assert job["state"] == JobState.FAILED.value
    assert job["ended"] is True
    assert job["attempts"] == MAX_ATTEMPTS
    assert job["error"] == "worker lost during STREAM (lease expired)"
    assert server.stats(POISON).full_gets == 0  # the last run gave the job up without a GET
    with Ledger.connect(ledger_url(backend, empty_db_url, out)) as ledger:
        with ledger.unit_of_work(read_only=True) as uow:
            record = uow.jobs.get(poison.job_id)
    assert record is not None
    assert record.lease_owner is None
