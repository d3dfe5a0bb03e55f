"""``docstokg db``: create, upgrade and inspect the ledger schema."""

from __future__ import annotations

import typer
from rich.table import Table

from docstokg.cli.output import DbOption, JsonOption, out, print_json
from docstokg.ledger import migrate

db_app = typer.Typer(
    help="Create, upgrade and inspect the ledger database schema.", no_args_is_help=True
)


@db_app.command("upgrade")
def db_upgrade(db: DbOption, as_json: JsonOption = False) -> None:
    """Create the ledger schema, or upgrade it to this version's newest revision.

    A database made by the pre-Alembic ledger (schema_version 3) is adopted
    in place with every row kept.  Running it again is harmless.

    Example: docstokg db upgrade --db sqlite:///downloads/manifest.sqlite3
    """
    result = migrate.upgrade(db)
    if as_json:
        print_json(
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
        print_json(
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
