"""The ``docstokg`` command line.

Every command prints rich tables for people and, with ``--json``, one stable
JSON document for scripts.  Errors from docstokg's own hierarchy are printed
as one line without a traceback: exit code 2 for usage and configuration
errors, 1 for everything else.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from docstokg.cli.config import config_app
from docstokg.cli.db import db_app
from docstokg.cli.demo import demo
from docstokg.cli.job import job_app
from docstokg.cli.output import err
from docstokg.cli.run import run
from docstokg.cli.verify import verify
from docstokg.errors import ConfigurationError, DocstokgError
from docstokg.redact import mask_urls

app = typer.Typer(
    help="Fetch every artifact of a manifest exactly once, and see where every job stands.",
    epilog=(
        "Commands that open a ledger take --db URL (sqlite:///PATH or "
        "postgresql+psycopg://USER@HOST/DB), or read it from DOCSTOKG_DB_URL."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(run)
app.command()(demo)
app.add_typer(db_app, name="db")
job_app.command("verify")(verify)
app.add_typer(job_app, name="job")
app.add_typer(config_app, name="config")


def main() -> None:
    """Console entry point: docstokg's own errors become one-line messages, not tracebacks."""
    try:
        app()
    except DocstokgError as exc:
        err.print(
            f"[bold red]error:[/] {escape(mask_urls(str(exc)))}", highlight=False, soft_wrap=True
        )
        sys.exit(2 if isinstance(exc, ConfigurationError) else 1)
