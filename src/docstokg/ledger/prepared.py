"""Core statements compiled once per dialect and run straight on the driver's cursor.

The lifecycle's hot path is a dozen short statements per job.  Through
SQLAlchemy's full execution pipeline each costs about as much Python as the
database needs to run it; compiled once and handed to the DBAPI cursor, it
costs a dict lookup.  The statements are still built with SQLAlchemy Core
(one definition, both dialects, no hand-written SQL strings) and run inside
the unit of work's transaction on its connection.

Only statements whose parameters need no type conversion (str, int, float,
None) and that have no expanding ``IN`` lists belong here; anything else goes
through ``Connection.execute``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Executable
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import Compiled


class _Form:
    """A statement compiled for one dialect: its text, and how parameters are bound to it."""

    __slots__ = ("bind", "defaults", "sql")

    def __init__(self, sql: str, order: tuple[str, ...] | None, defaults: dict[str, Any]) -> None:
        self.sql = sql
        self.defaults = defaults  # values fixed in the statement
        # Named styles take the mapping; positional ones a tuple in ``order``
        # (itemgetter: one C call instead of a loop in Python per statement).
        self.bind: Callable[[Mapping[str, Any]], Any]
        if order is None:
            self.bind = _as_given
        elif len(order) == 1:
            (only,) = order
            self.bind = lambda values: (values[only],)
        else:
            self.bind = itemgetter(*order)


class Prepared:
    """One Core statement, compiled on first use for each dialect."""

    __slots__ = ("_by_dialect", "statement")

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._by_dialect: dict[str, _Form] = {}

    def rows(self, connection: Connection, params: Mapping[str, Any]) -> list[Sequence[Any]]:
        """Execute with ``params`` (by name) and return every row as a tuple."""
        return self._run(connection, params, fetch=True)  # type: ignore[return-value]

    def count(self, connection: Connection, params: Mapping[str, Any]) -> int:
        """Execute a write with ``params`` and return how many rows it changed.

        For the fenced writes whose only answer is "did it take effect": a
        RETURNING clause would cost the driver several more calls into SQLite,
        each of which lets go of the interpreter lock while a writer waits.
        """
        return self._run(connection, params, fetch=False)  # type: ignore[return-value]

    def _run(
        self, connection: Connection, params: Mapping[str, Any], *, fetch: bool
    ) -> list[Sequence[Any]] | int:
        form = self._compiled(connection)
        values = {**form.defaults, **params}  # a copy: the caller's mapping is never bound
        dbapi = connection.dialect.loaded_dbapi
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            bound = form.bind(values)
            if not fetch:
                if connection.dialect.name == "sqlite":
                    # executemany with one row: the same statement, minus the
                    # lastrowid lookup sqlite3's execute() makes for every
                    # statement (one more release of the interpreter lock
                    # inside the writer).  psycopg's executemany costs more.
                    cursor.executemany(form.sql, [bound])
                else:
                    cursor.execute(form.sql, bound)
                return int(cursor.rowcount)
            cursor.execute(form.sql, bound)
            return cursor.fetchall() if cursor.description else []
        except dbapi.Error as exc:
            # Wrapped as SQLAlchemy would, so callers meet one family of errors;
            # a lost connection is invalidated as SQLAlchemy would, so that the
            # next unit of work opens a fresh one.
            driver = connection.connection.dbapi_connection
            lost = connection.dialect.is_disconnect(exc, driver, cursor)
            if lost:
                connection.invalidate(exc)
            raise DBAPIError.instance(
                form.sql, values, exc, dbapi.Error, connection_invalidated=lost
            ) from exc
        finally:
            if not connection.invalidated:
                cursor.close()

    def first(self, connection: Connection, params: Mapping[str, Any]) -> Sequence[Any] | None:
        rows = self.rows(connection, params)
        return rows[0] if rows else None

    def _compiled(self, connection: Connection) -> _Form:
        dialect = connection.dialect
        compiled = self._by_dialect.get(dialect.name)
        if compiled is None:
            form: Compiled = self.statement.compile(dialect=dialect)  # type: ignore[attr-defined]
            order = tuple(form.positiontup) if form.positiontup else None  # type: ignore[attr-defined]
            # Defaults only for values fixed in the statement; a parameter the
            # caller must give raises when it is missing (KeyError on positional
            # drivers, the driver's own error on named ones), never binds NULL.
            defaults = {
                name: bind.value
                for name, bind in form.binds.items()  # type: ignore[attr-defined]
                if not bind.required
            }
            compiled = _Form(str(form), order, defaults)
            self._by_dialect[dialect.name] = compiled
        return compiled


def _as_given(values: Mapping[str, Any]) -> Mapping[str, Any]:
    return values
