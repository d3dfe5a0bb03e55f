"""Prometheus metrics read from the ledger: ``docstokg job metrics`` and ``run --metrics-port``.

A collector asks the ledger at every scrape, so the numbers are the same ones
``docstokg job status|stats`` print, whichever process finished the jobs.
Values derived from rows that operators may reset (``job retry`` refills
attempts, ``job vacuum`` deletes ops) are exposed as counters because they
only grow between such repairs; a repair shows up as a counter reset.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
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
        failures = CounterMetricFamily(
            "docstokg_failures", "FAILED jobs by reason class.", labels=["reason"]
        )
        by_reason: dict[str, int] = {}
        for group in groups:
            reason = failure_reason(group.error)
            by_reason[reason] = by_reason.get(reason, 0) + group.count
        for reason, count in sorted(by_reason.items()):
            failures.add_metric([reason], count)
        yield failures
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


def registry_for(ledger: Ledger) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger))
    return registry


def exposition(ledger: Ledger) -> bytes:
    """The Prometheus text exposition of the ledger's metrics."""
    return generate_latest(registry_for(ledger))


@contextmanager
def serving(ledger: Ledger, port: int | None, *, address: str = "127.0.0.1") -> Iterator[None]:
    """Serve /metrics on ``address:port`` (a daemon thread) for the duration of the block.

    ``port`` None serves nothing.  Loopback by default: expose it further
    through whatever fronts the host, not by accident.
    """
    if port is None:
        yield
        return
    try:
        server, thread = start_http_server(port, addr=address, registry=registry_for(ledger))
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
