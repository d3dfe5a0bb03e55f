"""Prometheus metrics: ``docstokg job metrics`` and ``docstokg run --metrics-port``.

:class:`LedgerCollector` asks the ledger at every scrape, so its numbers are
the ones ``docstokg job status|stats`` print, whichever process finished the
jobs.  Its two counters are derived from op rows and only grow (``job vacuum``,
which deletes ops, shows up as a counter reset).  A running ``docstokg run``
adds :class:`RunCounters`: the failures its own workers met, by reason — a
true counter, which the ledger cannot give (it keeps each job's last error,
not every error).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from docstokg.errors import ConfigurationError
from docstokg.ledger import Ledger
from docstokg.services.operations import failure_reason

# Seconds: HEAD and the ledger-only steps take milliseconds, STREAM up to minutes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class LedgerCollector(Collector):
    """Jobs by state, live leases, op durations by kind, retries and failures by reason."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def collect(self) -> Iterator[Metric]:
        with self._ledger.unit_of_work(read_only=True) as uow:
            reports = uow.reports
            counts = reports.state_counts()
            exhausted = reports.exhausted_count()
            live = reports.live_lease_count(now=uow.now())
            _, retry_attempts = reports.retries()
            groups = reports.failure_groups()
            step_failures = reports.step_failures()
            histogram = reports.duration_histogram(DURATION_BUCKETS)
            abandoned = reports.abandoned_ops()

        jobs = GaugeMetricFamily("docstokg_jobs", "Jobs in the ledger by state.", labels=["state"])
        for state, count in counts.items():
            jobs.add_metric([state.value], count)
        yield jobs
        yield GaugeMetricFamily(
            "docstokg_jobs_exhausted", "FAILED jobs with no attempt left.", value=exhausted
        )
        yield GaugeMetricFamily(
            "docstokg_live_leases", "Jobs held by a worker right now.", value=live
        )
        yield GaugeMetricFamily(
            "docstokg_abandoned_ops", "Ops given up on (their holder died).", value=abandoned
        )
        yield CounterMetricFamily(
            "docstokg_retries",
            "Extra runs of job steps: retries after failures, takeovers after crashes.",
            value=retry_attempts,
        )
        steps = CounterMetricFamily(
            "docstokg_step_failures", "Runs of a step that did not succeed.", labels=["kind"]
        )
        for kind, count in sorted(step_failures.items()):
            steps.add_metric([kind], count)
        yield steps
        failed = GaugeMetricFamily(
            "docstokg_failed_jobs", "Jobs FAILED now, by reason class.", labels=["reason"]
        )
        by_reason: dict[str, int] = {}
        for group in groups:
            reason = failure_reason(group.error)
            by_reason[reason] = by_reason.get(reason, 0) + group.count
        for reason, count in sorted(by_reason.items()):
            failed.add_metric([reason], count)
        yield failed
        durations = HistogramMetricFamily(
            "docstokg_op_duration_seconds",
            "How long each op kind's last run took.",
            labels=["kind"],
        )
        for kind, (cumulative, count, total) in sorted(histogram.items()):
            buckets: list[tuple[str, Any]] = [
                (_bound(bound), value)
                for bound, value in zip(DURATION_BUCKETS, cumulative, strict=True)
            ]
            buckets.append(("+Inf", count))
            durations.add_metric([kind], buckets, sum_value=total)
        yield durations


def _bound(bound: float) -> str:
    return repr(float(bound))


class RunCounters:
    """What one ``docstokg run`` process met: failed attempts by reason class."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.failures = Counter(
            "docstokg_failures",
            "Failed download attempts met by this run, by reason class.",
            ["reason"],
            registry=self.registry,
        )

    def failed(self, error: str | None) -> None:
        self.failures.labels(reason=failure_reason(error)).inc()


def registry_for(ledger: Ledger, counters: RunCounters | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger))
    if counters is not None:
        registry.register(_Forward(counters.registry))
    return registry


class _Forward(Collector):
    """The metrics of another registry, collected into this one."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        yield from self._source.collect()


def exposition(ledger: Ledger) -> bytes:
    """The Prometheus text exposition of the ledger's metrics."""
    return generate_latest(registry_for(ledger))


@contextmanager
def serving(
    ledger: Ledger,
    port: int | None,
    *,
    counters: RunCounters | None = None,
    address: str = "127.0.0.1",
) -> Iterator[None]:
    """Serve /metrics on ``address:port`` (a daemon thread) for the duration of the block.

    ``port`` None serves nothing.  Loopback by default: expose it further
    through whatever fronts the host, not by accident.
    """
    if port is None:
        yield
        return
    try:
        server, thread = start_http_server(
            port, addr=address, registry=registry_for(ledger, counters)
        )
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {address}:{port}: {exc.strerror or exc}; pick a free "
            "--metrics-port"
        ) from exc
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
