"""One Core connection per thread, kept from one unit of work to the next.

A unit of work is short (a state transition is a handful of statements), so
checking a connection out of the pool and back for each one would cost about
as much as the transaction itself.  Each thread instead keeps its own
connection between units of work; outside a transaction it holds no lock on
SQLite and sits idle on PostgreSQL.

The pool stays the limit: at most ``pool_size - 1`` connections are kept (one
is left for nested units of work and the schema check), and those of threads
that have ended are reclaimed when that cap is reached.  A thread that cannot
keep one borrows a pooled connection per unit of work, as does a unit of work
opened while its thread's connection is busy (one nested in another).
"""

from __future__ import annotations

import threading

from sqlalchemy import Connection, Engine


class ThreadConnections:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._local = threading.local()
        self._lock = threading.Lock()
        self._kept: dict[Connection, threading.Thread] = {}
        self._reserved = 0
        size = getattr(engine.pool, "size", None)
        self._max_kept = max(size() - 1, 1) if callable(size) else 64

    def acquire(self) -> tuple[Connection, bool]:
        """A connection not in a transaction, and whether it is the thread's own (kept)."""
        own: Connection | None = getattr(self._local, "connection", None)
        if own is not None and (own.closed or own.invalidated):
            self._forget(own)
            own = None
        if own is None:
            return self._keep_new()
        if own.in_transaction():
            return self._engine.connect(), False
        return own, True

    def release(self, connection: Connection, *, kept: bool, broken: bool = False) -> None:
        """Done with ``connection``; ``broken`` ones (a failed BEGIN) are not reused."""
        if not kept:
            connection.close()
        elif broken or connection.invalidated:
            self._forget(connection)

    def close_all(self) -> None:
        """Close every thread's connection (their threads may be gone)."""
        with self._lock:
            kept, self._kept = self._kept, {}
        for connection in kept:
            connection.close()
        self._local = threading.local()

    def _keep_new(self) -> tuple[Connection, bool]:
        with self._lock:
            if len(self._kept) + self._reserved >= self._max_kept:
                ended = [c for c, thread in self._kept.items() if not thread.is_alive()]
                for stale in ended:
                    del self._kept[stale]
                    stale.close()
            may_keep = len(self._kept) + self._reserved < self._max_kept
            if may_keep:
                self._reserved += 1  # the slot is ours while we connect outside the lock
        connected: Connection | None = None
        try:
            connected = self._engine.connect()
        finally:
            if may_keep:
                with self._lock:
                    self._reserved -= 1
                    if connected is not None:
                        self._kept[connected] = threading.current_thread()
        if not may_keep:
            return connected, False
        self._local.connection = connected
        return connected, True

    def _forget(self, connection: Connection) -> None:
        with self._lock:
            self._kept.pop(connection, None)
        connection.close()
        self._local.connection = None
