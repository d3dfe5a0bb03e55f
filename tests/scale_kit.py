"""Many workers leasing one ledger's jobs at once: the worker loop, its records, and the checks.

Shared by tests/integration/test_idempotency_scale.py, its child process
(tests/scale_child.py) and bench/bench_scale.py.  A worker leases a job
(timed: the lease latency), then finishes it through the public services in
one more unit of work: the five steps of a download (HEAD, STREAM, FINALIZE,
INDEX, DEDUPE) as ledger steps whose only effect is their op row, so the job
ends DEDUPED with five ops under its lease, as a real run leaves it, at the
cost of two commits per job and no HTTP.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from docstokg import (
    JobSpec,
    JobState,
    JobSteps,
    Lease,
    LeaseLost,
    Ledger,
    LedgerStep,
    lease_next_job,
    op_key,
)
from docstokg.services.operations import job_stats, job_status

# Long enough that no lease expires during a run: a second grant of a job
# would then be a takeover, not a double lease.
LEASE_TTL_S = 3600.0
FINISH_STEPS = (
    ("HEAD", JobState.HEAD_DONE),
    ("STREAM", JobState.STREAMING),
    ("FINALIZE", JobState.FINALIZED),
    ("INDEX", JobState.INDEXED),
    ("DEDUPE", JobState.DEDUPED),
)
OPS_PER_JOB = len(FINISH_STEPS)


@dataclass(frozen=True, slots=True)
class Claim:
    """One grant a worker received: which job, under which epoch, and how long the lease took."""

    job_id: str
    owner: str
    epoch: int
    latency_s: float
    lost: bool = False  # the job could not be finished under this lease: another holder had it

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: str) -> Claim:
        fields: dict[str, Any] = json.loads(line)
        return cls(**fields)


def specs(count: int, *, start: int = 0) -> Iterator[JobSpec]:
    """``count`` distinct jobs, four artifacts per work (as a manifest of papers has)."""
    for n in range(start, start + count):
        yield JobSpec(f"W{n // 4:08d}", f"A{n % 4}", f"https://example.org/w/{n // 4}/{n % 4}.pdf")


def _recorded(uow: object, now: float) -> Mapping[str, Any]:
    """A ledger step's write: nothing but its op row (which the step records itself)."""
    return {"ok": True}


def finish(ledger: Ledger, lease: Lease) -> None:
    """Walk a freshly leased job to DEDUPED in one unit of work, one op per step."""
    steps = [
        LedgerStep.of(kind, op_key(kind, lease.job_id), _recorded, target)
        for kind, target in FINISH_STEPS
    ]
    JobSteps(ledger, lease).ledger_steps(*steps)


def work(
    ledger: Ledger, owner: str, *, finisher: Callable[[Ledger, Lease], None] = finish
) -> list[Claim]:
    """Lease and finish jobs until none is left; the grants received, in order."""
    claims: list[Claim] = []
    while True:
        started = time.perf_counter()
        lease = lease_next_job(ledger, owner=owner, ttl_s=LEASE_TTL_S)
        latency = time.perf_counter() - started
        if lease is None:
            return claims
        try:
            finisher(ledger, lease)
        except LeaseLost:
            # Fenced out: someone else was granted this job while the lease
            # was live.  Recorded, so the test names the twice-leased jobs.
            claims.append(Claim(lease.job_id, owner, lease.epoch, latency, lost=True))
        else:
            claims.append(Claim(lease.job_id, owner, lease.epoch, latency))


def run_threads(ledger: Ledger, prefix: str, workers: int) -> list[Claim]:
    """``workers`` threads on one ledger, released together; every grant any of them got.

    A thread that fails re-raises its error here, after all have stopped.
    """
    barrier = threading.Barrier(workers)
    results: list[list[Claim]] = [[] for _ in range(workers)]
    errors: list[Exception] = []

    def target(n: int) -> None:
        try:
            barrier.wait()
            results[n] = work(ledger, f"{prefix}:w{n}")
        except Exception as exc:  # noqa: BLE001 -- re-raised in the caller's thread below
            errors.append(exc)
            barrier.abort()

    threads = [
        threading.Thread(target=target, args=(n,), name=f"{prefix}:w{n}") for n in range(workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [claim for claims in results for claim in claims]


def quantile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of ``values`` (as the ledger's own reports compute it)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def timed(call: Callable[[], object]) -> float:
    """Seconds one ``call()`` took."""
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def report_query_times(ledger: Ledger) -> dict[str, float]:
    """Seconds taken by the services behind ``docstokg job status`` and ``docstokg job stats``."""
    return {
        "job status": timed(lambda: job_status(ledger)),
        "job stats": timed(lambda: job_stats(ledger)),
    }


def twice_leased(claims: Sequence[Claim]) -> dict[str, list[Claim]]:
    """The jobs granted more than once, with every grant they got."""
    by_job: dict[str, list[Claim]] = {}
    for claim in claims:
        by_job.setdefault(claim.job_id, []).append(claim)
    return {job_id: grants for job_id, grants in by_job.items() if len(grants) > 1}


def describe(claims: Sequence[Claim]) -> str:
    """Lease latency p50/p99 and the spread of the work over the workers, for a printed line."""
    latencies = [claim.latency_s for claim in claims]
    owners = {claim.owner for claim in claims}
    return (
        f"{len(claims):,} leases by {len(owners)} workers: lease latency "
        f"p50 {quantile(latencies, 0.5) * 1e3:.2f} ms, p99 {quantile(latencies, 0.99) * 1e3:.2f} ms"
    )
