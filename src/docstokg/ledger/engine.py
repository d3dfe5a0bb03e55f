"""Engines for the two supported backends, configured for many concurrent workers.

SQLite (the embedded default) gets WAL, ``synchronous=NORMAL``, foreign keys,
a busy timeout, and transactions that start with ``BEGIN IMMEDIATE``: a unit of
work that reads and then writes takes the write lock up front, so it can never
fail half-way with SQLITE_BUSY while upgrading from reader to writer.  Units of
work that only read start a plain deferred ``BEGIN`` and so never block writers.

PostgreSQL is reached through psycopg 3.  This module is the one place where
the two dialects are told apart at connection level.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import (
    Engine,
    PrimaryKeyConstraint,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, IntegrityError
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from docstokg.errors import (
    ConfigurationError,
    ConstraintViolated,
    ContentAlreadyStored,
    DatabaseUnavailable,
    DuplicateJob,
    DuplicateOp,
    LedgerBusy,
    LedgerError,
    TransientDatabaseError,
    UnknownJobReference,
    ValueNotAllowed,
)
from docstokg.ledger.faults import database_name, is_transient
from docstokg.ledger.models import JOB_STATES_SQL, OP_STATUSES, Base

SQLITE_BUSY_TIMEOUT_MS = 30_000
DEFAULT_POOL_SIZE = 8
"""Connections one ledger handle keeps when nobody says (a run passes min(workers, 8))."""
SQLITE_MIN_POOL_SIZE = 2
POOL_WAIT_WARNING_S = 30.0
"""A worker waiting this long for a connection says so in the log, then waits on."""
IDLE_PING_S = 2.0
"""A pooled connection idle this long is pinged before use (see ``_ping_when_idle``)."""
_IDLE_SINCE = "docstokg_idle_since"
# Page cache per connection, in KiB (negative = KiB for SQLite).  The default
# 2 MiB makes bulk planning miss the cache on the random-order key indexes.
SQLITE_CACHE_KIB = 32_768
READ_ONLY_OPTION = "docstokg_read_only"

SUPPORTED_URLS = "sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB"


def parse_url(url: str | URL) -> URL:
    """Parse and validate a ledger URL; ``postgresql://`` is taken to mean psycopg 3."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(
            f"cannot parse the database URL {url!r}; expected {SUPPORTED_URLS}"
        ) from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:") or (parsed.query.get("mode") == "memory"):
            raise ConfigurationError(
                f"the database URL {parsed.render_as_string()!r} names an in-memory "
                "database; the ledger must survive crashes, so give a file: sqlite:///PATH"
            )
        return parsed
    if backend == "postgresql":
        if parsed.drivername == "postgresql":  # no driver named: the one docstokg ships
            return parsed.set(drivername="postgresql+psycopg")
        driver = parsed.get_driver_name()
        if driver != "psycopg":
            raise ConfigurationError(
                f"the PostgreSQL driver {driver!r} in "
                f"{parsed.render_as_string(hide_password=True)!r} is not supported; "
                "use postgresql+psycopg://"
            )
        return parsed
    raise ConfigurationError(
        f"the database URL {parsed.render_as_string(hide_password=True)!r} uses the "
        f"unsupported backend {backend!r}; use {SUPPORTED_URLS}"
    )


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def sqlite_path(url: URL) -> Path:
    """The file a sqlite URL points at (``file:`` URIs included)."""
    database = url.database or ""
    if database.startswith("file:"):
        database = database[len("file:") :].split("?", 1)[0]
    return Path(database)


def create_ledger_engine(
    url: str | URL, *, foreign_keys: bool = True, **engine_options: Any
) -> Engine:
    """Build the engine for ``url`` with the settings the ledger's guarantees rely on.

    ``foreign_keys=False`` exists for migrations only: SQLite batch mode copies
    tables, and enforcing foreign keys during the copy would cascade deletes.
    """
    parsed = parse_url(url)
    engine_options = bounded_pool_options(parsed, engine_options)
    if not is_sqlite(parsed):
        engine = create_engine(parsed, **engine_options)
        if not engine_options.get("pool_pre_ping", False):
            _ping_when_idle(engine)
        return engine

    engine = create_engine(parsed, **engine_options)
    _install_sqlite_pragmas(engine, foreign_keys=foreign_keys)
    return engine


def bounded_pool_options(url: URL, engine_options: dict[str, Any]) -> dict[str, Any]:
    """``engine_options`` with the pool bounded: ``pool_size`` connections, no overflow.

    Units of work check a connection out and back (see
    :mod:`docstokg.ledger.connections`), so a few connections serve any number
    of workers, and the bound is what keeps a fleet under PostgreSQL's
    ``max_connections``.  ``pool_timeout`` only paces the warning of a worker
    still waiting for a connection: it waits on.  SQLite's pool holds at least
    two connections, because its group-commit writer keeps one while the
    ledger is open, and reads need another.  Options given explicitly win, and
    a ``poolclass`` given (NullPool for migrations) is left alone.
    """
    options = dict(engine_options)
    if "poolclass" in options:
        return options
    options.setdefault("pool_size", DEFAULT_POOL_SIZE)
    options.setdefault("max_overflow", 0)
    options.setdefault("pool_timeout", POOL_WAIT_WARNING_S)
    # Last in, first out: under light load the same few connections stay busy
    # (and skip the idle ping) while the others rest.
    options.setdefault("pool_use_lifo", True)
    if is_sqlite(url):
        options["pool_size"] = max(options["pool_size"], SQLITE_MIN_POOL_SIZE)
    return options


def _ping_when_idle(engine: Engine) -> None:
    """Ping a pooled connection at checkout only if it sat idle ``IDLE_PING_S`` or more.

    SQLAlchemy's ``pool_pre_ping`` pings at every checkout: a round trip per
    unit of work now that units of work check connections out each time
    (measured: 100-200 µs on loopback, where the checkout itself costs about
    30 µs of CPU).  A connection back in the pool moments ago is as alive as
    one kept by its thread, and one that died meanwhile fails its first
    statement with a passing error, which the callers wait out and redo
    (DESIGN invariant 11), as they did for connections kept per thread.  A
    connection idle longer (after a quiet spell, a server restart) is pinged,
    and replaced if dead.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi: Any, record: ConnectionPoolEntry) -> None:
        if dbapi is not None:  # None: invalidated, and discarded by the pool
            record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_S:
            return  # just opened, or back moments ago
        try:
            engine.dialect.do_ping(dbapi)
        except engine.dialect.loaded_dbapi.Error as exc:
            # The pool discards this connection and checks out (or opens) another.
            raise DisconnectionError(f"a pooled ledger connection is dead: {exc}") from exc


def create_inspection_engine(url: str | URL, **engine_options: Any) -> Engine:
    """An engine that reads without changing anything.

    SQLite files are opened read-only (``mode=ro``): no journal-mode switch,
    no checkpoint of a WAL file on close, no file created.  A refused database
    thus stays byte for byte as it was, WAL frames included.
    """
    parsed = parse_url(url)
    engine_options.setdefault("poolclass", NullPool)
    if not is_sqlite(parsed):
        return create_engine(parsed, **engine_options)
    uri = f"file:{quote(str(sqlite_path(parsed).resolve()))}?mode=ro"
    return create_engine(
        "sqlite://",
        creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False),
        **engine_options,
    )


def driver_reason(exc: DBAPIError) -> str:
    """The driver's own explanation, on one line (psycopg's span several)."""
    return " ".join(str(exc.orig).split())


def database_error(url: URL, exc: DBAPIError) -> LedgerError:
    """A driver error as a :mod:`docstokg.errors` type, in words a user can act on.

    Passing errors (see :func:`docstokg.ledger.faults.is_transient`) become
    :class:`TransientDatabaseError`, which callers may retry; the others say
    what to fix.
    """
    if isinstance(exc, IntegrityError):
        return constraint_violated(url, exc)
    if is_transient(exc):
        if is_sqlite(url) and _is_busy(exc):
            return LedgerBusy(
                f"the SQLite ledger {sqlite_path(url)} stayed locked by other writers for "
                f"{SQLITE_BUSY_TIMEOUT_MS // 1000} s; too many writers share one file (see "
                "'database is locked' in AGENTS.md), or a process hangs inside a transaction"
            )
        # A server answered: a connection was open, or it sent an error (psycopg
        # reports one met while connecting as "FATAL: ..." with no SQLSTATE).
        seen = (
            exc.connection_invalidated
            or getattr(exc.orig, "sqlstate", None) is not None
            or "FATAL:" in driver_reason(exc)
        )
        return TransientDatabaseError(
            f"cannot use {database_name(url)}: {driver_reason(exc)}",
            server_seen=seen or is_sqlite(url),
        )
    if not is_sqlite(url):
        where = url.render_as_string(hide_password=True)
        return DatabaseUnavailable(f"cannot use the ledger database {where}: {driver_reason(exc)}")
    path = sqlite_path(url)
    if path.is_dir():
        return DatabaseUnavailable(
            f"the SQLite file {path} is a directory; point --db at a file inside it, e.g. "
            f"sqlite:///{path / 'manifest.sqlite3'}"
        )
    if _is_not_sqlite(path):
        return DatabaseUnavailable(
            f"the SQLite file {path} is not a SQLite database (its header is wrong); point "
            "--db at a ledger database or at a path where a new one may be created"
        )
    if _sqlite_code(exc) == sqlite3.SQLITE_READONLY:
        return DatabaseUnavailable(
            f"the SQLite ledger {path} cannot be written ({driver_reason(exc)}); make the file, "
            "its -wal and -shm files and its folder writable for this user, or point --db at "
            "a writable copy"
        )
    if "no such table" in driver_reason(exc):
        return DatabaseUnavailable(
            f"the SQLite ledger {path} lost its tables ({driver_reason(exc)}): the file was "
            "deleted or replaced while in use. Restore it from a backup, or run again to start "
            "a new ledger there (it downloads again what it does not know; identical files "
            "are stored once)"
        )
    return DatabaseUnavailable(f"cannot use the SQLite file {path}: {driver_reason(exc)}")


# --- constraint names -> domain errors ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class KnownConstraint:
    """What breaking one named constraint of the schema means, and what to do about it."""

    error: type[ConstraintViolated]
    meaning: str
    remedy: str


_PLAN_INSTEAD = (
    "plan jobs with plan_jobs() (JobRepository.plan), which returns the job already there "
    "instead of inserting it twice"
)
_NEWER_OR_EDITED = (
    "a newer docstokg or a hand edit wrote it: upgrade docstokg, or fix the row by hand"
)
# Every named constraint and unique index of docstokg.ledger.models (the names
# follow its naming convention, and the migrations create them under those
# names on both backends); tests/integration/test_schema_constraints.py holds
# this table to the models.
KNOWN_CONSTRAINTS: dict[str, KnownConstraint] = {
    "pk_artifact_jobs": KnownConstraint(
        DuplicateJob, "a job with this job_id is in the ledger already", _PLAN_INSTEAD
    ),
    "uq_artifact_jobs_idempotency_key": KnownConstraint(
        DuplicateJob, "a job with this idempotency key is in the ledger already", _PLAN_INSTEAD
    ),
    "uq_artifact_jobs_work_id_artifact_id_canonical_url": KnownConstraint(
        DuplicateJob,
        "a job for this (work_id, artifact_id, canonical_url) is in the ledger already",
        _PLAN_INSTEAD,
    ),
    "uq_artifact_jobs_stored_content": KnownConstraint(
        ContentAlreadyStored,
        "another job became the stored (DEDUPED) owner of this content first",
        "run the DEDUPE step again: it finds that owner and ends this job SKIPPED_DUPLICATE",
    ),
    "pk_artifact_ops": KnownConstraint(
        DuplicateOp,
        "an op with this op_key is recorded already",
        "record ops through run_effect() (OpRepository.add/start), which replay a recorded op",
    ),
    "fk_artifact_ops_job_id_artifact_jobs": KnownConstraint(
        UnknownJobReference,
        "an op names a job_id that no job carries",
        "plan the job before recording its ops, and check that the job_id was copied whole",
    ),
    "ck_artifact_jobs_state": KnownConstraint(
        ValueNotAllowed,
        f"a job state outside the ledger's list ({JOB_STATES_SQL})",
        _NEWER_OR_EDITED,
    ),
    "ck_artifact_ops_status": KnownConstraint(
        ValueNotAllowed,
        "an op status outside the ledger's list ({})".format(
            ", ".join(f"'{status}'" for status in OP_STATUSES)
        ),
        _NEWER_OR_EDITED,
    ),
    "pk_manifest_jobs": KnownConstraint(
        ConstraintViolated,
        "this job is a member of this manifest already",
        "add jobs to a manifest with add_to_manifest(), which skips the members it has",
    ),
    "fk_manifest_jobs_job_id_artifact_jobs": KnownConstraint(
        UnknownJobReference,
        "a manifest names a job_id that no job carries",
        "plan the job before adding it to a manifest (add_to_manifest skips unknown ids)",
    ),
    "pk_host_limits": KnownConstraint(
        ConstraintViolated,
        "a host's politeness row exists already",
        "write host limits through the politeness store, which updates the row it finds",
    ),
    "pk_host_slots": KnownConstraint(
        ConstraintViolated,
        "a request slot with this holder exists already",
        "take slots through the politeness store, which names each holder once",
    ),
    "pk__meta": KnownConstraint(
        ConstraintViolated,
        "a fact about the ledger (_meta) with this key is recorded already",
        "facts are written once: write them with MetaRepository.put_if_absent",
    ),
}


def _unique_keys() -> dict[tuple[str, ...], str]:
    """("table.column", ...) -> name, for the unique keys SQLite names by their columns."""
    keys: dict[tuple[str, ...], str] = {}
    for table in Base.metadata.sorted_tables:
        for constraint in table.constraints:
            if isinstance(constraint, PrimaryKeyConstraint | UniqueConstraint):
                columns = tuple(f"{table.name}.{column.name}" for column in constraint.columns)
                keys[columns] = str(constraint.name)
        for index in table.indexes:
            if index.unique:
                columns = tuple(f"{table.name}.{column.name}" for column in index.columns)
                keys[columns] = str(index.name)
    return keys


_UNIQUE_KEYS = _unique_keys()
# SQLite names no foreign key it enforces; every one of the ledger's points at
# artifact_jobs.job_id, and only an op can be written with an id no job has (a
# membership is inserted from the jobs themselves): a violation is the ops' key.
_SQLITE_FOREIGN_KEY = "fk_artifact_ops_job_id_artifact_jobs"
_SQLITE_CONSTRAINT = re.compile(r"(UNIQUE|CHECK|NOT NULL) constraint failed: (.+)$")


def violated_constraint(exc: IntegrityError) -> str | None:
    """The name of the constraint ``exc`` broke, when the driver tells (or lets us infer) it.

    PostgreSQL names it.  SQLite names a CHECK, lists a unique key's columns
    (matched against the models' unique keys), and names no foreign key (see
    ``_SQLITE_FOREIGN_KEY``).  None for a NOT NULL, which is no named constraint.
    """
    named = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
    if named is not None:
        return str(named)
    reason = driver_reason(exc)
    if "FOREIGN KEY constraint failed" in reason:
        return _SQLITE_FOREIGN_KEY
    found = _SQLITE_CONSTRAINT.search(reason)
    if found is None:
        return None
    kind, detail = found.groups()
    if kind == "CHECK":
        return detail
    if kind == "UNIQUE":
        return _UNIQUE_KEYS.get(tuple(column.strip() for column in detail.split(",")))
    return None


def constraint_violated(url: URL, exc: IntegrityError) -> ConstraintViolated:
    """The domain error for a broken constraint: a known name says what happened and what to do."""
    constraint = violated_constraint(exc)
    known = KNOWN_CONSTRAINTS.get(constraint or "")
    where = database_name(url)
    if known is None:
        if "NOT NULL" in driver_reason(exc) or _sqlstate(exc) == "23502":
            return ValueNotAllowed(
                f"{where}: a required value is missing ({driver_reason(exc)}); every column "
                "the ledger declares NOT NULL must be given",
                constraint=constraint,
            )
        return ConstraintViolated(f"{where}: {driver_reason(exc)}", constraint=constraint)
    return known.error(
        f"{where}: {known.meaning} (constraint {constraint}); {known.remedy}. "
        f"The database said: {driver_reason(exc)}",
        constraint=constraint,
    )


def _sqlstate(exc: DBAPIError) -> str | None:
    state = getattr(exc.orig, "sqlstate", None)
    return state if isinstance(state, str) else None


def _sqlite_code(exc: DBAPIError) -> int | None:
    code = getattr(exc.orig, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _is_busy(exc: DBAPIError) -> bool:
    return _sqlite_code(exc) == sqlite3.SQLITE_BUSY


def _is_not_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            header = handle.read(16)
    except OSError:
        return False
    return bool(header) and header != b"SQLite format 3\x00"


def _switch_to_wal(cursor: sqlite3.Cursor) -> str:
    """Put the file in WAL mode (once per file), retrying while others hold it.

    Switching needs an exclusive lock, and SQLite answers "database is locked"
    at once rather than calling the busy handler (which could deadlock), so
    the retry is ours; a file already in WAL mode needs no lock at all.
    """
    (mode,) = cursor.execute("PRAGMA journal_mode").fetchone()
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while mode != "wal":
        try:
            (mode,) = cursor.execute("PRAGMA journal_mode = WAL").fetchone()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(pause)  # another connection is switching or reading: wait our turn
            pause = min(pause * 2, 0.2)
        else:
            break
    return str(mode)


def _install_sqlite_pragmas(engine: Engine, *, foreign_keys: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _entry: ConnectionPoolEntry) -> None:
        # Hand transaction control to the "begin" hook below: pysqlite would
        # otherwise send no BEGIN before a SELECT, and the read would not be
        # isolated from the write that follows it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            journal_mode = _switch_to_wal(cursor)
            if journal_mode != "wal":
                raise DatabaseUnavailable(
                    f"SQLite refused WAL mode for {engine.url.database} (it stays in "
                    f"{journal_mode!r} mode), so concurrent workers would block each other; "
                    "put the ledger on a local file system"
                )
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
            # The savepoints of a commit group journal every page they touch;
            # in a temp file that was ~0.3 MB of write() calls per job.
            cursor.execute("PRAGMA temp_store = MEMORY")
            cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        options = connection.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return  # maintenance (VACUUM) that must run outside any transaction
        read_only = options.get(READ_ONLY_OPTION, False)
        # Straight to the driver: this runs for every unit of work, and the
        # full execution pipeline would cost more than the BEGIN itself.
        driver = connection.connection.driver_connection
        statement = "BEGIN" if read_only else "BEGIN IMMEDIATE"
        try:
            driver.execute(statement)  # type: ignore[union-attr]
        except sqlite3.Error as exc:  # as SQLAlchemy wraps driver errors (LedgerBusy)
            raise DBAPIError.instance(statement, (), exc, sqlite3.Error) from exc
