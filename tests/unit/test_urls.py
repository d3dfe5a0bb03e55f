"""Database URLs are validated before anything connects."""

from __future__ import annotations

import pytest

from docstokg.errors import ConfigurationError
from docstokg.ledger.engine import parse_url


def test_plain_postgresql_means_psycopg3() -> None:
    assert parse_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert parse_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"


def test_sqlite_file_urls_pass() -> None:
    assert parse_url("sqlite:///rel/ledger.sqlite3").database == "rel/ledger.sqlite3"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("mysql://u@h/db", "unsupported backend 'mysql'"),
        ("postgresql+asyncpg://u@h/db", "driver 'asyncpg'"),
        ("not a url", "cannot parse"),
    ],
)
def test_unusable_urls_are_named_in_the_error(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        parse_url(url)


def test_passwords_are_not_echoed() -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_url("mysql://user:s3cret@h/db")
    assert "s3cret" not in str(raised.value)
