"""``docstokg run``: download every artifact of a manifest."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from docstokg.cli.output import (
    JsonOption,
    configure_logging,
    err,
    folder_path,
    out,
    print_json,
)
from docstokg.config import load_settings, resolve_db_url
from docstokg.errors import (
    ConfigurationError,
    ConstraintViolated,
    DatabaseOutage,
    LedgerError,
    TransientDatabaseError,
)
from docstokg.manifest import Manifest, read_manifest
from docstokg.redact import mask_url, mask_urls

if TYPE_CHECKING:
    from docstokg.run.runner import RunSummary

# Jobs listed one by one in the summary; beyond this only the failed ones are.
JOB_TABLE_ROWS = 50
PROBLEMS_SHOWN = 20
# Threads per process: a worker waiting on the network costs a thread's stack and
# a socket, not a ledger connection; bench/bench_fleet.py measured 1,000 at a time.
MAX_WORKERS = 1000


def run(
    manifest: Annotated[
        Path,
        typer.Argument(
            help="JSON Lines (one {work_id, artifact_id, url} object per line) or CSV with "
            "those three header columns.",
            show_default=False,
        ),
    ],
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out",
            parser=folder_path,
            help="Output folder: artifacts/ holds the files (named by SHA-256), .staging/ the "
            "downloads in progress, manifest.sqlite3 the default ledger.",
            show_default=False,
        ),
    ],
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            envvar="DOCSTOKG_DB_URL",
            show_envvar=True,
            help="Ledger database URL (default: sqlite:///OUT/manifest.sqlite3, or db_url / "
            "db_path from the config). Use postgresql+psycopg://USER@HOST/DB for several machines.",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=MAX_WORKERS,
            help="Download threads in this process (1 to 1000). They share pool_size ledger "
            "connections (default min(workers, 8)), each holding one only to record a step, "
            "never while it downloads.",
        ),
    ] = 4,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="YAML file with an idempotency: section (default: ./config/idempotency.yaml "
            "if it exists). See `docstokg config show`.",
        ),
    ] = None,
    idempotency: Annotated[
        bool | None,
        typer.Option(
            "--idempotency/--no-idempotency",
            help="Turn the job ledger on or off; beats DOCSTOKG_ENABLE_IDEMPOTENCY and the "
            "config file. Off by default.",
            show_default=False,
        ),
    ] = None,
    manifest_name: Annotated[
        str | None,
        typer.Option(
            "--manifest-name",
            metavar="NAME",
            help="The manifest's name in the ledger, for `docstokg job status|stats --manifest "
            "NAME` (default: the manifest file's name). A run only ever claims its own rows.",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=1,
            max=65535,
            help="Serve Prometheus metrics at http://127.0.0.1:PORT/metrics while running "
            "(ledger on only).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Download every artifact of MANIFEST into --out, each exactly once.

    With the ledger on, every job and each of its steps (HEAD, STREAM, FINALIZE,
    INDEX, DEDUPE) is recorded: a crash or Ctrl-C loses nothing, a second run
    fetches nothing already stored, and several runs (processes or machines)
    on the same manifest, --out and --db share the work. With it off, files
    land in the same layout but nothing is remembered: a second run downloads
    everything again.

    Malformed rows are reported with their line numbers and skipped. Exit code:
    0 every valid row stored (or a duplicate of stored content), 1 some failed,
    2 usage or configuration error or a ledger no run can use (read-only, another
    schema), 130 stopped by a signal with work left; 1 too when the ledger database
    stayed down past db_outage_s.

    Examples:

      docstokg run papers.jsonl --out store --idempotency --workers 8

      DOCSTOKG_ENABLE_IDEMPOTENCY=true docstokg run papers.csv --out store \\
        --db postgresql+psycopg://ledger@db-host/docstokg
    """
    # Imported here, not at the top: `docstokg job ...` should not pay for httpx.
    from docstokg.run.bootstrap import build_run
    from docstokg.run.reporting import LogReporter, RichReporter, RunReporter
    from docstokg.run.runner import RunSettings
    from docstokg.services.planning import check_manifest_name

    settings = load_settings(config, enabled_flag=idempotency)
    parsed = read_manifest(manifest)
    _report_problems(parsed)
    if not parsed.rows:
        raise ConfigurationError(
            f"{manifest} has no valid row ({len(parsed.problems)} malformed); fix the rows "
            "listed above: each needs work_id, artifact_id and an http(s) url"
        )
    enabled = settings.config.enabled
    if metrics_port is not None and not enabled:
        raise ConfigurationError(
            f"--metrics-port {metrics_port} needs the ledger (the metrics are read from it); "
            "add --idempotency"
        )
    if manifest_name is not None:
        check_manifest_name(manifest_name)  # before anything is written
    run_settings = RunSettings(
        out_dir=out_dir,
        config=settings.config,
        workers=workers,
        db_url=resolve_db_url(db, settings, out_dir) if enabled else None,
        metrics_port=metrics_port,
        manifest_name=manifest_name,
    )
    _prepare_out_dir(out_dir)
    configure_logging()
    reporter: RunReporter = RichReporter(err) if err.is_terminal else LogReporter()
    download = build_run(parsed, run_settings, reporter=reporter)
    with stop_on_signals(download.request_stop):
        try:
            summary = download.run()
        except LedgerError as exc:
            raise _refused_at_start(exc) from exc
    if as_json:
        print_json(summary.to_json())
    else:
        print_summary(summary)
    if summary.ledger_error is not None:  # one line an operator can act on, after the summary
        err.print(f"[bold red]error:[/] {escape(mask_urls(summary.ledger_error))}")
    raise typer.Exit(summary.exit_code)


def _refused_at_start(exc: LedgerError) -> Exception:
    """A ledger the run cannot use at all is a usage error (exit 2), like a bad option.

    Read-only, not a ledger, a schema from another docstokg, tables gone: no
    run can work until someone fixes it.  A database that does not answer
    (exit 1) may answer a moment later.  Mid-run faults never get here: the
    run ends with its summary.
    """
    if isinstance(exc, TransientDatabaseError | DatabaseOutage | ConstraintViolated):
        return exc
    return ConfigurationError(str(exc))


def _prepare_out_dir(out_dir: Path) -> None:
    """Create --out and its folders now: a path that cannot hold them is a usage error (exit 2)."""
    from docstokg.download import ArtifactStore

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        ArtifactStore(out_dir).prepare()
    except OSError as exc:
        where = exc.filename or out_dir
        if isinstance(exc, FileExistsError):
            reason = f"{where} is a file, not a folder"
        else:
            reason = f"{where}: {exc.strerror or type(exc).__name__}"
        raise ConfigurationError(
            f"--out {out_dir} cannot be the output folder ({reason}); give a folder that "
            "exists or can be created, and that you can write to"
        ) from exc


def _report_problems(manifest: Manifest) -> None:
    for problem in manifest.problems[:PROBLEMS_SHOWN]:
        err.print(
            f"[yellow]skipped[/] {escape(str(manifest.path))}:{problem.line}: "
            f"{escape(problem.reason)}",
            highlight=False,
        )
    hidden = len(manifest.problems) - PROBLEMS_SHOWN
    if hidden > 0:
        err.print(f"[yellow]skipped[/] {hidden} more malformed rows", highlight=False)


@contextmanager
def stop_on_signals(request_stop: Callable[[], None]) -> Iterator[None]:
    """SIGINT/SIGTERM ask the run to stop cleanly; a second SIGINT stops at once.

    At once means the process exits on the spot, as if it had crashed: that is
    what the ledger is built for (leases expire, ``.part`` files stay, and the
    next run replays what was recorded), whereas waiting for the workers could
    take as long as a stalled read's timeout.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return
    stopping = False

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        name = signal.Signals(signum).name
        if stopping and signum == signal.SIGINT:
            err.print(
                "[bold]SIGINT[/] again: stopping at once, without a summary; .part files "
                "stay, and leases still held expire before another run takes their jobs",
                highlight=False,
            )
            err.show_cursor(True)  # a progress bar hides it until it stops, which it will not
            err.line()
            sys.stderr.flush()
            os._exit(130)
        stopping = True
        err.print(
            f"[bold]{name}[/]: stopping — no new jobs; downloads keep their .part files "
            "and their jobs are handed back (send SIGINT again to stop at once)",
            highlight=False,
        )
        request_stop()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def print_summary(summary: RunSummary) -> None:
    counts = summary.counts
    table = Table(title="Run summary", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    ledger = f"on ({escape(mask_url(summary.db_url or ''))})" if summary.ledger else "off"
    table.add_row("ledger", ledger)
    table.add_row("jobs", f"{len(summary.jobs):,}")
    table.add_row("stored", f"{counts['stored']:,}")
    table.add_row("duplicates of stored content", f"{counts['duplicates']:,}")
    table.add_row("failed", f"{counts['failed']:,}")
    table.add_row("unfinished", f"{counts['unfinished']:,}")
    table.add_row("malformed rows skipped", f"{len(summary.skipped_rows):,}")
    if summary.lost_jobs:
        table.add_row("lost to another worker by this run", f"{summary.lost_jobs:,}")
    table.add_row("bytes fetched by this run", f"{summary.bytes_fetched:,}")
    table.add_row("elapsed", f"{summary.elapsed_s:.1f} s")
    out.print(table)
    listed = summary.jobs
    title = "Jobs"
    if len(listed) > JOB_TABLE_ROWS:
        listed = [job for job in summary.jobs if job.state != "DEDUPED"][:JOB_TABLE_ROWS]
        title = f"Jobs not simply stored (first {JOB_TABLE_ROWS}; --json lists all)"
    if not listed:
        return
    jobs = Table(title=title)
    jobs.add_column("work_id")
    jobs.add_column("artifact_id")
    jobs.add_column("state", no_wrap=True)
    jobs.add_column("bytes", justify="right", no_wrap=True)
    jobs.add_column("sha256", no_wrap=True)
    jobs.add_column("file or error", overflow="fold")
    for job in listed:
        size = "" if job.size_bytes is None else f"{job.size_bytes:,}"
        detail = job.error if job.error else (job.final_path or "")
        jobs.add_row(
            escape(job.work_id),
            escape(job.artifact_id),
            job.label,
            size,
            (job.sha256 or "")[:12],
            escape(mask_urls(detail)),
        )
    out.print(jobs)
