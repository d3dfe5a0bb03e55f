"""One Core connection per thread, kept from one unit of work to the next.

A unit of work is short (a state transition is a handful of statements), so
checking a connection out of the pool and back for each one would cost about
as much as the transaction itself.  Each thread instead keeps its own
connection between units of work; outside a transaction it holds no lock on
SQLite and sits idle on PostgreSQL.  A unit of work opened while the thread's
connection is busy (one nested in another) gets a pooled connection of its own.
"""

from __future__ import annotations

import threading

from sqlalchemy import Connection, Engine


class ThreadConnections:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._local = threading.local()
        self._lock = threading.Lock()
        self._kept: set[Connection] = set()

    def acquire(self) -> tuple[Connection, bool]:
        """A connection not in a transaction, and whether it is the thread's own (kept)."""
        own: Connection | None = getattr(self._local, "connection", None)
        if own is not None and (own.closed or own.invalidated):
            self._forget(own)
            own = None
        if own is None:
            own = self._engine.connect()
            self._local.connection = own
            with self._lock:
                self._kept.add(own)
            return own, True
        if own.in_transaction():
            return self._engine.connect(), False
        return own, True

    def release(self, connection: Connection, *, kept: bool) -> None:
        if not kept:
            connection.close()
        elif connection.invalidated:
            self._forget(connection)

    def close_all(self) -> None:
        """Close every thread's connection (their threads may be gone)."""
        with self._lock:
            kept, self._kept = self._kept, set()
        for connection in kept:
            connection.close()
        self._local = threading.local()

    def _forget(self, connection: Connection) -> None:
        with self._lock:
            self._kept.discard(connection)
        connection.close()
        self._local.connection = None
