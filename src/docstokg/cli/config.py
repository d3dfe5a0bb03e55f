"""``docstokg config show``: the effective configuration and where each value came from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from docstokg.cli.output import JsonOption, out, print_json
from docstokg.config import describe, load_settings
from docstokg.redact import mask_url

config_app = typer.Typer(help="Inspect the idempotency configuration.", no_args_is_help=True)


@config_app.command("show")
def show(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML file to read (default: ./config/idempotency.yaml)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Print every setting's effective value and its source (default, file, env, flag).

    Settings come from defaults < the config file < DOCSTOKG_IDEMPOTENCY_<KEY>
    environment variables (< --idempotency for `enabled`).

    Example: DOCSTOKG_IDEMPOTENCY_LEASE_TTL_S=60 docstokg config show
    """
    settings = load_settings(config)
    rows = [
        (key, _shown(value), source, meaning) for key, value, source, meaning in describe(settings)
    ]
    if as_json:
        print_json(
            {
                "file": None if settings.file is None else str(settings.file),
                "settings": {
                    key: {"value": value, "source": source} for key, value, source, _ in rows
                },
            }
        )
        return
    table = Table(title=f"Idempotency settings (file: {escape(str(settings.file or 'none'))})")
    for column in ("key", "value", "source", "meaning"):
        table.add_column(column)
    for key, value, source, description in rows:
        table.add_row(key, escape(repr(value)), escape(source), escape(description))
    out.print(table)


def _shown(value: object) -> object:
    """A setting as printed: a URL's password and token-like query values as ``***``."""
    return mask_url(value) if isinstance(value, str) else value
