"""Progress of a run: a rich progress bar on a terminal, plain log lines elsewhere.

Workers report from many threads; each reporter is safe to call from any of
them.  The runner depends only on :class:`RunReporter`.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from docstokg.redact import mask_url, mask_urls
from docstokg.run.pipeline import JobOutcome, Outcome

log = logging.getLogger("docstokg.progress")

# Outcomes after which the job will not come back to this run's workers.
_ENDED = frozenset({Outcome.STORED, Outcome.DUPLICATE, Outcome.FAILED})


class RunReporter(Protocol):
    def begin(self, total: int, *, done: int) -> None: ...
    def advance_bytes(self, count: int) -> None: ...
    def job_ended(self, outcome: JobOutcome) -> None: ...
    def note(self, message: str) -> None: ...
    def end(self) -> None: ...


class NullReporter:
    """Reports nothing (library use, tests)."""

    def begin(self, total: int, *, done: int) -> None:
        pass

    def advance_bytes(self, count: int) -> None:
        pass

    def job_ended(self, outcome: JobOutcome) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def end(self) -> None:
        pass


def _describe(outcome: JobOutcome) -> str:
    """One line about a job, its URL's credentials masked (errors quote URLs too)."""
    target = outcome.target
    what = f"{target.work_id}/{target.artifact_id} {mask_url(target.url)}"
    if outcome.outcome in (Outcome.STORED, Outcome.DUPLICATE):
        return f"{outcome.outcome.value} {what} ({outcome.size_bytes:,} bytes)"
    return f"{outcome.outcome.value} {what}: {mask_urls(str(outcome.error))}"


class LogReporter:
    """One log line per job that ends or stumbles; for logs and pipes, not terminals."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = 0
        self._ended = 0

    def begin(self, total: int, *, done: int) -> None:
        self._total, self._ended = total, done
        log.info("%d jobs in the manifest, %d already ended", total, done)

    def advance_bytes(self, count: int) -> None:
        pass

    def job_ended(self, outcome: JobOutcome) -> None:
        with self._lock:
            if outcome.outcome in _ENDED:
                self._ended += 1
            position = f"[{self._ended}/{self._total}]"
        level = logging.INFO if outcome.outcome in _ENDED else logging.WARNING
        log.log(level, "%s %s", position, _describe(outcome))

    def note(self, message: str) -> None:
        log.info("%s", mask_urls(message))

    def end(self) -> None:
        pass


class RichReporter:
    """A live progress bar (jobs and bytes) on a terminal."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task: TaskID | None = None
        self._bytes = 0
        self._lock = threading.Lock()

    def begin(self, total: int, *, done: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task("jobs", total=total, completed=done)

    def advance_bytes(self, count: int) -> None:
        with self._lock:
            self._bytes += count
        if self._task is not None:
            self._progress.update(self._task, description=f"jobs ({self._bytes:,} bytes fetched)")

    def job_ended(self, outcome: JobOutcome) -> None:
        if self._task is None:
            return
        if outcome.outcome in _ENDED:
            self._progress.advance(self._task)
        if outcome.outcome not in (Outcome.STORED, Outcome.DUPLICATE):
            self._progress.console.log(_describe(outcome))

    def note(self, message: str) -> None:
        self._progress.console.log(mask_urls(message))

    def end(self) -> None:
        self._progress.stop()
