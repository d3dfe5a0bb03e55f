"""``Ledger``: the handle on one ledger database.

It owns the engine (and so the connection pool) for one URL; everything else
(services, runner, CLI) asks it for units of work.  Build one per process with
:meth:`Ledger.connect` and share it between threads: each unit of work gets its
own connection.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TypeVar

from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from docstokg.ledger import migrate
from docstokg.ledger.clock import DatabaseClock, lease_clock
from docstokg.ledger.connections import PooledConnections
from docstokg.ledger.engine import (
    READ_ONLY_OPTION,
    create_ledger_engine,
    database_error,
    parse_url,
)
from docstokg.ledger.faults import DEFAULT_OUTAGE_S, OutageWatch
from docstokg.ledger.group_commit import GroupCommit
from docstokg.ledger.unit_of_work import Clock, UnitOfWork

_T = TypeVar("_T")


class Ledger:
    """The entry point to one ledger database (SQLite file or PostgreSQL)."""

    def __init__(
        self,
        url: URL,
        engine: Engine,
        clock: Clock | None,
        engine_options: dict[str, Any],
        *,
        outage_s: float = DEFAULT_OUTAGE_S,
    ) -> None:
        self._url = url
        # Shared by every thread: an outage is waited out once, for at most outage_s.
        self._outage = OutageWatch(url, outage_s=outage_s)
        self._engine = engine
        self._clock = lease_clock(clock, engine.dialect.name)
        self._engine_options = engine_options
        self._connections = PooledConnections(engine)
        self._schema_checked = threading.Event()
        self._schema_lock = threading.Lock()
        # SQLite has one writer at a time.  The write units of work of this
        # process take turns on one writer connection and commit in groups
        # (see group_commit), instead of queuing in SQLite's busy handler, which
        # sleeps in growing steps, and paying a commit each.  Other processes
        # still meet the busy handler.
        self._writer = (
            GroupCommit(engine, url, outage=self._outage)
            if engine.dialect.name == "sqlite"
            else None
        )
        # PostgreSQL's clock, read once in a while rather than in every unit of work.
        self._database_clock = DatabaseClock() if engine.dialect.name == "postgresql" else None

    @classmethod
    def connect(
        cls,
        url: str | URL,
        *,
        clock: Clock | None = None,
        outage_s: float = DEFAULT_OUTAGE_S,
        pool_size: int | None = None,
        **engine_options: Any,
    ) -> Self:
        """Open the ledger at ``url``; nothing touches the database until it is used.

        ``clock`` returns the current time in epoch seconds; tests inject one
        to move time.  Without it, lease times come from PostgreSQL's clock
        (so workers on drifting machines agree), or this host's for SQLite.

        ``pool_size`` bounds the connections this handle opens (default
        :data:`~docstokg.ledger.engine.DEFAULT_POOL_SIZE`, no overflow): every
        thread using it, heartbeat and reconciler included, borrows one per
        unit of work and waits while all are busy (see
        :mod:`docstokg.ledger.connections`).  Other ``engine_options`` go to
        :func:`sqlalchemy.create_engine` (``max_overflow``, ``connect_args``...).

        Once the database has answered, a passing error (a server restart, a
        lost connection) is waited out for up to ``outage_s`` seconds before
        :class:`~docstokg.errors.DatabaseOutage` is raised (see :meth:`retrying`).
        """
        parsed = parse_url(url)
        if pool_size is not None:
            engine_options["pool_size"] = pool_size
        engine = create_ledger_engine(parsed, **engine_options)
        return cls(parsed, engine, clock, engine_options, outage_s=outage_s)

    @property
    def url(self) -> URL:
        return self._url

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine.dialect.name

    def now(self) -> float:
        """The ledger's time (see :meth:`connect`), for code outside a unit of work."""
        if self._clock is not None:
            return self._clock()
        with self.unit_of_work(read_only=True) as uow:
            return uow.now()

    def unit_of_work(self, *, read_only: bool = False) -> UnitOfWork:
        """A new unit of work; ``read_only`` ones never take SQLite's write lock.

        The first one checks that the schema is this code's (once per Ledger),
        so an old or foreign database fails with advice, not "no such table".
        """
        if not self._schema_checked.is_set():
            self._check_schema()
        return UnitOfWork(
            self._connections,
            self._url,
            clock=self._clock,
            read_only=read_only,
            writer=self._writer,
            database_clock=self._database_clock,
            outage=self._outage,
        )

    def retrying(self, work: Callable[[], _T]) -> _T:
        """``work()``, done again after each passing database error, for up to ``outage_s``.

        For work that is safe to repeat whole, including after a COMMIT whose
        fate is unknown (fenced or keyed writes, reads).  A unit of work's
        start is always retried; this retries the statements and the COMMIT.
        """
        return self._outage.retrying(work)

    @property
    def group_commit(self) -> GroupCommit | None:
        """SQLite's shared writer (None on PostgreSQL), for diagnostics and tests."""
        return self._writer

    def upgrade(self, revision: str = "head") -> migrate.UpgradeResult:
        """Create, adopt or upgrade the schema to ``revision`` through Alembic.

        A server restarting under it is waited out: the upgrade is one
        transaction, so doing it again after a lost connection is safe.
        """

        def upgrade_once() -> migrate.UpgradeResult:
            try:
                return migrate.upgrade(self._url, revision, **self._engine_options)
            except DBAPIError as exc:
                raise database_error(self._url, exc) from exc

        result = self._outage.retrying(upgrade_once)
        # Connections opened before the upgrade may have cached the old schema.
        self._close_connections()
        self._engine.dispose()
        self._schema_checked.clear()
        return result

    def schema_status(self) -> migrate.SchemaStatus:
        """The Alembic revision and ``_meta.schema_version``; creates nothing."""
        return migrate.describe(self._url, **self._engine_options)

    def compact(self) -> None:
        """Give the space of deleted rows back: VACUUM, outside any transaction.

        SQLite rewrites the file (and truncates its WAL); PostgreSQL marks the
        space reusable and refreshes the planner's statistics.  It takes the
        write lock for as long as it runs: a maintenance-window operation.
        """
        self._close_connections()
        with self._engine.connect() as connection:
            autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
            if self.dialect == "sqlite":
                autocommit.exec_driver_sql("VACUUM")
                autocommit.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            else:
                autocommit.exec_driver_sql("VACUUM (ANALYZE) artifact_ops")
                autocommit.exec_driver_sql("VACUUM (ANALYZE) artifact_jobs")

    def close(self) -> None:
        self._close_connections()
        self._engine.dispose()

    def _close_connections(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._connections.close_all()

    def _check_schema(self) -> None:
        with self._schema_lock:  # one thread checks; the others wait for its verdict
            if not self._schema_checked.is_set():
                self._outage.retrying(self._check_schema_now)

    def _check_schema_now(self) -> None:
        try:
            with self._engine.connect() as connection:
                connection.execution_options(**{READ_ONLY_OPTION: True})
                migrate.check_current(connection)
        except DBAPIError as exc:
            raise database_error(self._url, exc) from exc
        self._schema_checked.set()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({self._url.render_as_string(hide_password=True)!r})"
