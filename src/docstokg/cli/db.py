"""``docstokg db``: create, upgrade and inspect the ledger schema."""

from __future__ import annotations

import typer
from rich.table import Table

from docstokg.cli.output import DbOption, JsonOption, out, print_json
from docstokg.ledger import migrate
from docstokg.ledger.migrate import SchemaStatus

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
    table.add_row("up to date", _up_to_date(status))
    table.add_row("schema_version", status.schema_version or "(none)")
    out.print(table)


def _up_to_date(status: SchemaStatus) -> str:
    """Whether the schema is current and, when not, the one step that makes it so.

    A revision this docstokg does not ship was written by a newer docstokg:
    `db upgrade` refuses it, so the step is to upgrade docstokg itself.
    """
    if status.is_current:
        return "yes"
    revisions = (status.revision or "").split(",")
    unknown = [rev for rev in revisions if rev and rev not in migrate.known_revisions()]
    if unknown:
        return (
            f"no: revision {unknown[0]} is newer than this docstokg knows; upgrade "
            "docstokg itself (pip install -U docstokg), then run this again"
        )
    return "no: run `docstokg db upgrade`"
