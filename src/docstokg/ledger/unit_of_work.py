"""The unit of work: one database transaction around one step.

Usage::

    with ledger.unit_of_work() as uow:
        job = uow.jobs.plan(spec, now=uow.now())
        uow.commit()

Commit is explicit; leaving the block without it, or with an exception, rolls
back.  The transaction starts when the block is entered (on SQLite with
``BEGIN IMMEDIATE``, so the write lock is held from the first read), and the
block is meant to be short: no network or disk I/O inside it.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Self, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from docstokg.errors import DatabaseUnavailable, LedgerError
from docstokg.ledger.engine import READ_ONLY_OPTION
from docstokg.ledger.repositories import JobRepository, MetaRepository, OpRepository

Clock = Callable[[], float]
_T = TypeVar("_T")


class UnitOfWork:
    """One transaction, and the repositories that work inside it."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        clock: Clock,
        database: str,
        read_only: bool = False,
    ) -> None:
        self._session_factory = session_factory
        self._clock = clock
        self._database = database
        self._read_only = read_only
        self._session: Session | None = None
        self._jobs: JobRepository | None = None
        self._ops: OpRepository | None = None
        self._meta: MetaRepository | None = None

    def __enter__(self) -> Self:
        if self._session is not None:
            raise LedgerError("a unit of work cannot be entered twice; open a new one")
        session = self._session_factory()
        try:
            connection = session.connection(execution_options={READ_ONLY_OPTION: self._read_only})
        except DBAPIError as exc:
            session.close()
            reason = " ".join(str(exc.orig).split())  # drivers' messages span lines
            raise DatabaseUnavailable(
                f"cannot open the ledger database {self._database}: {reason}. "
                "Check that the URL is right, that a SQLite file is a ledger database "
                "(or a path where one may be created), and that a PostgreSQL server is up."
            ) from exc
        self._session = session
        self._jobs = JobRepository(connection)
        self._ops = OpRepository(connection)
        self._meta = MetaRepository(connection)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        session, self._session = self._session, None
        self._jobs = self._ops = self._meta = None
        if session is not None:
            try:
                session.rollback()
            finally:
                session.close()

    @property
    def session(self) -> Session:
        """The ORM session of this transaction (for tests' factories; repositories use Core)."""
        return self._require(self._session)

    @property
    def jobs(self) -> JobRepository:
        return self._require(self._jobs)

    @property
    def ops(self) -> OpRepository:
        return self._require(self._ops)

    @property
    def meta(self) -> MetaRepository:
        return self._require(self._meta)

    def now(self) -> float:
        """The ledger's clock, in epoch seconds."""
        return self._clock()

    def commit(self) -> None:
        """Commit the transaction; the unit of work cannot be used afterwards."""
        session = self._require(self._session)
        session.commit()
        session.close()
        self._session = None
        self._jobs = self._ops = self._meta = None

    def rollback(self) -> None:
        """Discard the transaction; the unit of work cannot be used afterwards."""
        session = self._require(self._session)
        self._session = None
        self._jobs = self._ops = self._meta = None
        try:
            session.rollback()
        finally:
            session.close()

    @staticmethod
    def _require(value: _T | None) -> _T:
        if value is None:
            raise LedgerError(
                "this unit of work is not active: enter it with `with ledger.unit_of_work() "
                "as uow:` and do not use it after commit() or rollback()"
            )
        return value
