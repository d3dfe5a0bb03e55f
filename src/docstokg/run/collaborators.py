"""What a :class:`~docstokg.run.runner.DownloadRun` works with, handed to it (see bootstrap)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from docstokg.download import ArtifactStore, Fetcher
from docstokg.ledger import Ledger
from docstokg.run.reporting import NullReporter, RunReporter
from docstokg.run.steps import PIPELINE, Step


@dataclass(frozen=True)
class Collaborators:
    """A run's collaborators: the store, how to open the fetcher and the ledger, the reporter.

    The openers are called when the run starts and closed when it ends, so an
    HTTP client's connections and a ledger's engine live exactly as long as
    the run.  ``open_ledger`` is None when the ledger is off.  ``steps`` is
    the pipeline's table (:data:`docstokg.run.steps.PIPELINE`).
    """

    store: ArtifactStore
    open_fetcher: Callable[[], AbstractContextManager[Fetcher]]
    open_ledger: Callable[[], AbstractContextManager[Ledger]] | None
    reporter: RunReporter = field(default_factory=NullReporter)
    steps: tuple[Step, ...] = PIPELINE
