"""Driver errors told apart, and an outage waited out.

The ledger's guarantee under faults (DESIGN invariant 11): a passing database
error is retried, a lasting one stops the run cleanly.  Here a driver error
becomes one of the :mod:`docstokg.errors` types at the ledger's boundary:

* **transient** (:class:`TransientDatabaseError`): the connection was lost or
  reset, the server is shutting down or starting up, too many clients, a
  serialization failure or deadlock, SQLite's lock held past its busy timeout
  or a full disk.  Doing the unit of work again may succeed.
* **permanent** (:class:`DatabaseUnavailable` and friends): a read-only file,
  tables that are gone, a wrong password.  Doing it again cannot help; the
  message says what to do instead.

:class:`OutageWatch` is what a caller does about a transient error: wait,
with growing pauses, until the database answers again, for at most
``db_outage_s`` from the first failure of the outage (shared by every thread
of a ledger, so a hundred workers do not each wait two minutes in turn).
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError

from docstokg.errors import DatabaseOutage, TransientDatabaseError

log = logging.getLogger(__name__)

DEFAULT_OUTAGE_S = 120.0
"""How long a database may stay unreachable before the run gives up (``db_outage_s``)."""

_FIRST_PAUSE_S = 0.05
_MAX_PAUSE_S = 2.0

# SQLSTATE classes and codes PostgreSQL uses for errors that pass: connection
# exceptions (08), operator intervention such as a shutdown or a restart (57P),
# insufficient resources such as too many clients (53), serialization
# failures and deadlocks (40001, 40P01), a lock not available (55P03).
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "57P", "53", "40001", "40P01", "55P03")
_TRANSIENT_SQLITE_CODES = frozenset(
    {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL}
)

_T = TypeVar("_T")


def is_transient(exc: DBAPIError) -> bool:
    """Would doing the same unit of work again, a moment later, be expected to succeed?"""
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        return isinstance(code, int) and code & 0xFF in _TRANSIENT_SQLITE_CODES
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate.startswith(_TRANSIENT_SQLSTATE_PREFIXES)
    # psycopg reports a refused or reset connection with no SQLSTATE at all.
    return isinstance(exc, OperationalError)


def database_name(url: URL) -> str:
    """The database as a user would name it, without its password."""
    if url.get_backend_name() == "sqlite":
        return f"the SQLite ledger {url.database}"
    return f"the ledger database {url.render_as_string(hide_password=True)}"


class OutageWatch:
    """One ledger's view of an outage: when it began, and how long callers may wait.

    An outage ends when a write commits again: on a full disk, reads go on
    succeeding while every write fails, and they must not restart the clock.
    Once it has lasted past ``outage_s``, every caller is told so at once for
    a while (:meth:`check`), so that a run winds down in seconds instead of
    each of its threads waiting out its own timeouts in turn.
    """

    def __init__(self, url: URL, *, outage_s: float = DEFAULT_OUTAGE_S) -> None:
        if not outage_s >= 0:
            raise ValueError(f"outage_s must be >= 0 seconds, got {outage_s!r}")
        self._url = url
        self.outage_s = outage_s
        self._lock = threading.Lock()
        self._since: float | None = None  # monotonic start of the outage under way
        # A database that never answered is misnamed or down from the start: that
        # is said at once, not waited out.
        self._answered = False
        self._gave_up: tuple[float, DatabaseOutage] | None = None  # when, and what was said

    def check(self) -> None:
        """Raise the outage just given up on, at once, for ``outage_s`` (at least 10 s) after."""
        gave_up = self._gave_up
        if gave_up is not None and time.monotonic() - gave_up[0] < max(self.outage_s, 10.0):
            raise gave_up[1]

    def wait(self, error: TransientDatabaseError, attempt: int) -> None:
        """Pause before attempt ``attempt + 1``; raises :class:`DatabaseOutage` once too long.

        Re-raises ``error`` at once if nothing ever answered at the database's
        address (a wrong host or port is said at once, not waited out); a
        server met restarting at start-up is waited for like any outage.
        """
        if error.server_seen:  # a server is there, restarting: what follows is waited out too
            self._answered = True
        if not self._answered:
            raise error
        self.check()
        now = time.monotonic()
        with self._lock:
            if self._since is None:
                self._since = now
                log.warning(
                    "%s is not answering (%s); waiting up to %g s (db_outage_s) for it",
                    database_name(self._url),
                    error,
                    self.outage_s,
                )
            lasted = now - self._since
        if lasted >= self.outage_s:
            raise self._give_up(error, lasted)
        pause = min(_MAX_PAUSE_S, _FIRST_PAUSE_S * 2**attempt)
        time.sleep(min(pause * random.uniform(0.5, 1.0), self.outage_s - lasted))

    def _give_up(self, error: TransientDatabaseError, lasted: float) -> DatabaseOutage:
        name = database_name(self._url)
        reason = str(error).removeprefix(f"cannot use {name}: ").removeprefix(f"{name} ")
        outage = DatabaseOutage(
            f"{name} stayed unreachable for {lasted:.0f} s "
            f"(db_outage_s = {self.outage_s:g}): {reason}. Check that it is up, then run "
            "again: the ledger holds everything committed so far, .part files are kept"
        )
        outage.__cause__ = error
        self._gave_up = (time.monotonic(), outage)
        return outage

    def answered(self) -> None:
        """The database answered (a read, a BEGIN): it exists; an outage may still be under way."""
        self._answered = True

    def recovered(self) -> None:
        """A write committed: an outage under way is over."""
        self._answered = True
        if self._since is None and self._gave_up is None:  # the usual case, read without the lock
            return
        with self._lock:
            since, self._since = self._since, None
            self._gave_up = None
        if since is not None:
            log.warning(
                "%s answers again after %.1f s", database_name(self._url), time.monotonic() - since
            )

    def retrying(self, work: Callable[[], _T]) -> _T:
        """``work()``, done again after each transient error until the outage lasts too long.

        Only for work that is safe to repeat whole, including after a COMMIT
        whose fate is unknown: every ledger write is fenced by a lease or
        keyed, so a repeat finds it done.
        """
        attempt = 0
        while True:
            try:
                result = work()
            except TransientDatabaseError as exc:
                self.wait(exc, attempt)
                attempt += 1
                continue
            self.answered()
            return result
