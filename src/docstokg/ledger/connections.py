"""Where a unit of work gets its connection: the bounded pool, for that unit of work only.

A worker holds a ledger connection only inside a unit of work, never while it
downloads: it checks one out of the engine's pool when the unit of work
begins and gives it back when it ends.  The pool is bounded (``pool_size``,
no overflow; see :func:`docstokg.ledger.engine.create_ledger_engine`), so a
process holds at most ``pool_size`` connections whatever its number of
workers, and a fleet of processes stays under PostgreSQL's
``max_connections``.  A unit of work does no I/O besides its statements, so a
connection comes back within milliseconds.  Checking one out and back costs
about 30 µs of CPU on PostgreSQL, because the pool pings only a connection
that sat idle (see the engine); a unit of work costs 400-500 µs, and keeping
connections per thread, as before, made no difference beyond the noise in
``bench/bench_runner.py`` and ``bench/bench_lifecycle.py``.

SQLite follows the same model, although its connections cost no server
process: its writes take turns on one writer connection, which counts in the
pool (:mod:`docstokg.ledger.group_commit`), and its reads borrow a connection
per unit of work like PostgreSQL's.

A worker that finds every connection busy waits for one, in turn (see
:class:`FairGate`) and as long as it takes: waiting for a connection is
queuing, not an outage.  Failing the job, or
starting the ``db_outage_s`` clock, because the pool was busy would turn load
into errors.  The pool's timeout only paces a warning that names the pool
size, so that a pool too small for its work, or a unit of work stuck on a
lock, shows in the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import TimeoutError as PoolTimeout

from docstokg.ledger.engine import POOL_WAIT_WARNING_S

log = logging.getLogger(__name__)


class PooledConnections:
    """Hands units of work their connections from ``engine``'s pool, first come, first served."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        size = pool_size_of(engine)
        # SQLite's group-commit writer keeps one pooled connection for itself.
        reserved = 1 if engine.dialect.name == "sqlite" else 0
        self._gate = FairGate(max((size or 64) - reserved, 1), pool_size=size)

    def acquire(self) -> Connection:
        """A connection for one unit of work; :meth:`release` gives it back."""
        self._gate.enter()
        handed_out = False
        try:
            connection = checkout(self._engine)
            handed_out = True
            return connection
        finally:
            if not handed_out:  # the checkout failed: our place in the gate goes to the next
                self._gate.leave()

    def release(self, connection: Connection) -> None:
        """Give ``connection`` back to the pool.

        A connection the driver found dead was invalidated by SQLAlchemy
        already, and the pool replaces it.
        """
        try:
            connection.close()
        finally:
            self._gate.leave()

    def close_all(self) -> None:
        """Nothing is held between units of work: disposing of the engine empties the pool."""


class FairGate:
    """At most ``size`` holders at once; the others are let in first come, first served.

    SQLAlchemy's pool lets a thread that just gave a connection back take it
    again at once, ahead of threads already waiting: with a thousand workers
    on eight connections, measured, some waited over 30 s while others went
    round again and again, and a lease keeper starved that long would let
    leases expire.  Here a slot that frees goes straight to the thread that
    has waited longest, so a wait lasts about (threads ahead / size) units of
    work.
    """

    def __init__(self, size: int, *, pool_size: int | None = None) -> None:
        self._lock = threading.Lock()
        self._free = size
        self._waiting: deque[threading.Lock] = deque()
        self._pool_size = pool_size

    def enter(self) -> None:
        with self._lock:
            if self._free > 0 and not self._waiting:
                self._free -= 1
                return
            turn = threading.Lock()
            turn.acquire()
            self._waiting.append(turn)
        started = time.monotonic()
        try:
            while not turn.acquire(timeout=POOL_WAIT_WARNING_S):
                _warn_busy(self._pool_size, time.monotonic() - started)
        except BaseException:  # interrupted while queuing: give up the place, or the slot
            with self._lock:
                queued = turn in self._waiting
                if queued:
                    self._waiting.remove(turn)
            if not queued:
                self.leave()  # the slot was handed to us meanwhile: pass it on
            raise

    def leave(self) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().release()  # the slot passes to it directly
            else:
                self._free += 1


def checkout(engine: Engine) -> Connection:
    """A connection from ``engine``'s pool; waits as long as every one is busy (see the module).

    A unit of work opened inside another (on the same thread) takes a second
    connection: with ``pool_size`` 1 it would wait for itself, which the
    warning below would show.  docstokg's own code opens none that way.
    """
    started = time.monotonic()
    while True:
        try:
            return engine.connect()
        except PoolTimeout:
            _warn_busy(pool_size_of(engine), time.monotonic() - started)


def _warn_busy(pool_size: int | None, waited_s: float) -> None:
    log.warning(
        "every ledger connection of this process (pool_size %s) stayed busy for %.0f s; still "
        "waiting. If this repeats, raise pool_size, or look for a unit of work stuck on a lock",
        pool_size,
        waited_s,
    )


def pool_size_of(engine: Engine) -> int | None:
    """The pool's size, for messages (None for pools without one, such as NullPool)."""
    size = getattr(engine.pool, "size", None)
    return int(size()) if callable(size) else None
