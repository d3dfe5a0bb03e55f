"""The one executor does what ``Connection.execute`` did for the statements it took over.

Every named statement of the ledger runs through
:class:`~docstokg.ledger.prepared.Prepared`, so it converts values whose type
has a bind processor, expands ``IN`` lists, picks the statement of the
connection's dialect, and runs executemany: on both backends.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Dialect, Integer, Text, TypeDecorator, bindparam, literal, select

from docstokg.ledger import statements
from docstokg.ledger.prepared import Prepared
from tests.dbtools import scratch_connection


class Shouted(TypeDecorator[str]):
    """A type whose values the driver must not get as given (SQLAlchemy converts them)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else value.upper()

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return value


SHOUTED = Prepared(select(bindparam("word", type_=Shouted)))
ONE_OF = Prepared(
    select(literal(5, Integer).in_(bindparam("numbers", type_=Integer, expanding=True)))
)
WHICH_DIALECT = Prepared(
    {"sqlite": select(literal("on SQLite")), "postgresql": select(literal("on PostgreSQL"))}
)


def test_a_value_is_converted_by_its_types_bind_processor(db_url: str) -> None:
    with scratch_connection(db_url) as connection:
        assert SHOUTED.scalar(connection, {"word": "quiet"}) == "QUIET"
        assert SHOUTED.scalar(connection, {"word": None}) is None


def test_an_in_list_is_expanded_for_its_length(db_url: str) -> None:
    with scratch_connection(db_url) as connection:
        assert ONE_OF.scalar(connection, {"numbers": [1, 5, 9]})
        assert not ONE_OF.scalar(connection, {"numbers": [1, 2]})
        assert ONE_OF.scalar(connection, {"numbers": [5]})


def test_a_statement_per_dialect_runs_the_connections_own(db_url: str) -> None:
    with scratch_connection(db_url) as connection:
        expected = "on SQLite" if connection.dialect.name == "sqlite" else "on PostgreSQL"
        assert WHICH_DIALECT.scalar(connection) == expected


def test_many_runs_each_parameter_set_and_counts_the_rows_changed(db_url: str) -> None:
    facts = [{"b_key": f"fact-{n}", "b_value": str(n)} for n in range(3)]
    with scratch_connection(db_url) as connection:
        assert statements.PUT_META_IF_ABSENT.many(connection, facts) == 3
        # Facts are written once: a second write of the same keys changes nothing.
        assert statements.PUT_META_IF_ABSENT.many(connection, facts) == 0
        assert statements.GET_META.scalar(connection, {"b_key": "fact-2"}) == "2"
