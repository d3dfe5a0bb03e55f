"""The unit of work: one step in the ledger, all of it or nothing.

Usage::

    with ledger.unit_of_work() as uow:
        job = uow.jobs.plan(spec, now=uow.now())
        uow.commit()

Commit is explicit; leaving the block without it, or with an exception, rolls
back.  The block is meant to be short: no network or disk I/O inside it.

On PostgreSQL a unit of work is one transaction on the thread's connection.
On SQLite (one writer at a time) the write units of work of a process take
turns on one writer connection and commit in groups (see
:mod:`docstokg.ledger.group_commit`): each is still atomic, sees every write
before it, and its ``commit()`` returns only after the COMMIT that holds it;
the writer's lock is taken with ``BEGIN IMMEDIATE`` so a read can never fail
half-way upgrading to a write.  Read-only units of work run on the thread's
own connection.

A unit of work is a Core connection and its transaction, not an ORM session:
repositories run compiled Core statements, which keeps a state transition to a
few dozen microseconds of Python.  An ORM session joined to the same
transaction is made only when asked for (test factories use it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Self, TypeVar

from sqlalchemy import Connection, RootTransaction
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from docstokg.errors import LedgerError, TransientDatabaseError
from docstokg.ledger.clock import DatabaseClock
from docstokg.ledger.connections import PooledConnections
from docstokg.ledger.engine import READ_ONLY_OPTION, database_error
from docstokg.ledger.faults import OutageWatch
from docstokg.ledger.group_commit import GroupCommit
from docstokg.ledger.reports import ReportRepository
from docstokg.ledger.repositories import JobRepository, MetaRepository, OpRepository
from docstokg.ledger.statements import DATABASE_NOW

Clock = Callable[[], float]
_T = TypeVar("_T")


class UnitOfWork:
    """One transaction, and the repositories that work inside it."""

    def __init__(
        self,
        connections: PooledConnections,
        url: URL,
        *,
        clock: Clock | None,
        read_only: bool = False,
        writer: GroupCommit | None = None,
        database_clock: DatabaseClock | None = None,
        outage: OutageWatch | None = None,
    ) -> None:
        self._writer = writer
        self._outage = outage
        self._database_clock = database_clock
        self._connections = connections
        self._url = url
        self._clock = clock
        self._read_only = read_only
        self._connection: Connection | None = None
        self._transaction: RootTransaction | None = None
        self._session: Session | None = None
        self._jobs: JobRepository | None = None
        self._ops: OpRepository | None = None
        self._meta: MetaRepository | None = None
        self._reports: ReportRepository | None = None

    def __enter__(self) -> Self:
        """Begin; a passing error (the server restarting, SQLite locked) is waited out.

        Nothing has happened yet when the connection or its BEGIN fails, so
        beginning again is always safe; the wait ends after ``db_outage_s``
        with :class:`DatabaseOutage`.
        """
        if self._connection is not None:
            raise LedgerError("a unit of work cannot be entered twice; open a new one")
        attempt = 0
        while True:
            if self._outage is not None:
                self._outage.check()  # an outage given up on: said at once, nothing waited
            try:
                self._begin()
            except TransientDatabaseError as exc:
                if self._outage is None:
                    raise
                self._outage.wait(exc, attempt)
                attempt += 1
                continue
            if self._outage is not None:
                self._outage.answered()
            return self

    def _begin(self) -> None:
        if self._writer is not None and not self._read_only:
            connection = None
            try:
                connection = self._writer.enter()
                self._connection = connection
            except BaseException:  # interrupted once the writer was ours: hand it on
                if connection is not None:
                    self._writer.release_if_held()
                raise
            return
        connection = None
        try:
            connection = self._connections.acquire()
            if connection.get_execution_options().get(READ_ONLY_OPTION, False) != self._read_only:
                connection.execution_options(**{READ_ONLY_OPTION: self._read_only})
            self._transaction = connection.begin()
        except DBAPIError as exc:
            if connection is not None:
                self._connections.release(connection)
            raise database_error(self._url, exc) from exc
        self._connection = connection

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._connection is not None:
            try:
                self._end(commit=False, failing=exc_type is not None)
            except DBAPIError as rollback_error:
                # The connection died (a server restart cuts it mid-statement): the
                # ROLLBACK fails too.  The body's own error, if any, says more.
                if exc is None:
                    raise database_error(self._url, rollback_error) from rollback_error
                if not isinstance(exc, SQLAlchemyError):
                    return  # the body's exception propagates as it was
        if isinstance(exc, DBAPIError):  # a statement failed: the caller meets docstokg's errors
            raise database_error(self._url, exc) from exc
        if isinstance(exc, SQLAlchemyError):  # misuse or a closed connection, not the driver
            raise LedgerError(f"the ledger refused a unit of work: {exc}") from exc

    @property
    def jobs(self) -> JobRepository:
        if self._jobs is None:
            self._jobs = JobRepository(self._require(self._connection))
        return self._jobs

    @property
    def ops(self) -> OpRepository:
        if self._ops is None:
            self._ops = OpRepository(self._require(self._connection))
        return self._ops

    @property
    def meta(self) -> MetaRepository:
        """Facts about the ledger itself, such as the store it fills."""
        if self._meta is None:
            self._meta = MetaRepository(self._require(self._connection))
        return self._meta

    @property
    def reports(self) -> ReportRepository:
        """Operators' counts and summaries (read-only queries)."""
        if self._reports is None:
            self._reports = ReportRepository(self._require(self._connection))
        return self._reports

    @property
    def session(self) -> Session:
        """An ORM session inside this transaction, for tests' factories.

        Objects it loads die with the unit of work; production code reads
        through the repositories, which return immutable records.
        """
        connection = self._require(self._connection)
        if self._session is None:
            # Its own savepoint: a failed flush rolls back the session's work
            # only, and the unit of work still owns (and ends) the transaction.
            self._session = Session(
                bind=connection, autoflush=False, join_transaction_mode="create_savepoint"
            )
        return self._session

    def now(self) -> float:
        """The ledger's clock, in epoch seconds.

        An injected clock wins; otherwise PostgreSQL's clock (one clock for
        every machine; read now and then, see :mod:`docstokg.ledger.clock`),
        or this host's for SQLite (whose workers share a host).
        """
        if self._clock is not None:
            return self._clock()
        connection = self._require(self._connection)
        if connection.dialect.name == "postgresql":
            if self._database_clock is None:
                return _read_database_clock(connection)
            return self._database_clock.now(lambda: _read_database_clock(connection))
        return time.time()

    def commit(self) -> None:
        """Commit the transaction; the unit of work cannot be used afterwards."""
        self._require(self._connection)
        read_only = self._read_only
        try:
            self._end(commit=True)
        except DBAPIError as exc:
            raise database_error(self._url, exc) from exc
        except SQLAlchemyError as exc:
            raise LedgerError(f"the ledger could not commit: {exc}") from exc
        if self._outage is not None and not read_only:
            self._outage.recovered()  # a write committed: any outage is over

    def rollback(self) -> None:
        """Discard the transaction; the unit of work cannot be used afterwards."""
        self._require(self._connection)
        self._end(commit=False)

    def _end(self, *, commit: bool, failing: bool = False) -> None:
        connection, transaction, session = self._connection, self._transaction, self._session
        self._connection = self._transaction = self._session = None
        self._jobs = self._ops = None
        self._meta = None
        self._reports = None
        if self._writer is not None and not self._read_only:
            self._end_shared(session, commit=commit, failing=failing)
            return
        try:
            if session is not None:
                if commit:
                    session.commit()  # releases its savepoint into our transaction
                session.close()
            if transaction is not None and transaction.is_active:
                if commit:
                    transaction.commit()
                else:
                    transaction.rollback()
            elif commit:
                raise LedgerError("the transaction was already rolled back; nothing was committed")
        finally:
            if connection is not None:
                self._connections.release(connection)

    def _end_shared(self, session: Session | None, *, commit: bool, failing: bool) -> None:
        """End this unit of work's part of the writer's shared transaction (SQLite)."""
        writer = self._writer
        assert writer is not None
        try:
            if session is not None:
                if commit:
                    session.commit()  # releases its savepoint into ours
                session.close()
        except BaseException:  # the session's flush failed (or Ctrl-C): its part rolls back
            writer.leave(commit=False, failing=True)
            raise
        writer.leave(commit=commit, failing=failing)

    @staticmethod
    def _require(value: _T | None) -> _T:
        if value is None:
            raise LedgerError(
                "this unit of work is not active: enter it with `with ledger.unit_of_work() "
                "as uow:` and do not use it after commit() or rollback()"
            )
        return value


def _read_database_clock(connection: Connection) -> float:
    [(database_now,)] = DATABASE_NOW.rows(connection, {})
    return float(database_now)
