"""The runner works with what it is handed: a store, a fetcher, a step table of the caller's own.

:func:`docstokg.run.bootstrap.collaborators` wires production's; a test (or
a library user) replaces any of them.  Each test here would fail if the
runner built its own instead of using the one it was given.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from docstokg.download import ArtifactStore, Fetcher, Probe, StopCheck, Streamed
from docstokg.manifest import read_manifest
from docstokg.run.bootstrap import collaborators, http_fetcher
from docstokg.run.runner import DownloadRun, RunSettings
from docstokg.run.steps import FINALIZE, PIPELINE, STREAM, JobContext, StepResult
from docstokg.testing.server import Artifact, ArtifactServer, generated_body
from tests.runner_kit import make_config, write_manifest


class CountingFetcher(Fetcher):
    """The production fetcher, counting the probes it makes."""

    probes: list[str]

    def probe(self, url: str, *, should_stop: StopCheck | None = None) -> Probe:
        self.probes.append(url)
        return super().probe(url, should_stop=should_stop)


def _manifest(server: ArtifactServer, tmp_path: Path, count: int = 3) -> tuple[Path, list[bytes]]:
    bodies = [generated_body(f"inject-{n}", 5_000 + n) for n in range(count)]
    rows = [(f"W{n}", "pdf", server.add(f"/i/{n}", Artifact(body=b))) for n, b in enumerate(bodies)]
    path = tmp_path / "m.jsonl"
    write_manifest(path, rows)
    return path, bodies


@pytest.mark.parametrize("ledger_on", [True, False], ids=["ledger", "plain"])
def test_the_run_fetches_through_the_fetcher_it_is_handed(
    server: ArtifactServer, tmp_path: Path, ledger_on: bool
) -> None:
    path, _ = _manifest(server, tmp_path)
    out = tmp_path / "out"
    db_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}" if ledger_on else None
    settings = RunSettings(out, make_config(enabled=ledger_on), workers=2, db_url=db_url)
    wired = collaborators(settings)
    made: list[CountingFetcher] = []

    @contextmanager
    def counting() -> Iterator[Fetcher]:
        with http_fetcher(wired.store, settings.limits, connections=2) as real:
            fetcher = CountingFetcher(real.client, real.store, real.limits)
            fetcher.probes = []
            made.append(fetcher)
            yield fetcher

    summary = DownloadRun(
        read_manifest(path), settings, replace(wired, open_fetcher=counting)
    ).run()

    assert summary.exit_code == 0, summary.jobs
    [fetcher] = made
    assert sorted(fetcher.probes) == sorted(job.url for job in summary.jobs)


def test_the_run_stores_into_the_store_it_is_handed(server: ArtifactServer, tmp_path: Path) -> None:
    path, bodies = _manifest(server, tmp_path)
    elsewhere = ArtifactStore(tmp_path / "elsewhere")
    settings = RunSettings(tmp_path / "out", make_config(enabled=False), workers=2)
    wired = collaborators(settings)
    wired = replace(
        wired,
        store=elsewhere,
        open_fetcher=lambda: http_fetcher(elsewhere, settings.limits, connections=2),
    )
    summary = DownloadRun(read_manifest(path), settings, wired).run()

    assert summary.exit_code == 0, summary.jobs
    for body in bodies:
        sha = hashlib.sha256(body).hexdigest()
        assert (elsewhere.artifacts_dir / sha[:2] / sha).read_bytes() == body
    assert not (tmp_path / "out" / "artifacts").exists()


@pytest.mark.parametrize("ledger_on", [True, False], ids=["ledger", "plain"])
def test_both_pipelines_walk_the_table_they_are_handed(
    server: ArtifactServer, tmp_path: Path, ledger_on: bool
) -> None:
    """A check after FINALIZE (a VERIFY of sorts) is one row's body; both pipelines run it."""
    path, _ = _manifest(server, tmp_path)
    out = tmp_path / "out"
    verified: list[str] = []
    finalize = next(step for step in PIPELINE if step.kind == FINALIZE)
    assert finalize.effect is not None
    stores = finalize.effect

    def finalize_and_verify(job: JobContext) -> StepResult:
        result = stores(job)
        stored = (out / str(result["final_path"])).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == Streamed.from_json(job.results[STREAM]).sha256
        verified.append(job.job_id)
        return result

    table = tuple(replace(s, effect=finalize_and_verify) if s is finalize else s for s in PIPELINE)
    db_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}" if ledger_on else None
    settings = RunSettings(out, make_config(enabled=ledger_on), workers=2, db_url=db_url)
    summary = DownloadRun(
        read_manifest(path), settings, replace(collaborators(settings), steps=table)
    ).run()

    assert summary.exit_code == 0, summary.jobs
    assert sorted(verified) == sorted(job.job_id for job in summary.jobs)
