"""Alembic environment for the docstokg ledger.

The database URL comes from, in order: ``alembic -x db_url=...``, the
``DOCSTOKG_DB_URL`` environment variable, ``sqlalchemy.url`` in alembic.ini.
Code that already holds a connection (``docstokg db upgrade``, the tests)
passes it in ``config.attributes["connection"]`` and owns its transaction.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.pool import NullPool

from docstokg.errors import ConfigurationError
from docstokg.ledger.engine import create_ledger_engine, parse_url
from docstokg.ledger.models import Base

config = context.config
target_metadata = Base.metadata

if config.config_file_name is not None and config.attributes.get("connection") is None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _database_url() -> str:
    from_x = context.get_x_argument(as_dictionary=True).get("db_url")
    url = from_x or os.environ.get("DOCSTOKG_DB_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise ConfigurationError(
            "no database URL: pass `alembic -x db_url=URL ...`, set DOCSTOKG_DB_URL, "
            "or set sqlalchemy.url in alembic.ini"
        )
    return url


def _include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    # A ledger may share its database with other applications' tables: they are
    # not ours to drop, so autogenerate only looks at tables the models declare.
    return not (type_ == "table" and reflected and compare_to is None)


def _configure(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        (foreign_keys,) = connection.exec_driver_sql("PRAGMA foreign_keys").one()
        if foreign_keys:
            # Batch mode drops and re-creates tables: with foreign keys enforced
            # that DROP cascades and deletes every op row.
            raise ConfigurationError(
                "SQLite migrations must run with foreign keys off; use `docstokg db "
                "upgrade` or an engine from create_ledger_engine(url, foreign_keys=False)"
            )
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=_include_object,
    )


def run_migrations_offline() -> None:
    context.configure(
        url=parse_url(_database_url()),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=parse_url(_database_url()).get_backend_name() == "sqlite",
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    # Batch mode copies SQLite tables; enforced foreign keys would cascade deletes.
    engine = create_ledger_engine(_database_url(), foreign_keys=False, poolclass=NullPool)
    try:
        with engine.begin() as own_connection:
            _configure(own_connection)
            context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
