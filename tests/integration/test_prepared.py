"""Prepared statements: parameters bound as each driver takes them, on both backends."""

from __future__ import annotations

from collections import defaultdict
from types import MappingProxyType
from typing import Any

import pytest
from sqlalchemy import bindparam, literal, select
from sqlalchemy.exc import DBAPIError

from docstokg.ledger.prepared import Prepared
from tests.dbtools import scratch_connection

ONE = Prepared(select(bindparam("a", type_=None)))
TWO_THE_SAME = Prepared(select(bindparam("a") + bindparam("b") + bindparam("a")))
FIXED = Prepared(select(literal(40) + bindparam("a")))
NONE = Prepared(select(literal(1)))


def test_parameters_are_bound_by_name_whatever_the_drivers_style(db_url: str) -> None:
    with scratch_connection(db_url) as connection:
        assert ONE.first(connection, {"a": 7}) == (7,)
        assert TWO_THE_SAME.first(connection, {"a": 1, "b": 10}) == (12,)
        assert FIXED.first(connection, {"a": 2}) == (42,)
        assert NONE.first(connection, MappingProxyType({})) == (1,)
        assert TWO_THE_SAME.first(connection, MappingProxyType({"a": 2, "b": 3})) == (7,)


def test_a_missing_parameter_raises_never_binds_null(db_url: str) -> None:
    lenient: defaultdict[str, Any] = defaultdict(lambda: None, {"b": 1})
    # SQLite's positional binding looks it up (KeyError); psycopg refuses it by name.
    with scratch_connection(db_url) as connection, pytest.raises((KeyError, DBAPIError)):
        TWO_THE_SAME.first(connection, lenient)
