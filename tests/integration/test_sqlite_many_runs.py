"""Many runs, many threads, one SQLite ledger.

Three ``docstokg run`` processes of 24 download threads each share one
manifest, one ``--out`` and its SQLite ledger.  SQLite has one writer: every
process queues for it, through the group commit inside a process and the
busy handler between processes.  None of that may surface: no "database is
locked", no traceback, every run exits 0, every artifact is stored once and
fetched once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from docstokg.testing.server import ArtifactServer
from tests.e2e.test_run_cli import Finished, Running, run_env, serve
from tests.manifests import write_jsonl

RUNS = 3
WORKERS = 24
ARTIFACTS = 150
SIZE = 4 * 1024
RUN_TIMEOUT_S = 180.0
FORBIDDEN = ("locked", "traceback")  # compared with the lowered output


def start_runs(args: list[str], cwd: Path) -> list[Finished]:
    """Start every run at once, then wait for each; none is left running if one fails."""
    running = [Running(args, cwd=cwd, env=run_env()) for _ in range(RUNS)]
    try:
        return [process.finish(RUN_TIMEOUT_S) for process in running]
    finally:
        for process in running:
            if process.process.poll() is None:
                process.process.kill()
                process.process.wait()


def stored_files(out: Path) -> dict[str, bytes]:
    """Every file under artifacts/, by name."""
    files = [path for path in (out / "artifacts").rglob("*") if path.is_file()]
    names = [path.name for path in files]
    assert len(names) == len(set(names)), f"one name stored twice: {sorted(names)}"
    return {path.name: path.read_bytes() for path in files}


def test_three_runs_of_24_workers_share_one_sqlite_ledger_without_a_lock_error(
    server: ArtifactServer, tmp_path: Path
) -> None:
    served = serve(server, "many", ARTIFACTS, SIZE)
    manifest = write_jsonl(tmp_path / "manifest.jsonl", [item.row() for item in served])
    out = tmp_path / "out"
    args = ["run", str(manifest), "--out", str(out), "--idempotency",
            "--workers", str(WORKERS), "--json"]  # fmt: skip

    results = start_runs(args, tmp_path)

    for result in results:
        assert result.returncode == 0, result.explain()
        said = (result.stdout + result.stderr).lower()
        for word in FORBIDDEN:
            assert word not in said, f"{word!r} in a run's output\n{result.explain()}"
        summary = result.summary()
        assert summary["counts"]["jobs"] == ARTIFACTS, summary["counts"]
        assert {job["state"] for job in summary["jobs"]} == {"DEDUPED"}, summary["counts"]

    stored = stored_files(out)
    for name, body in stored.items():
        assert hashlib.sha256(body).hexdigest() == name, f"artifacts/{name[:2]}/{name} is wrong"
    assert set(stored) == {item.sha256 for item in served}

    for item in served:
        stats = server.stats(item.path)
        assert (stats.full_gets, stats.range_gets) == (1, 0), (item.path, stats)
    assert server.total().body_bytes_sent == ARTIFACTS * SIZE
