"""``docstokg demo``: the README's "run the main job"."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from docstokg.cli.output import folder_path


def demo(
    directory: Annotated[
        Path,
        typer.Option(
            "--dir",
            parser=folder_path,
            help="Where the demo's manifest, ledger and artifacts go: a new or empty folder, "
            "or one an earlier demo made (emptied first).",
        ),
    ] = Path("demo-output"),
    workers: Annotated[int, typer.Option("--workers", min=1, max=64)] = 4,
) -> None:
    """Download a small manifest from a loopback server with the ledger on, crash-style.

    The server serves five papers, a mirror with the same bytes as one of
    them, a URL that fails once with 503 and then recovers, a 404, and an
    8 MiB dataset. The first run is interrupted while the dataset is a third
    downloaded (as Ctrl-C would); the second run resumes it with a Range
    request and fetches nothing that is already stored. Then the summary and
    the job table.
    """
    from docstokg.cli.walkthrough import run_demo  # the runner's imports, only when used

    raise typer.Exit(run_demo(directory, workers))
