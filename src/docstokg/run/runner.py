"""DownloadRun: a manifest's jobs through the pipeline on a pool of worker threads.

With the ledger on, the run upgrades the schema, cleans up after earlier
crashes, plans the manifest (idempotently), and lets its workers lease jobs
until every job of the manifest has ended — whoever finished it: several
runs (processes, machines) on the same ledger share the work, and a run
waits for jobs other live workers hold, taking them over if their leases
expire.  With the ledger off, the same steps run straight through, once per
row, and nothing is remembered.

A stop request (SIGINT/SIGTERM in the CLI) ends claiming; downloads under
way stop at the next chunk, keep their ``.part`` and hand their job back.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from time import monotonic

from docstokg.config import IdempotencyConfig
from docstokg.download import ArtifactStore, DownloadLimits, Fetcher
from docstokg.errors import DatabaseUnavailable, DocstokgError, TransientDatabaseError
from docstokg.keys import job_id_for, job_key
from docstokg.ledger import JobRecord, JobSpec, Lease, Ledger
from docstokg.manifest import Manifest, ManifestProblem
from docstokg.metrics import RunCounters
from docstokg.metrics import serving as serving_metrics
from docstokg.redact import mask_url, mask_urls
from docstokg.run.candidates import Candidates
from docstokg.run.collaborators import Collaborators
from docstokg.run.heartbeat import LeaseKeeper
from docstokg.run.pipeline import JobOutcome, LedgerPipeline, Outcome, PlainPipeline, Target
from docstokg.services import (
    Backoff,
    JobSteps,
    NextClaim,
    add_to_manifest,
    check_manifest_name,
    cleanup_stale_leases,
    cleanup_stale_ops,
    count_unfinished,
    follow_expected_checksums,
    jobs_among,
    out_of_attempts,
    plan_job_if_absent,
    plan_jobs,
    reconcile_jobs,
    release_lease,
    release_leases_of,
    unfinished_among,
    usable_manifest_name,
)
from docstokg.services.stores import (
    bind_store,
    ended_with_a_file,
    requeue_for_refetch,
    stored_file_problem,
)
from docstokg.states import SUCCESS_STATES, JobState

log = logging.getLogger(__name__)

ENABLED_MESSAGE = "Idempotency system enabled - initializing job tracking"
# States a job reported as unfinished carries in plain mode (nothing recorded).
UNFINISHED = "UNFINISHED"
# A pass that ended its job for good: no claim of this run offers it again.
_ENDED = frozenset({Outcome.STORED, Outcome.DUPLICATE, Outcome.FAILED})
_PLAIN_STATES = {
    Outcome.STORED: JobState.DEDUPED.value,
    Outcome.DUPLICATE: JobState.SKIPPED_DUPLICATE.value,
    Outcome.FAILED: JobState.FAILED.value,
}


@dataclass(frozen=True)
class RunSettings:
    """What a run needs besides its manifest."""

    out_dir: Path
    config: IdempotencyConfig
    workers: int = 4
    db_url: str | None = None  # the ledger's database when config.enabled
    metrics_port: int | None = None  # serve Prometheus /metrics on 127.0.0.1 while running
    # The name the ledger knows the manifest by; its runs claim only its jobs (None: its file name).
    manifest_name: str | None = None

    @property
    def limits(self) -> DownloadLimits:
        config = self.config
        return DownloadLimits(
            max_bytes=config.max_bytes,
            connect_timeout_s=config.connect_timeout_s,
            read_timeout_s=config.read_timeout_s,
            max_redirects=config.max_redirects,
            user_agent=config.user_agent,
            min_speed_bytes_s=config.min_speed_bytes_s,
            min_speed_window_s=config.min_speed_window_s,
            attempt_deadline_s=config.attempt_deadline_s,
        )

    @property
    def backoff(self) -> Backoff:
        return Backoff(base_s=self.config.backoff_base_s, cap_s=self.config.backoff_max_s)


@dataclass(frozen=True, slots=True)
class JobReport:
    """Where one job of the manifest stands at the end of the run."""

    job_id: str
    work_id: str
    artifact_id: str
    url: str
    state: str
    sha256: str | None = None
    size_bytes: int | None = None
    final_path: str | None = None
    error: str | None = None
    attempts: int = 0
    ended: bool = False  # stored, a duplicate, or failed with no attempt left

    @property
    def label(self) -> str:
        """The state as people read it: a FAILED job with attempts left is retrying."""
        if self.state == JobState.FAILED.value and not self.ended:
            return "FAILED (will retry)"
        return self.state


@dataclass(frozen=True)
class RunSummary:
    """The end of a run: every job's state and what this process did."""

    ledger: bool
    db_url: str | None
    out_dir: Path
    jobs: list[JobReport]
    skipped_rows: list[ManifestProblem]
    duplicate_rows: int
    bytes_fetched: int
    elapsed_s: float
    interrupted: bool
    # Why the run stopped early for its database (an outage past db_outage_s,
    # a read-only file, tables gone), in words an operator can act on.
    ledger_error: str | None = None
    # Jobs this run worked on and lost to another worker (its lease expired or
    # was taken over): stored, if they are, by someone else, not by this run.
    lost_jobs: int = 0
    counts: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        counts = {"stored": 0, "duplicates": 0, "failed": 0, "unfinished": 0}
        for job in self.jobs:
            if job.state == JobState.DEDUPED.value:
                counts["stored"] += 1
            elif job.state == JobState.SKIPPED_DUPLICATE.value:
                counts["duplicates"] += 1
            elif job.state == JobState.FAILED.value and job.ended:
                counts["failed"] += 1
            else:
                counts["unfinished"] += 1
        object.__setattr__(self, "counts", counts)

    @property
    def exit_code(self) -> int:
        """0: every row was run and succeeded; 1: some failed or were skipped; 130: stopped.

        A skipped row is work the manifest asked for and the run did not do,
        so a run with one never reports success; nor does one its database
        stopped.
        """
        if self.ledger_error is not None:
            return 1
        if self.counts["unfinished"] and self.interrupted:
            return 130
        lost = self.counts["failed"] or self.counts["unfinished"] or self.skipped_rows
        return 1 if lost else 0

    def to_json(self) -> dict[str, object]:
        return {
            "ledger": self.ledger,
            "db_url": None if self.db_url is None else mask_url(self.db_url),
            "out_dir": str(self.out_dir),
            "counts": {**self.counts, "jobs": len(self.jobs)},
            "skipped_rows": [{"line": p.line, "reason": p.reason} for p in self.skipped_rows],
            "duplicate_rows": self.duplicate_rows,
            "bytes_fetched": self.bytes_fetched,
            "elapsed_s": round(self.elapsed_s, 3),
            "interrupted": self.interrupted,
            "ledger_error": None if self.ledger_error is None else mask_urls(self.ledger_error),
            "lost_jobs": self.lost_jobs,
            "exit_code": self.exit_code,
            "jobs": [
                {
                    "job_id": job.job_id,
                    "work_id": job.work_id,
                    "artifact_id": job.artifact_id,
                    "url": mask_url(job.url),
                    "state": job.state,
                    "sha256": job.sha256,
                    "size_bytes": job.size_bytes,
                    "final_path": job.final_path,
                    "error": None if job.error is None else mask_urls(job.error),
                    "attempts": job.attempts,
                    "ended": job.ended,
                }
                for job in self.jobs
            ],
        }


class DownloadRun:
    """One ``docstokg run``: build it, call :meth:`run`, or :meth:`request_stop` from elsewhere.

    It receives its collaborators (:mod:`docstokg.run.bootstrap` wires the
    production ones from the settings): a test or a library user may hand it
    a store, a fetcher or a ledger of their own.
    """

    def __init__(
        self,
        manifest: Manifest,
        settings: RunSettings,
        collaborators: Collaborators,
    ) -> None:
        self._manifest = manifest
        self._settings = settings
        if settings.manifest_name is not None:  # given: refused at once if no one could type it
            check_manifest_name(settings.manifest_name)
        self._manifest_name = settings.manifest_name or usable_manifest_name(manifest.path.name)
        self._parts = collaborators
        self._reporter = collaborators.reporter
        self._stop = threading.Event()
        self._news = _News()
        self._counters = RunCounters()
        self._bytes = 0
        self._bytes_lock = threading.Lock()
        self._ledger_failure: DatabaseUnavailable | None = None
        self._failure_lock = threading.Lock()
        # What each job's last pass here came to: the summary's source when the
        # database cannot be asked at the end.
        self._outcomes: dict[str, JobOutcome] = {}
        # host:pid:run: an operator can tell which process (and which run in
        # it) holds a lease; the workers add :wN.
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._targets = [
            Target(job_id_for(job_key(row.work_id, row.artifact_id, row.url)),
                   row.work_id, row.artifact_id, row.url, row.sha256)
            for row in manifest.rows
        ]  # fmt: skip

    @property
    def manifest_name(self) -> str:
        """The name this run's manifest has in the ledger (``job status --manifest NAME``)."""
        return self._manifest_name

    def request_stop(self) -> None:
        """Stop claiming; downloads under way stop at their next chunk and keep their .part."""
        self._stop.set()
        self._news.announce()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> RunSummary:
        started = monotonic()
        self._parts.store.prepare()
        try:
            with self._parts.open_fetcher() as fetcher:
                if self._parts.open_ledger is not None:
                    jobs = self._run_with_ledger(fetcher, self._parts.open_ledger)
                else:
                    jobs = self._run_plain(fetcher)
        finally:
            self._reporter.end()
        return RunSummary(
            ledger=self._parts.open_ledger is not None,
            db_url=self._settings.db_url if self._parts.open_ledger is not None else None,
            out_dir=self._settings.out_dir,
            jobs=jobs,
            skipped_rows=self._manifest.problems,
            duplicate_rows=self._manifest.duplicates,
            bytes_fetched=self._bytes,
            elapsed_s=monotonic() - started,
            interrupted=self._stop.is_set() and self._ledger_failure is None,
            ledger_error=None if self._ledger_failure is None else str(self._ledger_failure),
            lost_jobs=sum(o.outcome is Outcome.LOST for o in self._outcomes.values()),
        )

    # --- the ledger on ---------------------------------------------------------------

    def _run_with_ledger(
        self, fetcher: Fetcher, open_ledger: Callable[[], AbstractContextManager[Ledger]]
    ) -> list[JobReport]:
        settings = self._settings
        with open_ledger() as ledger:
            upgraded = ledger.upgrade()
            log.info(
                "%s (schema_version %s, revision %s, database %s)",
                ENABLED_MESSAGE,
                upgraded.schema_version,
                upgraded.to_revision,
                mask_url(settings.db_url or str(ledger.url)),
            )

            # Before anything is written: a ledger run against another store
            # would call work "ended" whose files are not there.
            # Start-up is safe to repeat whole (binding, cleanups, planning are all
            # idempotent): a server restarting under it is waited out.
            ledger.retrying(lambda: bind_store(ledger, settings.out_dir))

            def maintenance() -> None:
                self._maintain(ledger, fetcher.store)

            ledger.retrying(maintenance)
            with serving_metrics(ledger, settings.metrics_port, counters=self._counters):
                return self._plan_and_work(ledger, fetcher, maintenance)

    def _plan_and_work(
        self, ledger: Ledger, fetcher: Fetcher, maintenance: Callable[[], None]
    ) -> list[JobReport]:
        """Plan the manifest and work until every one of its jobs has ended."""
        settings, config = self._settings, self._settings.config
        targets = ledger.retrying(lambda: self._plan(ledger))
        job_ids = [target.job_id for target in targets]
        ledger.retrying(lambda: self._recheck_stored(ledger, fetcher.store, job_ids))
        done = len(job_ids) - count_unfinished(ledger, job_ids)
        self._reporter.begin(len(job_ids), done=done)
        pipeline = LedgerPipeline(
            ledger,
            fetcher,
            backoff=settings.backoff,
            steps=self._parts.steps,
        )
        candidates = Candidates(job_ids)
        completion = _Completion(ledger, job_ids, candidates, poll_s=self._poll_s)
        with LeaseKeeper(
            ledger,
            ttl_s=config.lease_ttl_s,
            maintenance=maintenance,
            maintenance_every_s=config.reconciliation_interval_s,
        ) as keeper:
            self._run_workers(
                lambda number: self._ledger_worker(ledger, pipeline, keeper, completion, number)
            )
        try:
            records = {job.job_id: job for job in jobs_among(ledger, job_ids)}
        except DatabaseUnavailable as exc:
            self._stop_for_the_database(exc)
            return [
                _plain_report_of(target, self._outcomes.get(target.job_id)) for target in targets
            ]
        return [_report(target, records.get(target.job_id)) for target in targets]

    def _stop_for_the_database(self, exc: DatabaseUnavailable) -> None:
        """The database is gone for good (or for longer than db_outage_s): stop cleanly.

        Downloads under way stop at their next chunk and keep their ``.part``;
        the summary says what this process saw, and the run exits 1.
        """
        with self._failure_lock:
            first = self._ledger_failure is None
            if first:
                self._ledger_failure = exc
        if first:
            log.error("stopping the run: %s", exc)
        self.request_stop()

    @property
    def _poll_s(self) -> float:
        return min(1.0, self._settings.config.lease_ttl_s / 4)

    def _maintain(self, ledger: Ledger, store: ArtifactStore) -> None:
        config = self._settings.config
        leases = cleanup_stale_leases(ledger)
        ops = cleanup_stale_ops(ledger, abandoned_threshold_s=config.lease_ttl_s)
        report = reconcile_jobs(
            ledger, store.staging_dir, config.stale_file_age_s, artifacts_root=store.out_dir
        )
        log.info(
            "reconciled: %d expired leases cleared, %d ops abandoned, %d stale .part files "
            "deleted, %d jobs requeued (their file was missing)",
            leases,
            ops,
            len(report.parts_deleted),
            len(report.jobs_requeued),
        )

    def _recheck_stored(self, ledger: Ledger, store: ArtifactStore, job_ids: list[str]) -> None:
        """Hold the store to the ledger: an ended job whose file is gone is fetched again.

        A ``stat`` per file (existence, regular file, recorded size), not a
        re-hash: ``docstokg job verify`` proves the bytes.  A job a live lease
        holds is left to its holder.
        """
        bad = {
            job.job_id: problem
            for job in ended_with_a_file(jobs_among(ledger, job_ids))
            if (problem := stored_file_problem(store, job))
        }
        if not bad:
            return
        requeued = requeue_for_refetch(
            ledger, list(bad), reason="stored file missing or wrong size; fetched again"
        )
        for job_id in requeued:
            log.warning(
                "job %s: stored file not right (%s); fetched again",
                job_id,
                bad[job_id],
            )

    def _plan(self, ledger: Ledger) -> list[Target]:
        """Plan the manifest; returns its targets with the job ids the ledger knows them by."""
        specs = [JobSpec(t.work_id, t.artifact_id, t.url, t.expected_sha256) for t in self._targets]
        created = plan_jobs(ledger, specs, max_attempts=self._settings.config.max_attempts)
        log.info("planned %d jobs (%d new)", len(specs), created)
        known = {job.job_id: job for job in jobs_among(ledger, [t.job_id for t in self._targets])}
        self._follow_checksums(ledger, known)
        targets = []
        for target in self._targets:
            if target.job_id in known:
                targets.append(target)
                continue
            job_id = plan_job_if_absent(  # a job adopted from a v3 ledger keeps its old id
                ledger, work_id=target.work_id, artifact_id=target.artifact_id,
                canonical_url=target.url,
            )  # fmt: skip
            targets.append(replace(target, job_id=job_id))
        joined = add_to_manifest(ledger, self.manifest_name, [t.job_id for t in targets])
        if joined:
            log.info("manifest %r: %d jobs joined it", self.manifest_name, joined)
        return targets

    def _follow_checksums(self, ledger: Ledger, known: Mapping[str, JobRecord]) -> None:
        """Record the manifest's checksums where they changed since the jobs were planned."""
        changed = {
            target.job_id: target.expected_sha256
            for target in self._targets
            if target.job_id in known
            and known[target.job_id].expected_sha256 != target.expected_sha256
        }
        for job_id in follow_expected_checksums(ledger, changed):
            log.warning(
                "job %s: the manifest's sha256 changed to %s; it is fetched again",
                job_id,
                changed[job_id],
            )

    def _ledger_worker(
        self,
        ledger: Ledger,
        pipeline: LedgerPipeline,
        keeper: LeaseKeeper,
        completion: _Completion,
        number: int,
    ) -> None:
        owner = f"{self._owner}:w{number}"
        candidates = completion.candidates
        ttl_s = self._settings.config.lease_ttl_s
        next_claim = pipeline.next_claim(owner=owner, ttl_s=ttl_s, among=candidates.window)
        claimed: JobSteps | None = None  # the next job, claimed as the last one ended
        try:
            while not self._stop.is_set():
                seen = self._news.count  # before the claim: a job ending after it wakes us
                steps = claimed or self._claim(ledger, pipeline, candidates, owner)
                claimed = None
                if steps is None:
                    if completion.all_ended():
                        return
                    # Jobs are held by other workers (here or elsewhere) or wait out
                    # a backoff: look again when a job ends here, or after a poll.
                    self._news.wait_after(seen, self._poll_s)
                    continue
                if self._stop.is_set():  # asked to stop while the claim was on its way
                    claimed = steps
                    return
                try:
                    outcome = self._process(ledger, pipeline, keeper, steps, next_claim)
                finally:
                    claimed = steps.next_job  # committed with the job's end, whatever came after
                self._outcomes[outcome.target.job_id] = outcome
                if outcome.outcome in _ENDED:
                    candidates.ended([outcome.target.job_id])
                completion.ask_again()
                self._news.announce()
                if outcome.outcome in (Outcome.RETRY, Outcome.FAILED):
                    self._counters.failed(outcome.error)
                self._reporter.job_ended(outcome)
        except DatabaseUnavailable as exc:
            self._stop_for_the_database(exc)
        finally:
            if claimed is not None:  # stopping: hand back the job not yet started
                self._hand_back(ledger, claimed.lease)

    def _claim(
        self, ledger: Ledger, pipeline: LedgerPipeline, candidates: Candidates, owner: str
    ) -> JobSteps | None:
        """The worker's next job among the run's own, through passing database errors.

        Each window of the run's unfinished jobs is tried once; one that yields
        nothing is checked against the ledger, which forgets the jobs that
        ended elsewhere.  A claim whose COMMIT failed may still have taken a
        job: before trying again, the worker hands back whatever it may hold
        (it holds nothing else at this point), so no job waits out a lease
        nobody works under.
        """
        ttl_s = self._settings.config.lease_ttl_s
        unsure = False

        def claim() -> JobSteps | None:
            nonlocal unsure
            if unsure:
                release_leases_of(ledger, owner)
                unsure = False
            for window in candidates.windows():
                try:
                    steps = pipeline.claim(owner=owner, ttl_s=ttl_s, among=window)
                except TransientDatabaseError:
                    unsure = True
                    raise
                if steps is not None:
                    return steps
                candidates.keep(window, unfinished_among(ledger, window))
            return None

        return ledger.retrying(claim)

    @staticmethod
    def _hand_back(ledger: Ledger, lease: Lease) -> None:
        """Release a job claimed ahead and never started; if that fails, its lease expires."""
        try:
            release_lease(ledger, lease)
        except DocstokgError as exc:  # an error on its way out wins
            log.warning(
                "could not hand back job %s (%s); another worker takes it once its lease expires",
                lease.job_id,
                exc,
            )

    def _process(
        self,
        ledger: Ledger,
        pipeline: LedgerPipeline,
        keeper: LeaseKeeper,
        steps: JobSteps,
        then: NextClaim,
    ) -> JobOutcome:
        """One leased job through the pipeline, its lease renewed meanwhile."""
        lease = steps.lease
        with keeper.holding(lease) as held:
            try:
                return pipeline.process(
                    steps,
                    should_stop=lambda: self._stop.is_set() or held.ended(),
                    on_bytes=self._count_bytes,
                    then_claim=None if self._stop.is_set() else then,
                )
            except TransientDatabaseError as exc:
                return self._after_database_error(ledger, pipeline, lease, exc)
            except DatabaseUnavailable as exc:
                self._stop_for_the_database(exc)
                return pipeline.interrupted(lease, str(exc))
            except Exception as exc:  # noqa: BLE001 - a bug in one job must not stop the run
                return pipeline.give_up(lease, exc)

    def _after_database_error(
        self, ledger: Ledger, pipeline: LedgerPipeline, lease: Lease, exc: TransientDatabaseError
    ) -> JobOutcome:
        """A passing database error cut a step short: hand the job back, no attempt used.

        The step's record may or may not have committed; either way the job's
        next holder (maybe this worker, a moment later) replays what was
        recorded and redoes the rest, resuming its ``.part``.  Handing back
        waits out the outage; if it lasts past ``db_outage_s``, the run stops.
        """
        log.warning("job %s: %s; handed back, no attempt used", lease.job_id, exc)
        try:
            # Every lease of this worker: the failed COMMIT may have claimed its next job too.
            release_leases_of(ledger, lease.owner)
        except DatabaseUnavailable as lasting:
            self._stop_for_the_database(lasting)
        return pipeline.interrupted(lease, f"database error, handed back: {exc}")

    # --- the ledger off --------------------------------------------------------------

    def _run_plain(self, fetcher: Fetcher) -> list[JobReport]:
        log.info("Idempotency system disabled - downloading without job tracking")
        pipeline = PlainPipeline(fetcher, steps=self._parts.steps)
        pending: queue.SimpleQueue[Target] = queue.SimpleQueue()
        for target in self._targets:
            pending.put(target)
        outcomes: dict[str, tuple[JobOutcome, int]] = {}
        self._reporter.begin(len(self._targets), done=0)

        def worker(number: int) -> None:
            while not self._stop.is_set():
                try:
                    target = pending.get_nowait()
                except queue.Empty:
                    return
                outcome, attempts = self._plain_attempts(pipeline, target)
                outcomes[target.job_id] = (outcome, attempts)
                self._reporter.job_ended(outcome)

        self._run_workers(worker)
        reports = []
        for target in self._targets:
            outcome, attempts = outcomes.get(target.job_id, (None, 0))
            if outcome is None:
                reports.append(_plain_report(target, UNFINISHED, None, 0))
            else:
                state = _PLAIN_STATES.get(outcome.outcome, UNFINISHED)
                reports.append(_plain_report(target, state, outcome, attempts))
        return reports

    def _plain_attempts(self, pipeline: PlainPipeline, target: Target) -> tuple[JobOutcome, int]:
        """Retry transient failures in place, with the same backoff the ledger would use.

        Returns the outcome and the attempts used up, counted as the ledger
        counts them: failed attempts, all of them for a permanent failure.
        """
        backoff, max_attempts = self._settings.backoff, self._settings.config.max_attempts
        for attempt in range(1, max_attempts + 1):
            outcome = pipeline.process(
                target, should_stop=self._stop.is_set, on_bytes=self._count_bytes
            )
            if outcome.outcome is Outcome.FAILED:  # permanent: uses every attempt, as in the ledger
                return outcome, max_attempts
            if outcome.outcome is not Outcome.RETRY:
                return outcome, attempt - 1
            if attempt == max_attempts:
                break
            delay = backoff.delay_s(attempt, outcome.retry_after_s)
            self._reporter.note(f"retrying {target.url} in {delay:.1f}s: {outcome.error}")
            if self._stop.wait(delay):
                return JobOutcome(target, Outcome.INTERRUPTED, error=outcome.error), attempt
        ended = out_of_attempts(outcome.error or "", max_attempts, max_attempts)
        return JobOutcome(target, Outcome.FAILED, error=ended), max_attempts

    # --- shared ----------------------------------------------------------------------

    def _run_workers(self, work: Callable[[int], None]) -> None:
        """Run ``work(n)`` on each worker thread; the first error stops the others and is raised."""
        with ThreadPoolExecutor(
            max_workers=self._settings.workers, thread_name_prefix="docstokg-worker"
        ) as pool:
            futures = [pool.submit(work, number) for number in range(self._settings.workers)]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [future for future in done if future.exception() is not None]
            if failed:
                self._stop.set()  # the others stop at their next chunk or claim
                failed[0].result()

    def _count_bytes(self, count: int) -> None:
        with self._bytes_lock:
            self._bytes += count
        self._reporter.advance_bytes(count)


class _News:
    """Something idle workers wait for: a job ended in this process, or a stop was asked.

    A counter under a condition: a worker notes the count before it looks for
    work, and waits only while the count is unchanged, so news that arrives
    between its look and its wait is never missed.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._count = 0

    @property
    def count(self) -> int:
        with self._changed:
            return self._count

    def announce(self) -> None:
        with self._changed:
            self._count += 1
            self._changed.notify_all()

    def wait_after(self, seen: int, timeout_s: float) -> None:
        """Return once the count has moved past ``seen``, or after ``timeout_s``."""
        with self._changed:
            self._changed.wait_for(lambda: self._count != seen, timeout_s)


class _Completion:
    """Has every job of the manifest ended?  Idle workers ask; the ledger answers once per poll.

    Each answer also tells the run's candidates which of its jobs are left.
    """

    def __init__(
        self, ledger: Ledger, job_ids: Sequence[str], candidates: Candidates, *, poll_s: float
    ) -> None:
        self._ledger = ledger
        self._job_ids = job_ids
        self.candidates = candidates
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._ended = False

    def ask_again(self) -> None:
        """A job just ended here: the next idle worker asks the ledger at once."""
        with self._lock:
            self._checked_at = float("-inf")

    def all_ended(self) -> bool:
        with self._lock:
            if not self._ended and monotonic() - self._checked_at >= self._poll_s:
                unfinished = unfinished_among(self._ledger, self._job_ids)
                self.candidates.reset(unfinished)
                self._ended = not unfinished
                self._checked_at = monotonic()
            return self._ended


def _report(target: Target, job: JobRecord | None) -> JobReport:
    if job is None:
        return JobReport(target.job_id, target.work_id, target.artifact_id, target.url, UNFINISHED)
    return JobReport(
        job_id=job.job_id,
        work_id=job.work_id,
        artifact_id=job.artifact_id,
        url=job.canonical_url,
        state=job.state.value,
        sha256=job.sha256,
        size_bytes=job.size_bytes,
        final_path=job.final_path,
        error=job.last_error if job.state is JobState.FAILED else None,
        attempts=job.attempts,
        ended=job.state in SUCCESS_STATES or job.exhausted,
    )


def _plain_report(
    target: Target, state: str, outcome: JobOutcome | None, attempts: int
) -> JobReport:
    return JobReport(
        job_id=target.job_id,
        work_id=target.work_id,
        artifact_id=target.artifact_id,
        url=target.url,
        state=state,
        sha256=outcome.sha256 if outcome else None,
        size_bytes=outcome.size_bytes if outcome else None,
        final_path=outcome.final_path if outcome else None,
        error=outcome.error if outcome and state == JobState.FAILED.value else None,
        attempts=attempts,
        ended=state != UNFINISHED,
    )


def _plain_report_of(target: Target, outcome: JobOutcome | None) -> JobReport:
    """What this process saw of a job, for a summary the database could not give."""
    state = UNFINISHED if outcome is None else _PLAIN_STATES.get(outcome.outcome, UNFINISHED)
    return _plain_report(target, state, outcome, 0)
