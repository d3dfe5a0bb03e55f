"""The demo: the whole product in a few seconds, on a loopback server and a SQLite ledger."""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from docstokg.cli.output import configure_logging, out
from docstokg.cli.run import print_summary, stop_on_signals
from docstokg.config import IdempotencyConfig
from docstokg.download import ArtifactStore
from docstokg.errors import ConfigurationError
from docstokg.keys import job_id_for, job_key
from docstokg.manifest import Manifest, read_manifest
from docstokg.run.bootstrap import build_run
from docstokg.run.reporting import LogReporter
from docstokg.run.runner import RunSettings, RunSummary
from docstokg.testing.server import Artifact, ArtifactServer, Fault, PathStats, generated_body

LARGE = "/large/dataset.bin"
GONE = "/gone/7.pdf"  # answers 404: the one job expected to fail
LARGE_BYTES = 8 * 1024 * 1024
PAUSE_AT = 3 * 1024 * 1024
KiB = 1024
# Written into every folder the demo creates: only such a folder is ever emptied.
MARKER = ".docstokg-demo"
MARKER_TEXT = "Made by `docstokg demo`, which empties this folder whenever it runs here.\n"


def _serve_artifacts(server: ArtifactServer) -> list[dict[str, str]]:
    """Add the demo's artifacts; returns the manifest rows (one of them malformed)."""
    rows = []
    for number in range(1, 6):
        url = server.add(
            f"/papers/{number}.pdf", Artifact(generated_body(f"paper{number}", 96 * KiB))
        )
        rows.append({"work_id": f"W{number}", "artifact_id": "pdf", "url": url})
    # The same bytes as paper 2, published again under another URL.
    mirror = server.add("/mirror/2.pdf", Artifact(generated_body("paper2", 96 * KiB)))
    rows.append({"work_id": "W2", "artifact_id": "mirror-pdf", "url": mirror})
    flaky = server.add(
        "/flaky/6.pdf",
        Artifact(
            generated_body("paper6", 64 * KiB),
            faults=[Fault(503, {"Retry-After": "1"})],
        ),
    )
    rows.append({"work_id": "W6", "artifact_id": "pdf", "url": flaky})
    gone = server.add(GONE, Artifact(b"", status=404))
    rows.append({"work_id": "W7", "artifact_id": "pdf", "url": gone})
    large = server.add(
        LARGE, Artifact(generated_body("dataset", LARGE_BYTES), pause_after=PAUSE_AT)
    )
    rows.append({"work_id": "W8", "artifact_id": "dataset", "url": large})
    rows.append({"work_id": "W9", "artifact_id": "pdf", "url": "ftp://example.org/9.pdf"})
    return rows


def run_demo(directory: Path, workers: int) -> int:
    """The demo `docstokg demo` describes; returns its exit code (0 when it went as planned)."""
    prepare_demo_dir(directory)
    configure_logging()
    config = IdempotencyConfig(
        enabled=True, lease_ttl_s=30, stale_file_age_s=3600, backoff_base_s=0.5, max_attempts=3
    )
    with ArtifactServer() as server:
        manifest_path = directory / "manifest.jsonl"
        lines = [json.dumps(row) for row in _serve_artifacts(server)]
        manifest_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        manifest = read_manifest(manifest_path)
        settings = RunSettings(
            out_dir=directory,
            config=config,
            workers=workers,
            db_url=f"sqlite:///{(directory / 'manifest.sqlite3').resolve()}",
        )
        out.rule("[bold]Run 1[/]: the ledger on; interrupted mid-download")
        out.print(
            f"Serving {len(lines) - 1} artifacts on {server.base_url}; manifest {manifest_path}"
        )
        for problem in manifest.problems:
            out.print(f"[yellow]skipped[/] line {problem.line}: {escape(problem.reason)}")
        first = _interrupted_run(manifest, settings, server)
        _print_states("After run 1", first)
        before = server.total()

        out.rule("[bold]Run 2[/]: the same command again")
        second_run = build_run(manifest, settings, reporter=LogReporter())
        with stop_on_signals(second_run.request_stop):
            second = second_run.run()
        _explain_second_run(server, before)
        out.rule("[bold]Result[/]")
        print_summary(second)
        out.print(
            f"Artifacts are in {escape(str(directory / 'artifacts'))}, named by SHA-256; the "
            f"ledger is {escape(str(directory / 'manifest.sqlite3'))}."
        )
        out.print("Inspect it: docstokg db current --db " + escape(str(settings.db_url)))
    # The 404 is part of the show; any other failure, or a job left over, is not.
    failed = {job.url for job in second.jobs if job.state == "FAILED"}
    if second.counts["unfinished"] or [url.endswith(GONE) for url in failed] != [True]:
        out.print(f"[bold red]The demo did not go as planned[/]: failed {sorted(failed)}.")
        return 1
    return 0


def prepare_demo_dir(directory: Path) -> None:
    """Make ``directory`` an empty folder marked as the demo's, or refuse (exit 2).

    The demo starts from nothing, so it empties its folder; it only ever empties
    one that carries its marker (or is empty), so a mistyped ``--dir`` can never
    delete someone's data.
    """
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise ConfigurationError(
            f"--dir {directory} is not a folder; give a new folder for the demo, e.g. "
            "--dir demo-output"
        )
    if directory.exists() and (directory / MARKER).is_file():
        shutil.rmtree(directory)
    elif directory.exists() and any(directory.iterdir()):
        raise ConfigurationError(
            f"--dir {directory} is not empty and was not made by `docstokg demo` (it has no "
            f"{MARKER} file); the demo empties its folder, so nothing was touched: give a "
            "new or empty folder, e.g. --dir demo-output (an old demo folder: delete it "
            "yourself)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text(MARKER_TEXT, encoding="utf-8")


def _interrupted_run(
    manifest: Manifest, settings: RunSettings, server: ArtifactServer
) -> RunSummary:
    """Run in a thread; once the large download is paused a third in, stop the run."""
    download = build_run(manifest, settings, reporter=LogReporter())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="demo-run-1") as pool:
        running = pool.submit(download.run)
        with stop_on_signals(download.request_stop):
            if server.wait_paused(LARGE, timeout=30):
                # The writer's buffer may hold the last few KiB back from the file.
                part = _wait_for_part(settings.out_dir, manifest, PAUSE_AT - 64 * KiB)
                out.print(
                    f"[bold yellow]Interrupting run 1[/] while {LARGE} is at {part:,} of "
                    f"{LARGE_BYTES:,} bytes (as Ctrl-C would): its .part stays in .staging."
                )
            download.request_stop()
            server.release(LARGE)
            return running.result()


def _wait_for_part(out_dir: Path, manifest: Manifest, size: int) -> int:
    """Until the large download's .part holds ``size`` bytes (the server pauses there)."""
    [row] = [row for row in manifest.rows if row.url.endswith(LARGE)]
    job_id = job_id_for(job_key(row.work_id, row.artifact_id, row.url))
    store = ArtifactStore(out_dir)
    deadline = time.monotonic() + 30
    have = 0
    while time.monotonic() < deadline:
        # One .part per lease epoch: the newest is the one being written.
        parts = store.parts_of(job_id)
        have = _size_of(parts[0][1]) if parts else 0
        if have >= size:
            break
        time.sleep(0.02)  # a demo watching a file grow, not a test synchronising
    return have


def _size_of(part: Path) -> int:
    try:
        return part.stat().st_size
    except FileNotFoundError:  # stored or taken over a moment ago
        return 0


def _print_states(title: str, summary: RunSummary) -> None:
    table = Table(title=title)
    for column in ("work_id", "artifact_id", "state"):
        table.add_column(column)
    for job in summary.jobs:
        table.add_row(escape(job.work_id), escape(job.artifact_id), job.label)
    out.print(table)


def _explain_second_run(server: ArtifactServer, before: PathStats) -> None:
    after = server.total()
    large = server.stats(LARGE)
    out.print(
        f"Run 2 made {after.get_requests - before.get_requests} GET requests "
        f"({after.range_gets - before.range_gets} ranged): finished artifacts were not "
        "fetched again."
    )
    if large.range_headers:
        out.print(
            f"{LARGE} resumed with [bold]Range: {large.range_headers[-1]}[/] and If-Range "
            f"{large.if_range_headers[-1] if large.if_range_headers else '(none)'}."
        )
