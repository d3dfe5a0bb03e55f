"""Schema upgrades through Alembic, with adoption of databases made before it.

``upgrade`` decides what a database needs before it writes anything:

* no ledger tables: create them (baseline, then every later revision);
* the hand-rolled v3 tables but no ``alembic_version``: check their shape,
  stamp them at the baseline and upgrade, keeping every row;
* a revision this code does not know: refuse, naming it, and write nothing;
* tables of the ledger's names in another shape: refuse, naming what differs.

The decision is made once read-only (so a refused SQLite file stays byte for
byte as it was) and made again inside the migration transaction, which holds
the write lock (SQLite ``BEGIN IMMEDIATE``, a PostgreSQL advisory lock), so
workers that start together upgrade once and never race each other.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, create_engine, inspect, select, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from docstokg.errors import (
    DatabaseUnavailable,
    SchemaMismatch,
    SchemaNotCurrent,
    UnknownRevision,
)
from docstokg.ledger.engine import create_ledger_engine, is_sqlite, parse_url, sqlite_path
from docstokg.ledger.models import meta_table

BASELINE_REVISION = "0001_v3_baseline"
SCHEMA_VERSION_KEY = "schema_version"

# The hand-rolled v3 ledger, as apply_migration created it: what adoption expects.
V3_COLUMNS: dict[str, frozenset[str]] = {
    "_meta": frozenset({"key", "value"}),
    "artifact_jobs": frozenset(
        {
            "job_id",
            "work_id",
            "artifact_id",
            "canonical_url",
            "state",
            "lease_owner",
            "lease_until",
            "created_at",
            "updated_at",
            "idempotency_key",
        }
    ),
    "artifact_ops": frozenset(
        {
            "op_key",
            "job_id",
            "op_type",
            "started_at",
            "finished_at",
            "result_code",
            "result_json",
        }
    ),
}
V3_SCHEMA_VERSION = "3"

# Any constant works; it only has to be the same for every docstokg process.
_PG_MIGRATION_LOCK = 0x646F6373746F6B67


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """Where a database's schema stands relative to this code."""

    revision: str | None
    schema_version: str | None
    head: str
    has_ledger_tables: bool

    @property
    def is_current(self) -> bool:
        return self.revision == self.head


@dataclass(frozen=True, slots=True)
class UpgradeResult:
    from_revision: str | None
    to_revision: str
    schema_version: str | None
    adopted: bool


def alembic_config() -> Config:
    """A Config pointing at the revisions shipped inside the package."""
    config = Config()
    config.set_main_option("script_location", str(files("docstokg") / "migrations"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the package ships no Alembic revisions"
    return head


def describe(url: str | URL) -> SchemaStatus:
    """The schema status of the database at ``url``, changing nothing (not even creating it)."""
    with _inspection_connection(parse_url(url)) as connection:
        return _describe(connection)


def require_current(url: str | URL) -> SchemaStatus:
    """Raise :class:`SchemaNotCurrent` unless the database is at this code's head."""
    status = describe(url)
    if status.revision is not None:
        _check_known(status.revision)
    if not status.is_current:
        found = (
            "no ledger tables"
            if not status.has_ledger_tables
            else (f"revision {status.revision!r} (schema_version {status.schema_version})")
        )
        raise SchemaNotCurrent(
            f"the ledger database has {found}, this docstokg needs revision "
            f"{status.head!r}; run `docstokg db upgrade --db URL` first"
        )
    return status


def upgrade(url: str | URL, revision: str = "head") -> UpgradeResult:
    """Bring the database to ``revision``, creating or adopting it as needed."""
    parsed = parse_url(url)
    if is_sqlite(parsed):
        path = sqlite_path(parsed)
        if path.exists():
            with _inspection_connection(parsed) as connection:
                _plan(connection)  # refuse before the migration engine touches the file
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseUnavailable(
                    f"cannot create the folder {path.parent} for the SQLite ledger: "
                    f"{exc.strerror or exc}"
                ) from exc

    engine = create_ledger_engine(parsed, foreign_keys=False, poolclass=NullPool)
    try:
        with _translate_connect_errors(parsed), engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(select(text(f"pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")))
            before = _describe(connection)
            adopt = _plan(connection)
            config = alembic_config()
            config.attributes["connection"] = connection
            if adopt:
                command.stamp(config, BASELINE_REVISION)
            command.upgrade(config, revision)
            after = _describe(connection)
    finally:
        engine.dispose()
    assert after.revision is not None
    return UpgradeResult(
        from_revision=before.revision,
        to_revision=after.revision,
        schema_version=after.schema_version,
        adopted=adopt,
    )


def _plan(connection: Connection) -> bool:
    """Validate the database for an upgrade; True when it must be adopted first."""
    status = _describe(connection)
    if status.revision is not None:
        _check_known(status.revision)
        return False
    if not status.has_ledger_tables:
        return False
    _check_v3_shape(connection)
    return True


def _describe(connection: Connection) -> SchemaStatus:
    tables = set(inspect(connection).get_table_names())
    revision = None
    if "alembic_version" in tables:
        heads = MigrationContext.configure(connection).get_current_heads()
        revision = ",".join(heads) if heads else None
    schema_version = None
    if "_meta" in tables:
        schema_version = connection.execute(
            select(meta_table.c.value).where(meta_table.c.key == SCHEMA_VERSION_KEY)
        ).scalar_one_or_none()
    return SchemaStatus(
        revision=revision,
        schema_version=schema_version,
        head=head_revision(),
        has_ledger_tables=bool(tables & V3_COLUMNS.keys()),
    )


def _check_known(revision: str) -> None:
    script = ScriptDirectory.from_config(alembic_config())
    for rev in revision.split(","):
        try:
            known = script.get_revision(rev)
        except CommandError:
            known = None
        if known is None:
            raise UnknownRevision(rev, head_revision())


def _check_v3_shape(connection: Connection) -> None:
    inspector = inspect(connection)
    tables = set(inspector.get_table_names())
    problems = []
    for table, expected in V3_COLUMNS.items():
        if table not in tables:
            problems.append(f"table {table} is missing")
            continue
        found = {column["name"] for column in inspector.get_columns(table)}
        if missing := sorted(expected - found):
            problems.append(f"{table} lacks column(s) {', '.join(missing)}")
        if extra := sorted(found - expected):
            problems.append(f"{table} has unexpected column(s) {', '.join(extra)}")
    if not problems:
        version = connection.execute(
            select(meta_table.c.value).where(meta_table.c.key == SCHEMA_VERSION_KEY)
        ).scalar_one_or_none()
        if version != V3_SCHEMA_VERSION:
            problems.append(
                f"_meta.schema_version is {version!r}, only {V3_SCHEMA_VERSION!r} can be adopted"
            )
    if problems:
        raise SchemaMismatch(
            "the database holds tables named like the ledger's but not in the v3 ledger "
            f"shape, so it was left unchanged: {'; '.join(problems)}. Point --db at a "
            "new database, or rename the other application's tables."
        )


@contextmanager
def _inspection_connection(url: URL) -> Iterator[Connection]:
    """A connection that reads without changing anything, not even SQLite's journal mode."""
    if is_sqlite(url) and not sqlite_path(url).exists():
        raise DatabaseUnavailable(
            f"the ledger database file {sqlite_path(url)} does not exist; create it with "
            f"`docstokg db upgrade --db {url.render_as_string()}`"
        )
    engine = create_engine(url, poolclass=NullPool)
    try:
        with _translate_connect_errors(url), engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


@contextmanager
def _translate_connect_errors(url: URL) -> Iterator[None]:
    try:
        yield
    except DBAPIError as exc:
        where = (
            f"the SQLite file {sqlite_path(url)}"
            if is_sqlite(url)
            else f"the ledger database {url.render_as_string(hide_password=True)}"
        )
        if is_sqlite(url) and _is_not_sqlite(url):
            raise DatabaseUnavailable(
                f"{where} is not a SQLite database (its header is wrong); point --db at a "
                "ledger database or at a path where a new one may be created"
            ) from exc
        if is_sqlite(url) and sqlite_path(url).is_dir():
            raise DatabaseUnavailable(
                f"{where} is a directory; point --db at a file inside it, e.g. "
                f"sqlite:///{sqlite_path(url) / 'manifest.sqlite3'}"
            ) from exc
        reason = " ".join(str(exc.orig).split())  # drivers' messages span lines
        raise DatabaseUnavailable(f"cannot use {where}: {reason}") from exc


def _is_not_sqlite(url: URL) -> bool:
    path = sqlite_path(url)
    try:
        with Path(path).open("rb") as handle:
            header = handle.read(16)
    except OSError:
        return False
    return bool(header) and header != b"SQLite format 3\x00"
