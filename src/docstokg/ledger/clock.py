"""PostgreSQL's clock, read now and then and carried forward in between.

Lease arithmetic on PostgreSQL uses the database's clock, so that workers on
machines whose clocks disagree still agree on when a lease ends.  Reading it
in every unit of work cost a round trip each: a fifth of the round trips of a
state transition, and on a busy runner a tenth of its time.  Here it is read
at most every ``resync_s`` seconds and carried forward in between by this
host's monotonic clock, which a change of the host's wall clock does not move.

Between two readings the error is half the round trip of the last reading
(its midpoint is taken as the moment the database read its clock) plus the
host's rate error over the interval: parts per million, so well under a
millisecond over ten seconds.  Leases last seconds to minutes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# How long a reading of the database's clock is carried forward, at most.
DEFAULT_RESYNC_S = 10.0


class DatabaseClock:
    """One ledger's reading of the database's clock, shared by its threads."""

    def __init__(
        self,
        *,
        resync_s: float = DEFAULT_RESYNC_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if resync_s < 0:
            raise ValueError(f"resync_s must be >= 0 seconds, got {resync_s!r}")
        self._resync_s = resync_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._anchor: tuple[float, float] | None = None  # (database time, monotonic time) of it
        self._last = float("-inf")  # what now() last returned: time never runs backwards

    def now(self, read_database: Callable[[], float]) -> float:
        """The database's time, in epoch seconds; ``read_database`` reads it when due.

        ``read_database`` runs outside this clock's lock (it is a round trip),
        on the caller's connection.
        """
        with self._lock:
            anchor = self._anchor
            if anchor is not None and self._monotonic() - anchor[1] < self._resync_s:
                return self._carried(anchor)
        before = self._monotonic()
        database_now = read_database()
        after = self._monotonic()
        with self._lock:
            anchor = (database_now, (before + after) / 2)
            self._anchor = anchor
            return self._carried(anchor)

    def _carried(self, anchor: tuple[float, float]) -> float:
        """``anchor`` carried forward to this moment, never earlier than the last answer."""
        database_at, monotonic_at = anchor
        value = max(database_at + (self._monotonic() - monotonic_at), self._last)
        self._last = value
        return value
