"""``Ledger``: the handle on one ledger database.

It owns the engine and the session factory for one URL; everything else
(services, runner, CLI) asks it for units of work.  Build one per process with
:meth:`Ledger.connect` and share it between threads: each unit of work gets its
own session and connection.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any, Self

from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import sessionmaker

from docstokg.ledger import migrate
from docstokg.ledger.engine import create_ledger_engine, parse_url
from docstokg.ledger.unit_of_work import Clock, UnitOfWork


class Ledger:
    """The entry point to one ledger database (SQLite file or PostgreSQL)."""

    def __init__(self, url: URL, engine: Engine, clock: Clock) -> None:
        self._url = url
        self._engine = engine
        self._clock = clock
        self._sessions = sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)

    @classmethod
    def connect(cls, url: str | URL, *, clock: Clock | None = None, **engine_options: Any) -> Self:
        """Open the ledger at ``url``; nothing touches the database until it is used.

        ``clock`` returns the current time in epoch seconds (default
        ``time.time``); tests inject one to move time.  ``engine_options`` go
        to :func:`sqlalchemy.create_engine` (``pool_size``, ``echo``...).
        """
        parsed = parse_url(url)
        return cls(parsed, create_ledger_engine(parsed, **engine_options), clock or time.time)

    @property
    def url(self) -> URL:
        return self._url

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine.dialect.name

    def now(self) -> float:
        return self._clock()

    def unit_of_work(self, *, read_only: bool = False) -> UnitOfWork:
        """A new unit of work; ``read_only`` ones never take SQLite's write lock."""
        return UnitOfWork(
            self._sessions,
            clock=self._clock,
            database=self._url.render_as_string(hide_password=True),
            read_only=read_only,
        )

    def upgrade(self, revision: str = "head") -> migrate.UpgradeResult:
        """Create, adopt or upgrade the schema to ``revision`` through Alembic."""
        result = migrate.upgrade(self._url, revision)
        # Connections opened before the upgrade may have cached the old schema.
        self._engine.dispose()
        return result

    def schema_status(self) -> migrate.SchemaStatus:
        """The Alembic revision and ``_meta.schema_version``; creates nothing."""
        return migrate.describe(self._url)

    def close(self) -> None:
        self._engine.dispose()

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
