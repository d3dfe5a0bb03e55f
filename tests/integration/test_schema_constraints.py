"""The models' CHECK lists and partial-index predicates match the migrated database.

``alembic check`` compares columns, indexes and constraints by name, not the
text of a CHECK or of a partial index's WHERE: a revision that writes
``state IN (...)`` without a new state, or an index predicate other than the
one the queries are written against, passes it.  These tests read both from
the database (SQLite: ``sqlite_master``; PostgreSQL: ``pg_get_constraintdef``
and ``pg_indexes.indexdef``) and compare them with what
:mod:`docstokg.ledger.models` declares.

SQLite keeps the text it was given, so both sides are compared as tokens
(case, spaces and enclosing parentheses aside).  PostgreSQL rewrites what it
stores (``IN`` as ``= ANY (ARRAY[...])``, casts, parentheses), so the model's
text is put through PostgreSQL too, in a transaction rolled back, and the two
canonical forms are compared.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import CheckConstraint, Connection, Index, Table, text

from docstokg.ledger.models import Base
from tests.dbtools import execute_sql, scratch_connection

LEDGER_TABLES = ("artifact_jobs", "artifact_ops")
_TOKEN = re.compile(r"'(?:[^']|'')*'|\w+|>=|<=|<>|!=|\S")


@dataclass(frozen=True)
class Declared:
    """A CHECK or a partial index's predicate, as the models or the database state it."""

    kind: str  # "check" or "where"
    name: str
    table: str
    sql: str


def model_predicates(dialect: str) -> dict[str, Declared]:
    """The CHECK constraints and partial-index predicates the models declare, by name."""
    found: dict[str, Declared] = {}
    for table in _ledger_tables():
        for constraint in table.constraints:
            if isinstance(constraint, CheckConstraint):
                name = str(constraint.name)
                found[name] = Declared("check", name, table.name, str(constraint.sqltext))
        for index in table.indexes:
            where = _index_where(index, dialect)
            if where is not None:
                found[str(index.name)] = Declared("where", str(index.name), table.name, where)
    return found


def _ledger_tables() -> Iterator[Table]:
    return (table for table in Base.metadata.sorted_tables if table.name in LEDGER_TABLES)


def _index_where(index: Index, dialect: str) -> str | None:
    where = index.dialect_options[dialect].get("where")
    return None if where is None else str(where)


def database_predicates(connection: Connection) -> dict[str, Declared]:
    """The CHECK constraints and partial-index predicates of the migrated database, by name."""
    if connection.dialect.name == "sqlite":
        return _sqlite_predicates(connection)
    return _postgresql_predicates(connection)


def _sqlite_predicates(connection: Connection) -> dict[str, Declared]:
    found: dict[str, Declared] = {}
    rows = connection.execute(
        text("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL")
    )
    for kind, name, table, sql in rows:
        if table not in LEDGER_TABLES:
            continue
        if kind == "table":
            for check_name, body in _sqlite_checks(sql):
                found[check_name] = Declared("check", check_name, table, body)
        elif kind == "index" and " WHERE " in sql:
            found[name] = Declared("where", name, table, sql.split(" WHERE ", 1)[1])
    return found


def _sqlite_checks(create_table: str) -> Iterator[tuple[str, str]]:
    """(name, condition) of each ``CONSTRAINT name CHECK (condition)`` of a CREATE TABLE."""
    for match in re.finditer(r"CONSTRAINT\s+(\w+)\s+CHECK\s*\(", create_table):
        start = match.end()
        depth, end = 1, start
        while depth:
            depth += {"(": 1, ")": -1}.get(create_table[end], 0)
            end += 1
        yield match.group(1), create_table[start : end - 1]


_PG_CHECKS = """
SELECT c.conname, t.relname, pg_get_constraintdef(c.oid)
FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
WHERE c.contype = 'c' AND t.relname IN ('artifact_jobs', 'artifact_ops')
"""
_PG_INDEXES = """
SELECT indexname, tablename, indexdef FROM pg_indexes
WHERE schemaname = current_schema() AND tablename IN ('artifact_jobs', 'artifact_ops')
"""


def _postgresql_predicates(connection: Connection) -> dict[str, Declared]:
    found: dict[str, Declared] = {}
    for name, table, definition in connection.execute(text(_PG_CHECKS)):
        found[name] = Declared("check", name, table, definition)
    for name, table, definition in connection.execute(text(_PG_INDEXES)):
        if " WHERE " in definition:
            found[name] = Declared("where", name, table, definition.split(" WHERE ", 1)[1])
    return found


def as_postgresql_stores_it(connection: Connection, declared: Declared) -> str:
    """The model's predicate as PostgreSQL stores it (created on the empty table, read, undone)."""
    probe = f"probe_{declared.name}"[:63]
    with connection.begin_nested() as savepoint:
        if declared.kind == "check":
            connection.execute(
                text(f"ALTER TABLE {declared.table} ADD CONSTRAINT {probe} CHECK ({declared.sql})")
            )
            stored = connection.execute(
                text("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = :n"),
                {"n": probe},
            ).scalar_one()
        else:
            connection.execute(
                text(f"CREATE INDEX {probe} ON {declared.table} ((1)) WHERE {declared.sql}")
            )
            stored = connection.execute(
                text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"), {"n": probe}
            ).scalar_one()
            stored = stored.split(" WHERE ", 1)[1]
        savepoint.rollback()
    return str(stored).replace(probe, declared.name)


def tokens(sql: str) -> list[str]:
    """``sql`` as tokens: keywords and names lower-cased, enclosing parentheses dropped."""
    found = [
        token if token.startswith("'") else token.lower() for token in _TOKEN.findall(sql.strip())
    ]
    while found[:1] == ["("] and found[-1:] == [")"] and _closes_at_end(found):
        found = found[1:-1]
    return found


def _closes_at_end(found: list[str]) -> bool:
    """Does the opening parenthesis at found[0] close only at the end?"""
    depth = 0
    for position, token in enumerate(found):
        depth += {"(": 1, ")": -1}.get(token, 0)
        if depth == 0:
            return position == len(found) - 1
    return False


def differences(url: str) -> list[str]:
    """How the migrated database's CHECKs and partial-index predicates differ from the models."""
    with scratch_connection(url) as connection:
        dialect = connection.dialect.name
        in_database = database_predicates(connection)
        in_models = model_predicates(dialect)
        found = [
            f"{name}: declared by the models, absent from the database"
            for name in sorted(in_models.keys() - in_database.keys())
        ] + [
            f"{name}: in the database, not declared by the models"
            for name in sorted(in_database.keys() - in_models.keys())
        ]
        for name in sorted(in_models.keys() & in_database.keys()):
            model, database = in_models[name], in_database[name]
            if dialect == "postgresql":
                expected = as_postgresql_stores_it(connection, model)
                same = expected == database.sql
            else:
                expected = model.sql
                same = tokens(expected) == tokens(database.sql)
            if not same:
                found.append(f"{name}: the models say {expected!r}, the database {database.sql!r}")
        return found


def test_the_models_checks_and_index_predicates_match_the_migrated_database(db_url: str) -> None:
    with scratch_connection(db_url) as connection:
        compared = database_predicates(connection)
    # What is compared: both CHECK lists and all seven partial-index predicates.
    assert {"ck_artifact_jobs_state", "ck_artifact_ops_status"} <= compared.keys()
    assert sum(declared.kind == "where" for declared in compared.values()) == 7
    assert differences(db_url) == []


def test_a_model_check_list_other_than_the_migrations_is_found(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = Base.metadata.tables["artifact_jobs"]
    (state_check,) = (c for c in jobs.constraints if isinstance(c, CheckConstraint))
    # A state added to the models whose revision was forgotten.
    monkeypatch.setattr(
        state_check, "sqltext", text(str(state_check.sqltext).replace(")", ", 'VERIFIED')"))
    )

    (found,) = differences(db_url)
    assert found.startswith("ck_artifact_jobs_state: the models say"), found
    assert "VERIFIED" in found


def test_a_model_index_predicate_other_than_the_migrations_is_found(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = Base.metadata.tables["artifact_ops"]
    (retried,) = (index for index in ops.indexes if index.name == "ix_artifact_ops_retried")
    for dialect in ("sqlite", "postgresql"):
        monkeypatch.setitem(retried.dialect_options[dialect], "where", text("attempt > 2"))

    (found,) = differences(db_url)
    assert found.startswith("ix_artifact_ops_retried: the models say"), found


def test_a_migrated_predicate_other_than_the_models_is_found(db_url: str) -> None:
    # As a revision that rewrote the index with another predicate would leave it.
    execute_sql(db_url, "DROP INDEX ix_artifact_ops_unhealthy")
    execute_sql(
        db_url,
        "CREATE INDEX ix_artifact_ops_unhealthy ON artifact_ops (op_type, status) "
        "WHERE status IN ('FAILED')",
    )

    (found,) = differences(db_url)
    assert found.startswith("ix_artifact_ops_unhealthy: the models say"), found


def test_a_migrated_check_list_other_than_the_models_is_found(db_url: str) -> None:
    if db_url.startswith("sqlite"):
        # SQLite cannot alter a CHECK: the table's stored SQL is edited instead.
        _sqlite_rewrite_schema(db_url, "'ABANDONED')", "'ABANDONED', 'PAUSED')")
    else:
        execute_sql(db_url, "ALTER TABLE artifact_ops DROP CONSTRAINT ck_artifact_ops_status")
        execute_sql(
            db_url,
            "ALTER TABLE artifact_ops ADD CONSTRAINT ck_artifact_ops_status "
            "CHECK (status IN ('IN_PROGRESS', 'SUCCEEDED', 'FAILED', 'ABANDONED', 'PAUSED'))",
        )

    (found,) = differences(db_url)
    assert found.startswith("ck_artifact_ops_status: the models say"), found
    assert "PAUSED" in found


def _sqlite_rewrite_schema(url: str, old: str, new: str) -> None:
    """Edit artifact_ops' stored CREATE TABLE (the documented writable_schema route)."""
    with scratch_connection(url) as connection:
        connection.execute(text("PRAGMA writable_schema = ON"))
        connection.execute(
            text(
                "UPDATE sqlite_master SET sql = replace(sql, :old, :new) "
                "WHERE type = 'table' AND name = 'artifact_ops'"
            ),
            {"old": old, "new": new},
        )
        connection.execute(text("PRAGMA writable_schema = OFF"))
