"""The ``docstokg`` command line.

Every command prints rich tables for people and, with ``--json``, one stable
JSON document for scripts.  Errors from docstokg's own hierarchy are printed
as one line without a traceback: exit code 2 for usage and configuration
errors, 1 for everything else.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from docstokg.errors import ConfigurationError, DocstokgError
from docstokg.ledger import JobSpec, Ledger, migrate

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
db_app = typer.Typer(
    help="Create, upgrade and inspect the ledger database schema.", no_args_is_help=True
)
app.add_typer(db_app, name="db")

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


def _print_json(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document, sort_keys=True, indent=2) + "\n")


@db_app.command("upgrade")
def db_upgrade(db: DbOption, as_json: JsonOption = False) -> None:
    """Create the ledger schema, or upgrade it to this version's newest revision.

    A database made by the pre-Alembic ledger (schema_version 3) is adopted
    in place with every row kept.  Running it again is harmless.

    Example: docstokg db upgrade --db sqlite:///downloads/manifest.sqlite3
    """
    result = migrate.upgrade(db)
    if as_json:
        _print_json(
            {
                "from_revision": result.from_revision,
                "to_revision": result.to_revision,
                "schema_version": result.schema_version,
                "adopted": result.adopted,
            }
        )
        return
    if result.adopted:
        out.print("Adopted a pre-Alembic v3 ledger (stamped at the baseline, rows kept).")
    if result.from_revision == result.to_revision:
        out.print(f"Already at revision [bold]{result.to_revision}[/] (nothing to do).")
    else:
        out.print(
            f"Upgraded from {result.from_revision or 'an empty database'} to revision "
            f"[bold]{result.to_revision}[/]."
        )
    out.print(f"schema_version: {result.schema_version}")


@db_app.command("current")
def db_current(db: DbOption, as_json: JsonOption = False) -> None:
    """Show the database's Alembic revision and _meta.schema_version (changes nothing)."""
    status = migrate.describe(db)
    if as_json:
        _print_json(
            {
                "revision": status.revision,
                "head": status.head,
                "is_current": status.is_current,
                "schema_version": status.schema_version,
            }
        )
        return
    table = Table(show_header=False, box=None)
    table.add_row("revision", status.revision or "(none: not a ledger yet)")
    table.add_row("head", status.head)
    table.add_row("up to date", "yes" if status.is_current else "no: run `docstokg db upgrade`")
    table.add_row("schema_version", status.schema_version or "(none)")
    out.print(table)


@app.command()
def demo(
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the demo ledger is created.")
    ] = Path("demo-output"),
) -> None:
    """Create a ledger, plan a small manifest twice, and show where every job stands.

    The second planning adds no row: planning is idempotent.
    """
    directory.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{(directory / 'manifest.sqlite3').resolve()}"
    specs = [
        JobSpec(f"W{work:03d}", f"A{artifact}", f"https://example.org/{work}/{artifact}.pdf")
        for work in range(1, 6)
        for artifact in range(1, 3)
    ]
    with Ledger.connect(url) as ledger:
        upgraded = ledger.upgrade()
        out.print(
            f"Ledger {escape(url)} at revision {upgraded.to_revision} "
            f"(schema_version {upgraded.schema_version})."
        )
        for attempt in ("first", "second"):
            with ledger.unit_of_work() as uow:
                created = uow.jobs.plan_many(specs, now=uow.now())
                uow.commit()
            out.print(
                f"Planned the {len(specs)}-row manifest a {attempt} time: {created} new jobs."
            )
        with ledger.unit_of_work(read_only=True) as uow:
            counts = uow.jobs.count_by_state()
    table = Table(title="Jobs by state")
    table.add_column("state")
    table.add_column("jobs", justify="right")
    for state, count in counts.items():
        table.add_row(state.value, str(count))
    table.add_row("[bold]total[/]", f"[bold]{sum(counts.values())}[/]")
    out.print(table)


def main() -> None:
    """Console entry point: docstokg's own errors become one-line messages, not tracebacks."""
    try:
        app()
    except DocstokgError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2 if isinstance(exc, ConfigurationError) else 1)
