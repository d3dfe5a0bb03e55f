"""What every command shares: the consoles, the common options, JSON output."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from docstokg.redact import mask_urls

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


def folder_path(text: str | Path) -> Path:
    """The parser of folder options (``--out``): an empty value is a usage error.

    ``Path("")`` is ``Path(".")``: without this check ``--out ''`` (an unset shell
    variable) would quietly fill, or read, whatever folder the command runs in.
    Typer reports the error naming the option, with exit code 2.  A default
    arrives as the ``Path`` it already is.
    """
    if isinstance(text, Path):
        return text
    if not text.strip():
        raise typer.BadParameter(
            f"{text!r} is empty; name a folder, e.g. store (is a shell variable unset?)"
        )
    return Path(text)


def print_json(document: dict[str, Any]) -> None:
    """One JSON document on stdout, keys sorted, so scripts can diff and parse it."""
    sys.stdout.write(json.dumps(document, sort_keys=True, indent=2) + "\n")


class MaskSecrets(logging.Filter):
    """Masks every URL's password and token-like query values in a log record.

    Log lines quote URLs that docstokg did not write: a manifest's, a driver's
    error, an exception's text.  Masking the record once, here, covers them all.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_urls(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = mask_urls(logging.Formatter().formatException(record.exc_info))
        return True


def configure_logging(*, verbose: bool = False) -> None:
    """docstokg's log lines on stderr: rich on a terminal, timestamped plain text elsewhere."""
    handler: logging.Handler
    if err.is_terminal:
        handler = RichHandler(console=err, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(MaskSecrets())
    logger = logging.getLogger("docstokg")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
