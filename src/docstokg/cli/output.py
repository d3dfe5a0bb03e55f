"""What every command shares: the consoles, the common options, JSON output."""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

out = Console()
err = Console(stderr=True)

DbOption = Annotated[
    str,
    typer.Option(
        "--db",
        envvar="DOCSTOKG_DB_URL",
        help="Ledger database URL: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB.",
        show_envvar=True,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]


def print_json(document: dict[str, Any]) -> None:
    """One JSON document on stdout, keys sorted, so scripts can diff and parse it."""
    sys.stdout.write(json.dumps(document, sort_keys=True, indent=2) + "\n")


def configure_logging(*, verbose: bool = False) -> None:
    """docstokg's log lines on stderr: rich on a terminal, timestamped plain text elsewhere."""
    handler: logging.Handler
    if err.is_terminal:
        handler = RichHandler(console=err, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("docstokg")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
