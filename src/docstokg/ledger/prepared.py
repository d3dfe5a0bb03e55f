"""The ledger's one executor: Core statements compiled once per dialect, run on the driver's cursor.

Every statement of :mod:`docstokg.ledger.statements` is a :class:`Prepared`
and runs here, the same way.  The lifecycle's hot path is a dozen short
statements per job; through SQLAlchemy's full execution pipeline
(``Connection.execute``) each costs about as much Python as the database
needs to run it, while compiled once and handed to the DBAPI cursor it costs
a dict lookup (``bench/bench_lifecycle.py --executors driver,core`` measures
the difference).  The statements are still built with SQLAlchemy Core (one
definition, both dialects) and run inside the unit of work's transaction on
its connection.

What ``Connection.execute`` would do and a statement needs is done here too:
bind processors of the parameters' types (only where a type has one),
expanding ``IN`` lists (compiled for the list's length on each call), one
statement per dialect where the two differ, executemany, the engine's
``before_cursor_execute`` listeners, and driver errors wrapped as SQLAlchemy
wraps them (a lost connection invalidated).  Rows come back as the driver
returns them (tuples of str, int, float, bool or None, and Decimal for
PostgreSQL numerics): callers convert what they need.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from types import MappingProxyType
from typing import Any

from sqlalchemy import Connection, Executable
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import Compiled, SQLCompiler

Row = Sequence[Any]
NO_PARAMETERS: Mapping[str, Any] = MappingProxyType({})


class _Form:
    """A statement compiled for one dialect: its text, and how parameters are bound to it."""

    __slots__ = ("bind", "compiled", "defaults", "expanding", "processors", "simple", "sql")

    def __init__(self, compiled: SQLCompiler) -> None:
        self.compiled = compiled
        self.sql = str(compiled)
        # Defaults only for values fixed in the statement; a parameter the
        # caller must give raises when it is missing (KeyError on positional
        # drivers, the driver's own error on named ones), never binds NULL.
        self.defaults = {
            name: bind.value for name, bind in compiled.binds.items() if not bind.required
        }
        # Types whose values the driver cannot take as they are (or that
        # SQLAlchemy normalises): converted on every call, the others not touched.
        # (An IN list's values are converted one by one once it is expanded.)
        self.processors: tuple[tuple[str, Callable[[Any], Any]], ...] = tuple(
            (name, process)
            for name, process in compiled._bind_processors.items()
            if callable(process) and not compiled.binds[name].expanding
        )
        # An IN list is rendered for its length on each call (post-compile).
        self.expanding = any(bind.expanding for bind in compiled.binds.values())
        order = tuple(compiled.positiontup) if compiled.positiontup else None
        self.bind = _binder(order)
        # Most hot statements: parameters go to the driver as given.
        self.simple = not self.processors and not self.expanding

    def arguments(self, params: Mapping[str, Any]) -> tuple[str, Any]:
        """The SQL text and the driver's arguments for ``params``."""
        values = {**self.defaults, **params}  # a copy: the caller's mapping is never bound
        for name, process in self.processors:
            value = values.get(name)
            if value is not None:
                values[name] = process(value)
        if not self.expanding:
            return self.sql, self.bind(values)
        state = self.compiled.construct_expanded_state(values)
        expanded = dict(state.parameters)
        processors: Mapping[str, Any] = state.processors
        for name, process in processors.items():
            if expanded.get(name) is not None:
                expanded[name] = process(expanded[name])
        order = tuple(state.positiontup) if state.positiontup else None
        return state.statement, _binder(order)(expanded)


def _binder(order: tuple[str, ...] | None) -> Callable[[Mapping[str, Any]], Any]:
    """Named paramstyles take the mapping; positional ones a tuple in ``order``.

    itemgetter: one C call instead of a loop in Python per statement.
    """
    if order is None:
        return _as_given
    if len(order) == 1:
        (only,) = order
        return lambda values: (values[only],)
    return itemgetter(*order)


class Prepared:
    """One named statement: a Core statement (or one per dialect), compiled on first use."""

    __slots__ = ("_by_dialect", "_statements", "statement")

    def __init__(self, statement: Executable | Mapping[str, Executable]) -> None:
        """``statement``, or a mapping from dialect name to the statement run on it."""
        if isinstance(statement, Mapping):
            self._statements: Mapping[str, Executable] | None = dict(statement)
            self.statement = next(iter(self._statements.values()))
        else:
            self._statements = None
            self.statement = statement
        self._by_dialect: dict[str, _Form] = {}

    def __getitem__(self, dialect: str) -> Executable:
        """The Core statement run on ``dialect`` (for EXPLAIN and tests)."""
        if self._statements is None:
            return self.statement
        return self._statements[dialect]

    # --- reading -----------------------------------------------------------------------

    def rows(self, connection: Connection, params: Mapping[str, Any] = NO_PARAMETERS) -> list[Row]:
        """Execute with ``params`` (by name) and return every row as a tuple."""
        return self._run(connection, params, fetch=True)  # type: ignore[return-value]

    def first(
        self, connection: Connection, params: Mapping[str, Any] = NO_PARAMETERS
    ) -> Row | None:
        rows = self.rows(connection, params)
        return rows[0] if rows else None

    def scalar(self, connection: Connection, params: Mapping[str, Any] = NO_PARAMETERS) -> Any:
        """The first column of the first row, or None if there is no row."""
        row = self.first(connection, params)
        return None if row is None else row[0]

    def column(
        self, connection: Connection, params: Mapping[str, Any] = NO_PARAMETERS
    ) -> list[Any]:
        """The first column of every row."""
        return [row[0] for row in self.rows(connection, params)]

    # --- writing -----------------------------------------------------------------------

    def count(self, connection: Connection, params: Mapping[str, Any] = NO_PARAMETERS) -> int:
        """Execute a write with ``params`` and return how many rows it changed.

        For the fenced writes whose only answer is "did it take effect": a
        RETURNING clause would cost the driver several more calls into SQLite,
        each of which lets go of the interpreter lock while a writer waits.
        """
        return self._run(connection, params, fetch=False)  # type: ignore[return-value]

    def many(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
        """Execute once per parameter set in one driver call; returns the rows changed in all."""
        if not rows:
            return 0
        form = self._compiled(connection)
        if form.expanding:
            return sum(self.count(connection, params) for params in rows)
        arguments = [form.arguments(params)[1] for params in rows]
        return self._call(connection, form.sql, arguments, rows, many=True, fetch=False)  # type: ignore[return-value]

    def _run(
        self, connection: Connection, params: Mapping[str, Any], *, fetch: bool
    ) -> list[Row] | int:
        form = self._by_dialect.get(connection.dialect.name) or self._compiled(connection)
        if form.simple:  # no call for the common case: this runs a dozen times per job
            sql, arguments = form.sql, form.bind({**form.defaults, **params})
        else:
            sql, arguments = form.arguments(params)
        return self._call(connection, sql, arguments, params, many=False, fetch=fetch)

    @staticmethod
    def _call(
        connection: Connection,
        sql: str,
        arguments: Any,
        params: Any,
        *,
        many: bool,
        fetch: bool,
    ) -> list[Row] | int:
        dbapi = connection.dialect.loaded_dbapi
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            if connection._has_events or connection.engine._has_events:
                for listener in connection.dispatch.before_cursor_execute:
                    listener(connection, cursor, sql, arguments, None, many)
            if many:
                cursor.executemany(sql, arguments)
                return int(cursor.rowcount)
            if not fetch:
                if connection.dialect.name == "sqlite":
                    # executemany with one row: the same statement, minus the
                    # lastrowid lookup sqlite3's execute() makes for every
                    # statement (one more release of the interpreter lock
                    # inside the writer).  psycopg's executemany costs more.
                    cursor.executemany(sql, [arguments])
                else:
                    cursor.execute(sql, arguments)
                return int(cursor.rowcount)
            cursor.execute(sql, arguments)
            return cursor.fetchall() if cursor.description else []
        except dbapi.Error as exc:
            # Wrapped as SQLAlchemy would, so the unit of work maps it to
            # docstokg's errors; a lost connection is invalidated as SQLAlchemy
            # would, so that the next unit of work opens a fresh one.
            driver = connection.connection.dbapi_connection
            lost = connection.dialect.is_disconnect(exc, driver, cursor)
            if lost:
                connection.invalidate(exc)
            raise DBAPIError.instance(
                sql, params, exc, dbapi.Error, connection_invalidated=lost
            ) from exc
        finally:
            if not connection.invalidated:
                cursor.close()

    def _compiled(self, connection: Connection) -> _Form:
        dialect = connection.dialect
        form = self._by_dialect.get(dialect.name)
        if form is None:
            compiled: Compiled = self[dialect.name].compile(dialect=dialect)  # type: ignore[attr-defined]
            assert isinstance(compiled, SQLCompiler)
            form = _Form(compiled)
            self._by_dialect[dialect.name] = form
        return form


def _as_given(values: Mapping[str, Any]) -> Mapping[str, Any]:
    return values
