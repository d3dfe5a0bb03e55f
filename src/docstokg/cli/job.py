"""``docstokg job``: what is stuck, what failed, why, and the repairs.

Every command reads an existing ledger and never creates one: a missing file,
a database without ledger tables (the ledger was never enabled) or an older
schema stop with a message saying what to do, and exit code 1.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from docstokg.cli.output import JsonOption, folder_path, out, print_json
from docstokg.config import load_settings, resolve_db_url
from docstokg.errors import ConfigurationError
from docstokg.ledger import JobRecord, Ledger, OpRecord, migrate
from docstokg.redact import mask_url, mask_urls
from docstokg.services.operations import (
    job_cleanup,
    job_leases,
    job_stats,
    job_status,
    job_timeline,
    retry_jobs,
    vacuum_ops,
)
from docstokg.states import JobState

job_app = typer.Typer(
    help="Inspect and repair the jobs of a ledger: status, leases, stats, show, cleanup, "
    "retry, vacuum, metrics, verify.",
    no_args_is_help=True,
)

LedgerDb = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="DOCSTOKG_DB_URL",
        show_envvar=True,
        help="Ledger URL (default: db_url / db_path of the config, else OUT/manifest.sqlite3).",
    ),
]
OutDir = Annotated[
    Path | None,
    typer.Option(
        "--out",
        parser=folder_path,
        help="The run's output folder: its manifest.sqlite3 is the ledger.",
    ),
]
ManifestFilter = Annotated[
    str | None,
    typer.Option(
        "--manifest",
        metavar="NAME",
        help="Only the jobs of this manifest: its name in the ledger, the manifest file's name "
        "(papers.jsonl) unless the run gave --manifest-name.",
    ),
]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", help="YAML config (default ./config/idempotency.yaml).")
]

_DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[smhdw]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
# A cut-off further back than any ledger has lived is a typo; beyond it the
# database clock's arithmetic overflows.
MAX_DURATION_DAYS = 36_525  # 100 years
MAX_DURATION_S = MAX_DURATION_DAYS * 86_400.0


def parse_duration(text: str, option: str = "--older-than") -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``30d``, ``2w`` → seconds.

    More than 0 and at most 100 years: anything else is a usage error naming
    ``option`` and that range, caught before the ledger is opened (a huge value
    used to surface as an OverflowError).
    """
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ConfigurationError(
            f"{option} {text!r} is not a duration; write a number with an optional unit: "
            "90s, 15m, 12h, 30d or 2w"
        )
    seconds = float(match["number"]) * _UNIT_S[match["unit"]]
    if not 0 < seconds <= MAX_DURATION_S:
        raise ConfigurationError(
            f"{option} {text!r} is out of range; give more than 0 s and at most 100 years "
            f"({MAX_DURATION_DAYS}d), e.g. 30d"
        )
    return seconds


def _ledger_url(db: str | None, out_dir: Path | None, config: Path | None) -> str:
    settings = load_settings(config)
    named = db is not None or settings.config.db_url is not None
    if not named and settings.config.db_path is None and out_dir is None:
        raise ConfigurationError(
            "which ledger? pass --db URL (or set DOCSTOKG_DB_URL), or --out DIR of the "
            "run whose DIR/manifest.sqlite3 it is"
        )
    return resolve_db_url(db, settings, out_dir or Path("."))


@contextmanager
def _existing_ledger(db: str | None, out_dir: Path | None, config: Path | None) -> Iterator[Ledger]:
    """The ledger, if it exists and is current; never creates or upgrades anything."""
    url = _ledger_url(db, out_dir, config)
    migrate.require_current(url)
    with Ledger.connect(url) as ledger:
        yield ledger


@job_app.command("status")
def status(
    db: LedgerDb = None,
    out_dir: OutDir = None,
    config: ConfigFile = None,
    window_s: Annotated[
        float | None,
        typer.Option("--window-s", min=0.001, help="Only jobs created in the last N seconds."),
    ] = None,
    manifest: ManifestFilter = None,
    as_json: JsonOption = False,
) -> None:
    """Jobs by state, with totals.

    Example: docstokg job status --out store --window-s 3600 --manifest papers.jsonl
    """
    with _existing_ledger(db, out_dir, config) as ledger:
        report = job_status(ledger, window_s=window_s, manifest=manifest)
    if as_json:
        print_json(
            {
                "manifest": manifest,
                "window_s": report.window_s,
                "counts": _counts_json(report.counts),
                "failed_exhausted": report.exhausted,
                "failed_retrying": report.counts[JobState.FAILED] - report.exhausted,
                "total": report.total,
            }
        )
        return
    title = "Jobs by state" + (f" of {escape(manifest)}" if manifest else "")
    title += f" (created in the last {report.window_s:g} s)" if window_s else ""
    table = Table(title=title)
    table.add_column("state")
    table.add_column("jobs", justify="right")
    for state, count in report.counts.items():
        label = state.value
        if state is JobState.FAILED and count:
            label = (
                f"FAILED ({report.exhausted} out of attempts, {count - report.exhausted} retrying)"
            )
        table.add_row(label, f"{count:,}")
    table.add_row("[bold]total[/]", f"[bold]{report.total:,}[/]")
    out.print(table)


@job_app.command("leases")
def leases(
    db: LedgerDb = None,
    out_dir: OutDir = None,
    config: ConfigFile = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Leases listed.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """Live and expired leases: owner (host:pid:run:worker), job, state, seconds left.

    Seconds left is negative once a lease expired: its worker died or stalls,
    and any worker may take the job over (`docstokg job cleanup` clears it).
    """
    with _existing_ledger(db, out_dir, config) as ledger:
        report = job_leases(ledger, limit=limit)
    if as_json:
        print_json(
            {
                "total": report.total,
                "live": report.live,
                "expired": report.expired,
                "leases": [
                    {
                        "job_id": lease.job_id,
                        "owner": lease.owner,
                        "state": lease.state.value,
                        "seconds_left": round(lease.seconds_left, 3),
                        "epoch": lease.epoch,
                        "work_id": lease.work_id,
                        "artifact_id": lease.artifact_id,
                    }
                    for lease in report.leases
                ],
            }
        )
        return
    table = Table(title=f"Leases: {report.live} live, {report.expired} expired")
    for column in ("job_id", "owner", "state", "seconds left", "epoch", "work_id/artifact_id"):
        table.add_column(column, justify="right" if column in ("seconds left", "epoch") else "left")
    for lease in report.leases:
        left = f"{lease.seconds_left:.1f}"
        table.add_row(
            lease.job_id,
            escape(lease.owner or ""),
            lease.state.value,
            left if lease.seconds_left >= 0 else f"[red]{left}[/]",
            str(lease.epoch),
            escape(f"{lease.work_id}/{lease.artifact_id}"),
        )
    out.print(table)
    if report.total > len(report.leases):
        out.print(f"... and {report.total - len(report.leases):,} more (--limit).")


@job_app.command("stats")
def stats(
    db: LedgerDb = None,
    out_dir: OutDir = None,
    config: ConfigFile = None,
    window_s: Annotated[
        float, typer.Option("--window-s", min=0.001, help="Window for jobs finished per minute.")
    ] = 3600.0,
    manifest: ManifestFilter = None,
    as_json: JsonOption = False,
) -> None:
    """One summary: states, throughput, retries, top failure reasons, op durations, size.

    With --manifest, the jobs' figures (states, throughput, failures) are that
    manifest's; retries, op durations and the size are the whole ledger's.
    """
    with _existing_ledger(db, out_dir, config) as ledger:
        report = job_stats(ledger, window_s=window_s, manifest=manifest)
    if as_json:
        print_json(
            {
                "manifest": manifest,
                "window_s": report.window_s,
                "counts": _counts_json(report.counts),
                "failed_exhausted": report.exhausted,
                "finished_in_window": report.finished_in_window,
                "finished_per_minute": round(report.finished_per_minute, 3),
                "retried_jobs": report.retried_jobs,
                "retry_attempts": report.retry_attempts,
                "top_failures": [
                    {
                        "reason": f.reason,
                        "count": f.count,
                        "exhausted": f.exhausted,
                        "example": _masked(f.example),
                    }
                    for f in report.failures
                ],
                "op_durations": {
                    d.kind: {"count": d.count, "p50_s": d.p50_s, "p95_s": d.p95_s}
                    for d in report.durations
                },
                "abandoned_ops": report.abandoned_ops,
                "database_bytes": report.database_bytes,
            }
        )
        return
    title = "Ledger summary" + (f": jobs of {escape(manifest)}" if manifest else "")
    summary = Table(title=title, show_header=False)
    summary.add_column("", style="bold")
    summary.add_column("", justify="right")
    for state, count in report.counts.items():
        summary.add_row(state.value, f"{count:,}")
    summary.add_row("FAILED, out of attempts", f"{report.exhausted:,}")
    summary.add_row(
        f"finished in the last {report.window_s:g} s",
        f"{report.finished_in_window:,} ({report.finished_per_minute:,.1f}/min)",
    )
    summary.add_row(
        "jobs retried / extra step runs", f"{report.retried_jobs:,} / {report.retry_attempts:,}"
    )
    summary.add_row("abandoned ops", f"{report.abandoned_ops:,}")
    summary.add_row("database size", f"{report.database_bytes:,} bytes")
    out.print(summary)
    if report.failures:
        failures = Table(title="Top failure reasons")
        for column in ("reason", "jobs", "out of attempts", "example"):
            failures.add_column(column, overflow="fold")
        for f in report.failures:
            failures.add_row(
                f.reason, f"{f.count:,}", f"{f.exhausted:,}", escape(_masked(f.example) or "")
            )
        out.print(failures)
    if report.durations:
        durations = Table(title="Op durations")
        for column in ("kind", "runs", "p50", "p95"):
            durations.add_column(column, justify="left" if column == "kind" else "right")
        for d in report.durations:
            durations.add_row(d.kind, f"{d.count:,}", f"{d.p50_s:.3f} s", f"{d.p95_s:.3f} s")
        out.print(durations)


def _counts_json(counts: dict[JobState, int]) -> dict[str, int]:
    return {state.value: count for state, count in counts.items()}


def _masked(text: str | None) -> str | None:
    """Text from the ledger (errors, op results) with the URLs it quotes masked.

    The ledger keeps the URLs it fetches, credentials included; what is printed
    from it never shows them (a password as ``***``, token-like query values too).
    """
    return None if text is None else mask_urls(text)


def _job_json(job: JobRecord) -> dict[str, object]:
    return {
        "job_id": job.job_id,
        "work_id": job.work_id,
        "artifact_id": job.artifact_id,
        "url": mask_url(job.canonical_url),
        "state": job.state.value,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "lease_owner": job.lease_owner,
        "lease_until": job.lease_until,
        "lease_epoch": job.lease_epoch,
        "next_attempt_at": job.next_attempt_at,
        "last_error": _masked(job.last_error),
        "sha256": job.sha256,
        "size_bytes": job.size_bytes,
        "final_path": job.final_path,
        "content_type": job.content_type,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
    }


def _op_json(op: OpRecord) -> dict[str, object]:
    return {
        "kind": op.op_type,
        "op_key": op.op_key,
        "status": op.status,
        "attempt": op.attempt,
        "epoch": op.lease_epoch,
        "started_at": op.started_at,
        "finished_at": op.finished_at,
        "duration_s": op.duration_s,
        "result": _masked(op.result_json),
        "error": _masked(op.error),
    }


def _when(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


@job_app.command("show")
def show(
    job_id: Annotated[str, typer.Argument(help="The job's id (see `job leases`, `run --json`).")],
    db: LedgerDb = None,
    out_dir: OutDir = None,
    config: ConfigFile = None,
    as_json: JsonOption = False,
) -> None:
    """The job and its ops as a timeline: kind, status, attempt, epoch, start, duration, result."""
    with _existing_ledger(db, out_dir, config) as ledger:
        timeline = job_timeline(ledger, job_id)
    job, ops = timeline.job, timeline.ops
    if as_json:
        print_json(
            {
                "job": _job_json(job),
                "manifests": timeline.manifests,
                "ops": [_op_json(op) for op in ops],
            }
        )
        return
    head = Table(title=f"Job {job.job_id}", show_header=False)
    head.add_column("", style="bold")
    head.add_column("")
    for name, value in (
        ("work_id / artifact_id", f"{job.work_id} / {job.artifact_id}"),
        ("url", mask_url(job.canonical_url)),
        ("manifests", ", ".join(timeline.manifests) or "(none)"),
        ("state", job.state.value),
        ("attempts", f"{job.attempts} of {job.max_attempts}"),
        ("lease", f"{job.lease_owner} until {_when(job.lease_until)} (epoch {job.lease_epoch})"
         if job.lease_owner else f"none (epoch {job.lease_epoch})"),
        ("next attempt", _when(job.next_attempt_at)),
        ("last error", _masked(job.last_error) or ""),
        ("file", f"{job.final_path} ({job.size_bytes or 0:,} bytes, {job.content_type})"
         if job.final_path else "(none yet)"),
        ("sha256", job.sha256 or ""),
    ):  # fmt: skip
        head.add_row(name, escape(str(value)))
    out.print(head)
    steps = Table(title="Ops")
    for column in ("kind", "status", "attempt", "epoch", "started", "duration", "result or error"):
        steps.add_column(column, overflow="fold")
    for op in ops:
        duration = "" if op.duration_s is None else f"{op.duration_s:.3f} s"
        detail = op.error if op.error else (op.result_json or "")
        steps.add_row(
            op.op_type, op.status, str(op.attempt), str(op.lease_epoch), _when(op.started_at),
            duration, escape(mask_urls(detail)),
        )  # fmt: skip
    out.print(steps)


@job_app.command("cleanup")
def cleanup(
    db: LedgerDb = None,
    out_dir: OutDir = None,
    config: ConfigFile = None,
    staging: Annotated[
        Path | None,
        typer.Option(
            "--staging",
            parser=folder_path,
            help="Also delete stale .part files here (e.g. OUT/.staging).",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, change nothing.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Clear expired leases, mark abandoned ops, delete stale .part files; say how many.

    Final paths are checked under --out when given, else under the staging
    folder's parent (pass OUT/.staging). A .part is stale when it is older
    than stale_file_age_s and no live lease
    owns its job; ops are abandoned when IN_PROGRESS for longer than the lease
    TTL under a holder that lost its lease. Safe while workers run.
    """
    settings = load_settings(config)
    with _existing_ledger(db, out_dir, config) as ledger:
        report = job_cleanup(
            ledger,
            dry_run=dry_run,
            staging=staging,
            artifacts_root=out_dir,
            stale_file_age_s=settings.config.stale_file_age_s,
            abandoned_threshold_s=settings.config.lease_ttl_s,
        )
    if as_json:
        print_json(
            {
                "dry_run": report.dry_run,
                "expired_leases": report.expired_leases,
                "abandoned_ops": report.stale_ops,
                "stale_parts": [str(path) for path in report.stale_parts],
                "jobs_requeued": report.jobs_requeued,
            }
        )
        return
    verb = "would" if dry_run else "did"
    out.print(
        f"cleanup ({'dry run' if dry_run else 'done'}): {verb} clear "
        f"{report.expired_leases:,} expired leases, {verb} mark {report.stale_ops:,} ops "
        f"abandoned, {verb} delete {len(report.stale_parts):,} stale .part files"
        + ("" if staging else " (pass --staging DIR to look for them)")
        + f", {verb} requeue {len(report.jobs_requeued):,} jobs whose file is missing."
    )


@job_app.command("retry")
def retry(
    job_ids: Annotated[
        list[str] | None, typer.Argument(help="Jobs to retry (or --failed for all).")
    ] = None,
    failed: Annotated[
        bool, typer.Option("--failed", help="Every FAILED job that has no attempt left.")
    ] = False,
    db: LedgerDb = None,
    out_dir: OutDir = None,
    config: ConfigFile = None,
    as_json: JsonOption = False,
) -> None:
    """Give exhausted FAILED jobs a fresh attempt budget; the next run fetches them.

    Example: docstokg job retry --failed --out store, then run the manifest again.
    """
    if failed == bool(job_ids):
        raise ConfigurationError(
            "name the jobs to retry, or pass --failed for all of them (not both)"
        )
    with _existing_ledger(db, out_dir, config) as ledger:
        report = retry_jobs(ledger, None if failed else job_ids)
    if as_json:
        print_json({"retried": report.refilled, "skipped": report.skipped})
    else:
        out.print(f"{len(report.refilled):,} jobs have a fresh attempt budget.")
        for job_id, why in report.skipped.items():
            out.print(f"[yellow]skipped[/] {escape(job_id)}: {escape(why)}")
    if report.skipped:
        raise typer.Exit(1)


@job_app.command("vacuum")
def vacuum(
    older_than: Annotated[
        str, typer.Option("--older-than", help="e.g. 30d, 12h: ops of jobs ended before then.")
    ],
    db: LedgerDb = None,
    out_dir: OutDir = None,
    config: ConfigFile = None,
    as_json: JsonOption = False,
) -> None:
    """Delete the op rows of jobs that ended before the cut-off, then compact the database.

    Jobs are kept (state, result, last error); their step history goes.
    Compacting takes the write lock while it runs: do it between runs.
    """
    seconds = parse_duration(older_than)
    with _existing_ledger(db, out_dir, config) as ledger:
        report = vacuum_ops(ledger, older_than_s=seconds)
    if as_json:
        print_json(
            {
                "cutoff": report.cutoff,
                "ops_deleted": report.ops_deleted,
                "bytes_before": report.bytes_before,
                "bytes_after": report.bytes_after,
                "bytes_reclaimed": report.bytes_reclaimed,
            }
        )
        return
    out.print(
        f"Deleted {report.ops_deleted:,} op rows of jobs ended before {_when(report.cutoff)}; "
        f"reclaimed {report.bytes_reclaimed:,} bytes ({report.bytes_before:,} → "
        f"{report.bytes_after:,})."
    )


@job_app.command("metrics")
def metrics(
    db: LedgerDb = None,
    out_dir: OutDir = None,
    config: ConfigFile = None,
) -> None:
    """Print the Prometheus text exposition (the same as `run --metrics-port` serves)."""
    from docstokg.metrics import exposition  # prometheus_client, only for this command

    with _existing_ledger(db, out_dir, config) as ledger:
        text = exposition(ledger)
    typer.echo(text.decode("utf-8"), nl=False)
