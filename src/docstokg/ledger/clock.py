"""PostgreSQL's clock, read now and then and carried forward in between.

Lease arithmetic on PostgreSQL uses the database's clock, so that workers on
machines whose clocks disagree still agree on when a lease ends.  Reading it
in every unit of work cost a round trip each: a fifth of the round trips of a
state transition, and on a busy runner a sixth of its time.  Here it is read
at most every ``resync_s`` seconds and carried forward in between by this
host's monotonic clock, which a change of the host's wall clock does not move.

Between two readings the error is half the round trip of the last reading
(its midpoint is taken as the moment the database read its clock) plus the
host's rate error over the interval: parts per million, so well under a
millisecond over ten seconds.  Leases last seconds to minutes.

A step of the *server's* clock (NTP, a restored VM, a failover) reaches each
process at its next reading, so for up to ``resync_s`` processes may disagree
by the size of the step.  After a step back, answers go back with the
database's, as every process's do sooner or later: holding time still until the
database caught up would make this process judge leases granted by the others
expired.  Only a regression within what two readings may disagree by (their
round trips) is hidden, so that time seen by one process does not jitter back.

A clock handed to :meth:`~docstokg.ledger.Ledger.connect` *is* the ledger's
time (tests move it to expire leases), except a :class:`HostClock`: that is a
machine's own wall clock, which on PostgreSQL never enters lease arithmetic
(see :func:`lease_clock`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# A clock: epoch seconds, as time.time() gives them.
Clock = Callable[[], float]

# How long a reading of the database's clock is carried forward, at most.
DEFAULT_RESYNC_S = 10.0


@dataclass(frozen=True, slots=True)
class _Reading:
    database_at: float  # the database's time, epoch seconds ...
    monotonic_at: float  # ... at this moment of the monotonic clock (the trip's midpoint)
    uncertainty_s: float  # the reading's round trip: how far it can be off

    def carried(self, monotonic_now: float) -> float:
        return self.database_at + (monotonic_now - self.monotonic_at)


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
        self._reading: _Reading | None = None
        self._refreshing = False  # a thread is reading the database: the others carry on
        self._last = float("-inf")  # the last answer ...
        self._tolerance_s = 0.0  # ... and how far behind it the last two readings may differ

    def now(self, read_database: Callable[[], float]) -> float:
        """The database's time, in epoch seconds; ``read_database`` reads it when due.

        ``read_database`` runs outside this clock's lock (it is a round trip),
        on the caller's connection.  While one thread reads, the others go on
        with the reading before; only when there is none yet do they read too.
        """
        with self._lock:
            reading = self._reading
            if reading is not None:
                due = self._monotonic() - reading.monotonic_at >= self._resync_s
                if not due or self._refreshing:
                    return self._answer(reading)
                self._refreshing = True
        try:
            before = self._monotonic()
            database_now = read_database()
            after = self._monotonic()
        except BaseException:  # whatever stopped the reading is re-raised once it is undone
            with self._lock:
                self._refreshing = False  # the next caller reads again
            raise
        fresh = _Reading(database_now, (before + after) / 2, after - before)
        with self._lock:
            self._refreshing = False
            previous = self._reading
            # Of two readings made at once, the later one stands.
            if previous is not None and fresh.monotonic_at < previous.monotonic_at:
                return self._answer(previous)
            self._reading = fresh
            self._tolerance_s = fresh.uncertainty_s + (
                previous.uncertainty_s if previous is not None else 0.0
            )
            return self._answer(fresh)

    def _answer(self, reading: _Reading) -> float:
        """``reading`` carried forward to now, hiding a regression within the readings' error."""
        value = reading.carried(self._monotonic())
        if self._last - self._tolerance_s <= value < self._last:
            value = self._last
        self._last = value
        return value


class HostClock:
    """This machine's wall clock, ``offset_s`` seconds off: what a host whose clock is wrong reads.

    Machines' clocks disagree (by seconds; by minutes after a VM is restored
    from a snapshot), so a host's clock must not decide when a lease granted
    by another host ends: on PostgreSQL the ledger keeps the database's clock
    for leases whatever HostClock it is given (:func:`lease_clock`); on
    SQLite, whose workers share one host, the host's clock is the ledger's.
    A fleet test injects offset ones to prove that drift changes nothing.
    """

    def __init__(self, offset_s: float = 0.0, *, wall: Clock = time.time) -> None:
        self.offset_s = offset_s
        self._wall = wall

    def __call__(self) -> float:
        return self._wall() + self.offset_s

    def __repr__(self) -> str:
        return f"HostClock(offset_s={self.offset_s!r})"


def lease_clock(clock: Clock | None, dialect: str) -> Clock | None:
    """The clock of lease arithmetic when ``clock`` is injected into a ledger on ``dialect``.

    None means the ledger's own: PostgreSQL's clock (one for every machine)
    or, on SQLite, this host's.  Any other injected clock is used as it is:
    tests move the ledger's time with one.
    """
    if isinstance(clock, HostClock) and dialect == "postgresql":
        return None
    return clock
