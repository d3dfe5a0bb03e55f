"""``docstokg job verify`` and the store binding, as an operator meets them: real processes.

A run fills a store on the default SQLite ledger; the test damages the store
the way a disk, a script or a person would, and checks what the commands say,
their exit codes, and that ``--repair`` plus a run put the bytes back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from docstokg.testing.server import Artifact, ArtifactServer, generated_body
from tests.e2e.test_job_cli import docstokg

pytestmark = pytest.mark.slow


@pytest.fixture
def filled_store(server: ArtifactServer, tmp_path: Path) -> tuple[Path, Path, list[bytes]]:
    bodies = [generated_body(f"verify{n}", 20_000 + n) for n in range(3)]
    rows = [
        {"work_id": "W", "artifact_id": str(n), "url": server.add(f"/v{n}.bin", Artifact(body))}
        for n, body in enumerate(bodies)
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    out = tmp_path / "store"
    ran = docstokg("run", str(manifest), "--out", str(out), "--idempotency", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    return manifest, out, bodies


def test_verify_reports_damage_by_job_and_repair_lets_a_run_restore_it(
    filled_store: tuple[Path, Path, list[bytes]], tmp_path: Path
) -> None:
    manifest, out, bodies = filled_store
    stored = sorted((out / "artifacts").rglob("*"))
    files = [path for path in stored if path.is_file()]
    clean = docstokg("job", "verify", "--out", str(out), "--json", cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["checked"] == 3

    files[0].write_bytes(b"\0" * files[0].stat().st_size)  # corrupt, same size
    found = docstokg("job", "verify", "--out", str(out), "--json", cwd=tmp_path)
    assert found.returncode == 1
    report = json.loads(found.stdout)
    (bad,) = report["bad"]
    assert bad["final_path"] == f"artifacts/{files[0].parent.name}/{files[0].name}"
    assert "sha256" in bad["problem"]
    assert report["requeued"] == []

    repaired = docstokg("job", "verify", "--out", str(out), "--repair", cwd=tmp_path)
    assert repaired.returncode == 1  # the store was bad when looked at
    assert "1 of 3 stored files are missing or corrupt" in repaired.stdout
    assert "fetched again" in repaired.stdout
    requeued = docstokg("job", "show", bad["job_id"], "--out", str(out), "--json", cwd=tmp_path)
    assert json.loads(requeued.stdout)["job"]["state"] == "FAILED"

    rerun = docstokg("run", str(manifest), "--out", str(out), "--idempotency", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert docstokg("job", "verify", "--out", str(out), cwd=tmp_path).returncode == 0
    assert files[0].read_bytes() in bodies


def test_a_run_with_the_ledger_of_another_store_exits_2_naming_both(
    filled_store: tuple[Path, Path, list[bytes]], tmp_path: Path
) -> None:
    manifest, out, _ = filled_store
    ledger = out / "manifest.sqlite3"
    other = tmp_path / "other"

    refused = docstokg(
        "run", str(manifest), "--out", str(other), "--db", f"sqlite:///{ledger}",
        "--idempotency", cwd=tmp_path,
    )  # fmt: skip

    assert refused.returncode == 2
    assert str(out.resolve()) in refused.stderr
    assert str(other.resolve()) in refused.stderr
    assert not (other / "artifacts").exists() or not any((other / "artifacts").iterdir())
    assert "Traceback" not in refused.stderr
