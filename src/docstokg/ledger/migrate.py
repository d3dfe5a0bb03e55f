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
from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, inspect, select, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from docstokg.errors import (
    DatabaseUnavailable,
    MigrationFailed,
    SchemaError,
    SchemaMismatch,
    SchemaNotCurrent,
    UnknownRevision,
)
from docstokg.ledger.engine import (
    create_inspection_engine,
    create_ledger_engine,
    database_error,
    driver_reason,
    is_sqlite,
    parse_url,
    sqlite_path,
)
from docstokg.ledger.faults import is_transient
from docstokg.ledger.models import meta_table

if TYPE_CHECKING:  # Alembic is imported where it is used: reading a status needs none of it
    from alembic.config import Config
    from alembic.script import ScriptDirectory

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
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(files("docstokg") / "migrations"))
    return config


@cache
def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


@cache
def known_revisions() -> frozenset[str]:
    """Every revision id this code ships (exact ids: Alembic would also take prefixes)."""
    return frozenset(script.revision for script in _script().walk_revisions())


def head_revision() -> str:
    head = _script().get_current_head()
    if head is None:
        raise SchemaError("this docstokg ships no Alembic revisions; reinstall it")
    return head


def describe(url: str | URL, **engine_options: Any) -> SchemaStatus:
    """The schema status of the database at ``url``, changing nothing (not even creating it)."""
    with _inspection_connection(parse_url(url), engine_options) as connection:
        return _describe(connection)


def check_current(connection: Connection) -> SchemaStatus:
    """Raise unless the database behind ``connection`` is at this code's head."""
    status = _describe(connection)
    if status.revision is not None:
        _check_known(status.revision)
    if not status.is_current and not status.has_ledger_tables:
        raise SchemaNotCurrent(
            "the database has no ledger tables: no run with the ledger on has used it. "
            "Point --db at the ledger your runs use (their --db or DOCSTOKG_DB_URL, or "
            "the config's db_url: see `docstokg config show`); only to start a new, empty "
            f"ledger here run `docstokg db upgrade --db URL` (this docstokg needs revision "
            f"{status.head!r})"
        )
    if not status.is_current:
        raise SchemaNotCurrent(
            f"the ledger database has revision {status.revision!r} (schema_version "
            f"{status.schema_version}), this docstokg needs revision {status.head!r}; run "
            "`docstokg db upgrade --db URL` first"
        )
    return status


def require_current(url: str | URL, **engine_options: Any) -> SchemaStatus:
    """:func:`check_current` for a URL, read-only."""
    with _inspection_connection(parse_url(url), engine_options) as connection:
        return check_current(connection)


def upgrade(url: str | URL, revision: str = "head", **engine_options: Any) -> UpgradeResult:
    """Bring the database to ``revision``, creating or adopting it as needed.

    Everything happens in one transaction: an upgrade that fails half-way
    (say, a row the new schema rejects) leaves the database as it was.
    """
    parsed = parse_url(url)
    if is_sqlite(parsed):
        path = sqlite_path(parsed)
        if path.exists():
            with _inspection_connection(parsed, engine_options) as connection:
                _plan(connection)  # refuse before the migration engine touches the file
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseUnavailable(
                    f"cannot create the folder {path.parent} for the SQLite ledger: "
                    f"{exc.strerror or exc}"
                ) from exc

    from alembic import command

    engine = create_ledger_engine(
        parsed, foreign_keys=False, poolclass=NullPool, **_connection_options(engine_options)
    )
    try:
        with _connected(engine, parsed) as connection, connection.begin():
            if connection.dialect.name == "postgresql":
                connection.execute(select(text(f"pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")))
            before = _describe(connection)
            adopt = _plan(connection)
            config = alembic_config()
            config.attributes["connection"] = connection
            try:
                if adopt:
                    command.stamp(config, BASELINE_REVISION)
                command.upgrade(config, revision)
            except DBAPIError as exc:
                if is_transient(exc):
                    raise  # a server restarting under it: the caller waits it out, then again
                raise MigrationFailed(
                    f"upgrading the ledger from revision {before.revision or '(none)'} to "
                    f"{revision} failed: {driver_reason(exc)}. The upgrade was rolled back; "
                    "the database is as it was."
                ) from exc
            after = _describe(connection)
    finally:
        engine.dispose()
    if after.revision is None:
        raise MigrationFailed(f"the upgrade to {revision} left no alembic_version behind")
    return UpgradeResult(
        from_revision=before.revision,
        to_revision=after.revision,
        schema_version=after.schema_version,
        adopted=adopt,
    )


def _connection_options(engine_options: dict[str, Any]) -> dict[str, Any]:
    """The options that say how to connect (not how to pool): migrations use their own pool."""
    return {
        name: engine_options[name] for name in ("connect_args", "echo") if name in engine_options
    }


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
        from alembic.runtime.migration import MigrationContext

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
    for rev in revision.split(","):
        if rev not in known_revisions():
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
    _check_v3_rows(connection)


def _check_v3_rows(connection: Connection) -> None:
    """Refuse rows the baseline's NOT NULL columns cannot take, before copying anything.

    v3 declared the same NOT NULL columns, but SQLite lets a ``TEXT PRIMARY KEY``
    hold NULL; such a row would make the adoption fail half-way.
    """
    problems = []
    for table, key in (("artifact_jobs", "job_id"), ("artifact_ops", "op_key"), ("_meta", "key")):
        count = connection.execute(
            text(f'SELECT count(*) FROM "{table}" WHERE "{key}" IS NULL')
        ).scalar_one()
        if count:
            problems.append(f"{count} row(s) of {table} have no {key}")
    if problems:
        raise SchemaMismatch(
            f"the v3 ledger cannot be adopted as it is: {'; '.join(problems)}. Delete or "
            "repair those rows (they can never be leased or replayed), then run the upgrade "
            "again; nothing was changed."
        )


@contextmanager
def _inspection_connection(url: URL, engine_options: dict[str, Any]) -> Iterator[Connection]:
    """A connection that reads without changing anything, not even SQLite's journal mode."""
    if is_sqlite(url) and not sqlite_path(url).exists():
        raise DatabaseUnavailable(
            f"the ledger database file {sqlite_path(url)} does not exist (nothing was "
            "created); point --db at the ledger your runs use (their --db or "
            "DOCSTOKG_DB_URL, or the config's db_url: see `docstokg config show`)"
        )
    engine = create_inspection_engine(url, **_connection_options(engine_options))
    try:
        with _connected(engine, url) as connection:
            yield connection
    finally:
        engine.dispose()


@contextmanager
def _connected(engine: Engine, url: URL) -> Iterator[Connection]:
    """Connect, and say clearly why when that fails; later errors pass through untouched."""
    try:
        connection = engine.connect()
        if is_sqlite(url):  # SQLite reads the file header lazily: make it read now
            connection.exec_driver_sql("SELECT count(*) FROM sqlite_master").all()
            connection.rollback()
    except DBAPIError as exc:
        raise database_error(url, exc) from exc
    with connection:
        yield connection
