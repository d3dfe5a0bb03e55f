"""Helpers for the DownloadRun tests: manifests, settings, runs, and looking at the results."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from docstokg import JobRecord, Ledger, OpRecord
from docstokg.config import IdempotencyConfig
from docstokg.manifest import Manifest, read_manifest
from docstokg.run.bootstrap import collaborators
from docstokg.run.pipeline import JobOutcome, Outcome
from docstokg.run.reporting import NullReporter, RunReporter
from docstokg.run.runner import DownloadRun, JobReport, RunSettings, RunSummary
from docstokg.run.steps import Step
from docstokg.testing.server import ArtifactServer
from tests.lifecycle import job_of
from tests.manifests import Row, write_jsonl


def write_manifest(path: Path, rows: Sequence[Row] | None) -> Manifest:
    """Write ``rows`` as JSON Lines at ``path`` (None: the file is already there) and read it."""
    if rows is not None:
        write_jsonl(path, rows)
    return read_manifest(path)


def make_config(
    *,
    enabled: bool = True,
    lease_ttl_s: float = 1.2,  # idle workers poll every ttl/4: short runs end quickly
    max_attempts: int = 5,
    max_bytes: int = 2 * 1024**3,
    backoff_base_s: float = 0.01,
    backoff_max_s: float = 0.05,
    max_redirects: int = 5,
) -> IdempotencyConfig:
    """A configuration with backoffs short enough that retries cost milliseconds."""
    return IdempotencyConfig(
        enabled=enabled,
        lease_ttl_s=lease_ttl_s,
        stale_file_age_s=3600.0,
        max_attempts=max_attempts,
        max_bytes=max_bytes,
        backoff_base_s=backoff_base_s,
        backoff_max_s=backoff_max_s,
        max_redirects=max_redirects,
        connect_timeout_s=5.0,
        read_timeout_s=20.0,
    )


def make_run(
    manifest: Manifest,
    out: Path,
    config: IdempotencyConfig,
    *,
    db_url: str | None,
    workers: int = 2,
    reporter: RunReporter | None = None,
    steps: Sequence[Step] | None = None,
) -> DownloadRun:
    """A run wired as production wires it; ``steps`` replaces the pipeline's table."""
    settings = RunSettings(out_dir=out, config=config, workers=workers, db_url=db_url)
    wired = collaborators(settings, reporter=reporter)
    if steps is not None:
        wired = replace(wired, steps=tuple(steps))
    return DownloadRun(manifest, settings, wired)


def run_download(
    manifest: Manifest,
    out: Path,
    config: IdempotencyConfig,
    *,
    db_url: str | None,
    workers: int = 2,
    reporter: RunReporter | None = None,
    steps: Sequence[Step] | None = None,
) -> RunSummary:
    run = make_run(
        manifest, out, config, db_url=db_url, workers=workers, reporter=reporter, steps=steps
    )
    return run.run()


def run_interrupted(
    run: DownloadRun, server: ArtifactServer, path: str, *, written: BytesReached
) -> RunSummary:
    """Run until a GET of ``path`` pauses at its ``pause_after``, then stop the run there.

    ``written`` is ``run``'s reporter, its threshold the ``pause_after``: the
    stop is requested once every byte sent before the pause is in the part, so
    the worker waits for the held-back body when it is asked to stop.  The
    chunk that then arrives is not written (the stop is checked before each
    write): the part keeps exactly the bytes before the pause.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(run.run)
        try:
            assert server.wait_paused(path, timeout=30), f"no GET of {path} reached its pause"
            assert written.reached.wait(timeout=30), (
                f"only {written.written:,} of the {written.threshold:,} bytes before the pause "
                f"of {path} reached the part"
            )
        finally:
            run.request_stop()
            server.release(path)
        return future.result(timeout=60)


class StopOnOutcome(NullReporter):
    """Stops the run as soon as a job comes back with ``outcome``; remembers every outcome.

    ``job_ended`` runs on the worker's thread right after the job was handed
    back, before that worker claims anything else: with one worker the run
    stops after exactly that pass over the job.
    """

    def __init__(self, outcome: Outcome, *, on_match: Callable[[JobOutcome], None] | None = None):
        self.outcome = outcome
        self.outcomes: list[JobOutcome] = []
        self.stop: Callable[[], None] | None = None
        self._on_match = on_match

    def job_ended(self, outcome: JobOutcome) -> None:
        self.outcomes.append(outcome)
        if outcome.outcome is self.outcome:
            if self._on_match is not None:
                self._on_match(outcome)
            if self.stop is not None:
                self.stop()


class StopAfterBytes(NullReporter):
    """Stops the run once ``threshold`` bytes were written to parts (checked after each chunk).

    The runner reports a chunk's bytes after writing it and before asking
    whether to stop, so the worker stops right after the chunk that crossed
    ``threshold``: deterministically, and without pausing the server.
    """

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.written = 0
        self.stop: Callable[[], None] | None = None

    def advance_bytes(self, count: int) -> None:
        self.written += count
        if self.written >= self.threshold and self.stop is not None:
            self.stop()


class BytesReached(NullReporter):
    """Sets ``reached`` once ``threshold`` bytes were written to parts.

    With the server paused right after those bytes, the worker then goes
    straight on to read the next chunk, which does not come: a stop requested
    after ``reached`` finds it waiting in that read, not between chunks.
    """

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.written = 0
        self.reached = threading.Event()

    def advance_bytes(self, count: int) -> None:
        self.written += count
        if self.written >= self.threshold:
            self.reached.set()


class SignalBegin(NullReporter):
    """Sets ``begun`` once the run has planned its jobs; remembers how many had ended then."""

    def __init__(self) -> None:
        self.begun = threading.Event()
        self.done_at_begin: int | None = None

    def begin(self, total: int, *, done: int) -> None:
        self.done_at_begin = done
        self.begun.set()


class WatchOutcomes(NullReporter):
    """Calls ``on_outcome`` for every job a worker hands back (on the worker's thread)."""

    def __init__(self, on_outcome: Callable[[JobOutcome], None]) -> None:
        self._on_outcome = on_outcome

    def job_ended(self, outcome: JobOutcome) -> None:
        self._on_outcome(outcome)


# -- looking at the results -------------------------------------------------------------


def job_record(db_url: str, job_id: str) -> JobRecord:
    """The job as the ledger at ``db_url`` holds it (see :func:`tests.lifecycle.job_of`)."""
    with Ledger.connect(db_url) as ledger:
        return job_of(ledger, job_id)


def ops_by_type(db_url: str, job_id: str) -> dict[str, list[OpRecord]]:
    """The job's ops, grouped by op_type."""
    with Ledger.connect(db_url) as ledger, ledger.unit_of_work(read_only=True) as uow:
        ops = list(uow.ops.list_for_job(job_id))
    grouped: dict[str, list[OpRecord]] = {}
    for op in ops:
        grouped.setdefault(op.op_type, []).append(op)
    return grouped


def sha256_of(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def assert_stored(out: Path, report: JobReport, body: bytes) -> None:
    """The report names ``body``'s content-addressed file, and the file holds exactly it."""
    sha = sha256_of(body)
    assert report.sha256 == sha
    assert report.size_bytes == len(body)
    assert report.final_path == f"artifacts/{sha[:2]}/{sha}"
    assert (out / report.final_path).read_bytes() == body


def part_files(out: Path) -> list[Path]:
    staging = out / ".staging"
    return sorted(staging.glob("*.part")) if staging.is_dir() else []


def artifact_files(out: Path) -> list[Path]:
    artifacts = out / "artifacts"
    return sorted(p for p in artifacts.rglob("*") if p.is_file()) if artifacts.is_dir() else []
