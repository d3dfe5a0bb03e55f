"""``docstokg job verify``: re-hash the store against the ledger.

A run checks that each ended job's file exists with its recorded size (a
``stat``); only a re-hash proves the bytes.  This command reads every stored
file, compares its SHA-256 with the ledger's, reports missing and corrupt
files by job, and with ``--repair`` requeues those jobs so the next run
fetches them again.  Exit 0: every file is right; 1: some file is not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from docstokg.cli.job import ConfigFile, LedgerDb
from docstokg.cli.job import _existing_ledger as existing_ledger
from docstokg.cli.output import JsonOption, err, folder_path, out, print_json
from docstokg.download import ArtifactStore
from docstokg.services.stores import VerifyReport, bind_store, verify_store


def verify(
    out_dir: Annotated[
        Path,
        typer.Option("--out", parser=folder_path, help="The store to verify (a run's --out)."),
    ],
    db: LedgerDb = None,
    config: ConfigFile = None,
    repair: Annotated[
        bool,
        typer.Option("--repair", help="Requeue the jobs of missing or corrupt files."),
    ] = False,
    jobs: Annotated[
        int,
        typer.Option("--jobs", min=1, max=64, help="Files hashed at once."),
    ] = 4,
    as_json: JsonOption = False,
) -> None:
    """Re-hash every stored artifact against the ledger; exit 1 if any is missing or corrupt.

    With --repair the jobs of bad files are requeued: the next `docstokg run`
    of their manifest fetches them again.

    Example: docstokg job verify --out store --jobs 8 --repair
    """
    with existing_ledger(db, out_dir, config) as ledger:
        bind_store(ledger, out_dir, create=False)
        store = ArtifactStore(out_dir)
        with _progress(enabled=not as_json and err.is_terminal) as progress:
            task = progress.add_task("verifying", total=None)
            report = verify_store(
                ledger,
                store,
                jobs=jobs,
                repair=repair,
                on_total=lambda total: progress.update(task, total=total),
                on_file=lambda _size: progress.advance(task),
            )
    if as_json:
        print_json(_report_json(report))
    else:
        _print_report(report, out_dir)
    if report.bad:
        raise typer.Exit(1)


def _shown(text: str) -> str:
    """Ledger text as one printable line: a hand-edited row must not reach the terminal raw."""
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return escape(text)


def _progress(*, enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} files"),
        TimeRemainingColumn(),
        console=err,
        disable=not enabled,
        transient=True,
    )


def _report_json(report: VerifyReport) -> dict[str, object]:
    return {
        "checked": report.checked,
        "ok": report.checked - len(report.bad),
        "bad": [
            {
                "job_id": bad.job_id,
                "state": bad.state,
                "final_path": bad.final_path,
                "problem": bad.problem,
                "requeued": bad.job_id in report.requeued,
            }
            for bad in report.bad
        ],
        "requeued": report.requeued,
    }


def _print_report(report: VerifyReport, out_dir: Path) -> None:
    if not report.bad:
        out.print(f"{report.checked:,} stored files checked in {out_dir}: all match the ledger")
        return
    table = Table(title=f"Stored files that do not match the ledger ({out_dir})")
    for column in ("job", "state", "file", "problem", "requeued"):
        table.add_column(column)
    for bad in report.bad:
        requeued = "yes" if bad.job_id in report.requeued else "no"
        table.add_row(bad.job_id, bad.state, _shown(bad.final_path), _shown(bad.problem), requeued)
    out.print(table)
    advice = (
        "the requeued jobs are fetched again by the next `docstokg run` of their manifest"
        if report.requeued
        else "rerun with --repair to requeue them"
    )
    out.print(
        f"{len(report.bad):,} of {report.checked:,} stored files are missing or corrupt; {advice}"
    )
