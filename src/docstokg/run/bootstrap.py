"""Build a run's collaborators from its settings: the one place that wires the layers together.

:class:`~docstokg.run.runner.DownloadRun` receives what it works with (a
ledger factory, a fetcher factory, a store, a reporter, the step table)
instead of building them, so a test or a library user can hand it a store,
a fetcher, a clock or a ledger of their own.  The factories are opened by
the run and closed when it ends: an HTTP client's connections and a ledger's
engine live exactly as long as the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from docstokg.download import (
    ArtifactStore,
    DownloadLimits,
    Fetcher,
    HostGate,
    HostRules,
    make_client,
    open_cooldown_store,
)
from docstokg.ledger import Ledger
from docstokg.ledger.engine import DEFAULT_POOL_SIZE
from docstokg.ledger.host_limits import ledger_cooldown_store
from docstokg.manifest import Manifest
from docstokg.run.collaborators import Collaborators
from docstokg.run.reporting import NullReporter, RunReporter
from docstokg.run.runner import DownloadRun, RunSettings


def collaborators(
    settings: RunSettings,
    *,
    reporter: RunReporter | None = None,
    clock: Callable[[], float] | None = None,
) -> Collaborators:
    """The production wiring of ``settings``: httpx fetcher, store under ``out_dir``, the ledger."""
    store = ArtifactStore(settings.out_dir)
    limits = settings.limits
    return Collaborators(
        store=store,
        open_fetcher=lambda: http_fetcher(
            store, limits, connections=settings.workers, politeness=host_gate(settings)
        ),
        open_ledger=ledger_opener(settings, clock=clock) if settings.config.enabled else None,
        reporter=reporter or NullReporter(),
    )


def build_run(
    manifest: Manifest,
    settings: RunSettings,
    *,
    reporter: RunReporter | None = None,
    clock: Callable[[], float] | None = None,
) -> DownloadRun:
    """A run of ``manifest`` wired for production (see :func:`collaborators`)."""
    return DownloadRun(manifest, settings, collaborators(settings, reporter=reporter, clock=clock))


@contextmanager
def http_fetcher(
    store: ArtifactStore,
    limits: DownloadLimits,
    *,
    connections: int,
    politeness: HostGate | None = None,
) -> Iterator[Fetcher]:
    """A fetcher over one HTTP client with a connection per worker, closed after.

    ``politeness`` gates every request by its host (None: ungated); it is closed with the client.
    """
    client = make_client(limits, max_connections=connections)
    try:
        yield Fetcher(client, store, limits, politeness=politeness)
    finally:
        client.close()
        if politeness is not None:
            politeness.close()


def host_gate(settings: RunSettings) -> HostGate:
    """The fleet's host politeness: in Redis if ``redis_url`` is set, else in a PostgreSQL
    ledger if ``politeness_in_ledger``, else in this process."""
    config = settings.config
    in_ledger = config.enabled and config.politeness_in_ledger and settings.db_url is not None
    shared = ledger_cooldown_store(settings.db_url) if in_ledger and settings.db_url else None
    rules = HostRules(
        max_concurrent=config.host_max_concurrent,
        max_per_s=config.host_max_per_s,
        max_cooldown_s=config.backoff_max_s,
        error_cooldown_s=config.host_error_cooldown_s,
    )
    return HostGate(open_cooldown_store(redis_url=config.redis_url, shared=shared), rules)


def ledger_opener(
    settings: RunSettings, *, clock: Callable[[], float] | None = None
) -> Callable[[], AbstractContextManager[Ledger]]:
    """Opens the ledger at ``settings.db_url``, waiting out outages up to ``db_outage_s``.

    Its pool holds :func:`ledger_pool_size` connections, shared by the
    workers, the lease keeper and the reconciler of the run.
    """
    db_url = settings.db_url
    if db_url is None:
        raise ValueError("RunSettings.db_url is required when the ledger is enabled")
    outage_s = settings.config.db_outage_s
    pool_size = ledger_pool_size(settings)
    return lambda: Ledger.connect(db_url, clock=clock, outage_s=outage_s, pool_size=pool_size)


def ledger_pool_size(settings: RunSettings) -> int:
    """``pool_size`` from the config, else min(workers, 8).

    A worker holds a connection only inside a unit of work (milliseconds of
    statements between downloads of seconds), so a few connections keep up
    with many workers; more would only crowd PostgreSQL's ``max_connections``
    when a fleet of processes shares it.
    """
    configured = settings.config.pool_size
    return configured if configured is not None else min(settings.workers, DEFAULT_POOL_SIZE)
