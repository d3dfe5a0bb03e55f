"""The pipeline as one table: each step's kind, body, and the state it moves the job to.

Both pipelines walk :data:`PIPELINE` in order (:mod:`docstokg.run.pipeline`):
the ledger's records each step's result exactly once and replays it after a
crash; the plain one (the ledger off) runs the same bodies straight through.
A step's allowed origins are not written here: they are read off the
transition table (:func:`docstokg.states.origins`).  Adding a step, say
VERIFY between FINALIZE and INDEX, is one row here, one state in
:mod:`docstokg.states` (and its place in the table of moves), one schema
revision for the state's CHECK list, and their tests.

Two kinds of step:

* an **effect** does I/O (HTTP, disk) outside any transaction; the ledger
  records its JSON result, committed with the start of the next step;
* a **ledger step** only writes to the ledger, inside one transaction with
  its op and its move, so it is exactly-once outright.  Consecutive ledger
  steps share one unit of work.  With the ledger off, its ``plain`` body
  stands in for the write.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from docstokg.download import ByteCounter, Fetcher, Probe, StopCheck, Streamed
from docstokg.errors import TransientFetchError
from docstokg.ledger import Lease
from docstokg.services.content import (
    DEDUPE,
    DEDUPE_OUTCOMES,
    INDEX,
    LedgerWrite,
    StoredContent,
    dedupe_outcome,
    dedupe_write,
    index_write,
)
from docstokg.states import JobState, origins

HEAD, STREAM, FINALIZE = "HEAD", "STREAM", "FINALIZE"

StepResult = dict[str, Any]


@dataclass
class JobContext:
    """What a step's body works with: the job, the fetcher, and the results of earlier steps.

    ``mark_resumable`` and ``redo`` reach the ledger (RESUME_OK; reopening a
    recorded step whose work was lost); with the ledger off they do nothing.
    """

    job_id: str
    url: str
    epoch: int
    expected_sha256: str | None
    fetcher: Fetcher
    should_stop: StopCheck
    on_bytes: ByteCounter
    mark_resumable: Callable[[], None]
    redo: Callable[[str, str], None]  # (step kind, reason)
    lease: Lease | None = None  # None: the ledger is off
    results: dict[str, StepResult] = field(default_factory=dict)

    def held(self) -> Lease:
        """The job's lease, for a ledger step's fenced write."""
        if self.lease is None:
            raise ValueError(f"job {self.job_id}: a ledger step ran with the ledger off")
        return self.lease

    def content(self) -> StoredContent:
        """What STREAM and FINALIZE put on disk, for the ledger steps."""
        streamed = Streamed.from_json(self.results[STREAM])
        head = Probe.from_json(self.results[HEAD])
        return StoredContent(
            sha256=streamed.sha256,
            size_bytes=streamed.size,
            final_path=str(self.results[FINALIZE]["final_path"]),
            content_type=streamed.content_type or head.content_type,
        )


@dataclass(frozen=True)
class Step:
    """One row of the pipeline: an effect (``effect``) or a ledger step (``write``, ``plain``).

    ``moves_to`` is the state the step moves the job to, or the states it
    chooses between (then ``choose`` reads the choice off the result).
    """

    kind: str
    moves_to: frozenset[JobState]
    effect: Callable[[JobContext], StepResult] | None = None
    write: Callable[[JobContext], LedgerWrite] | None = None
    plain: Callable[[JobContext, PlainDedupe], StepResult] | None = None
    choose: Callable[[Mapping[str, Any]], JobState] | None = None

    def __post_init__(self) -> None:
        if (self.effect is None) == (self.write is None):
            raise ValueError(f"step {self.kind}: give exactly one of effect and write")
        if self.write is not None and self.plain is None:
            raise ValueError(f"step {self.kind}: a ledger step needs a plain body too")
        if len(self.moves_to) != 1 and self.choose is None:
            raise ValueError(f"step {self.kind}: a step with several targets must choose")

    @property
    def allowed_from(self) -> frozenset[JobState]:
        """The states this step starts from, read off the transition table."""
        return origins(self.moves_to)

    def reached(self, result: Mapping[str, Any]) -> JobState:
        """The state the job is in once this step recorded ``result``."""
        if self.choose is not None:
            return self.choose(result)
        [only] = self.moves_to
        return only

    @property
    def target(self) -> JobState | Callable[[Mapping[str, Any]], JobState]:
        """The state to move to, or the function of the result that picks it."""
        if self.choose is not None:
            return self.choose
        [only] = self.moves_to
        return only


class PlainDedupe:
    """DEDUPE with the ledger off: the first job of a run to store a content owns it."""

    def __init__(self) -> None:
        self._owners: dict[str, str] = {}
        self._lock = threading.Lock()

    def decide(self, job_id: str, sha256: str) -> StepResult:
        with self._lock:
            owner = self._owners.setdefault(sha256, job_id)
        if owner == job_id:
            return {"outcome": JobState.DEDUPED.value, "duplicate_of": None}
        return {"outcome": JobState.SKIPPED_DUPLICATE.value, "duplicate_of": owner}


# --- the bodies ----------------------------------------------------------------------


def _head(job: JobContext) -> StepResult:
    return job.fetcher.probe(job.url, should_stop=job.should_stop).to_json()


def _stream(job: JobContext) -> StepResult:
    head = Probe.from_json(job.results[HEAD])
    if job.fetcher.can_resume(job.job_id, head, epoch=job.epoch):
        job.mark_resumable()
    # The manifest's URL, which is what newer HEAD results record too: older
    # ones recorded where the redirects led, which may have expired since.
    asked = replace(head, url=job.url)
    return job.fetcher.stream(
        job.job_id,
        asked,
        epoch=job.epoch,
        expected_sha256=job.expected_sha256,
        should_stop=job.should_stop,
        on_bytes=job.on_bytes,
    ).to_json()


def _finalize(job: JobContext) -> StepResult:
    streamed = Streamed.from_json(job.results[STREAM])
    try:
        return {"final_path": job.fetcher.finalize(job.job_id, streamed, epoch=job.epoch)}
    except TransientFetchError as exc:
        # The staged bytes STREAM recorded are gone: its success no longer
        # holds, so the next attempt downloads again instead of replaying it.
        job.redo(STREAM, exc.reason)
        raise


def _index_plain(job: JobContext, dedupe: PlainDedupe) -> StepResult:
    content = job.content()
    return {
        "sha256": content.sha256,
        "size_bytes": content.size_bytes,
        "final_path": content.final_path,
        "content_type": content.content_type,
    }


def _dedupe_plain(job: JobContext, dedupe: PlainDedupe) -> StepResult:
    return dedupe.decide(job.job_id, job.content().sha256)


# --- the table -----------------------------------------------------------------------

PIPELINE: tuple[Step, ...] = (
    Step(HEAD, frozenset({JobState.HEAD_DONE}), effect=_head),
    Step(STREAM, frozenset({JobState.STREAMING}), effect=_stream),
    Step(FINALIZE, frozenset({JobState.FINALIZED}), effect=_finalize),
    Step(
        INDEX,
        frozenset({JobState.INDEXED}),
        write=lambda job: index_write(job.held(), job.content()),
        plain=_index_plain,
    ),
    Step(
        DEDUPE,
        DEDUPE_OUTCOMES,
        write=lambda job: dedupe_write(job.held(), job.content()),
        plain=_dedupe_plain,
        choose=dedupe_outcome,
    ),
)
"""HEAD → STREAM → FINALIZE → INDEX → DEDUPE."""
