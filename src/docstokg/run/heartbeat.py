"""Keeping leases alive while their jobs run, and the periodic reconciliation.

One background thread per run renews every lease a worker holds, about every
third of the TTL, so a job may take far longer than one TTL; a lease that
cannot be renewed (another worker was granted the job) is flagged, and its
worker stops at the next chunk instead of writing to a job it lost.  So does
a worker whose lease ran out by this process's own reckoning (its renewals
failed for a whole TTL): by then another worker may hold the job and be
appending to the same ``.part``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from docstokg.errors import LeaseLost, LedgerError
from docstokg.ledger import Lease, Ledger
from docstokg.services import renew_lease

log = logging.getLogger(__name__)

# The clock of lease deadlines: monotonic, so that neither this host's wall
# clock nor its drift from the ledger's matters.  Tests replace it.
_monotonic = time.monotonic


@dataclass(eq=False)
class HeldLease:
    """A worker's lease while it works on the job.

    ``lost`` is set when renewing it was refused, or when it ran out;
    ``deadline`` (on :data:`_monotonic`) is when it runs out unless renewed.
    """

    lease: Lease
    deadline: float
    lost: threading.Event = field(default_factory=threading.Event)

    def ended(self) -> bool:
        """Lost, or past its deadline: cheap enough to ask before every chunk."""
        return self.lost.is_set() or _monotonic() >= self.deadline


class LeaseKeeper:
    """Renews held leases every ttl/3 and runs ``maintenance`` every ``maintenance_every_s``."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        ttl_s: float,
        maintenance: Callable[[], None] | None = None,
        maintenance_every_s: float = 300.0,
    ) -> None:
        self._ledger = ledger
        self._ttl_s = ttl_s
        self._renew_every_s = ttl_s / 3
        self._maintenance = maintenance
        self._maintenance_every_s = maintenance_every_s
        self._held: set[HeldLease] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        # Two threads: a slow reconciliation pass (a big staging folder, a wait
        # for SQLite's write lock) must never hold up the renewals.
        self._threads = [
            threading.Thread(target=self._renew_loop, name="docstokg-lease-keeper", daemon=True)
        ]
        if maintenance is not None:
            self._threads.append(
                threading.Thread(
                    target=self._maintenance_loop, name="docstokg-reconciler", daemon=True
                )
            )

    def __enter__(self) -> LeaseKeeper:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closed.set()
        for thread in self._threads:
            thread.join()

    @contextmanager
    def holding(self, lease: Lease) -> Iterator[HeldLease]:
        """Renew ``lease`` while the block runs; call it as soon as the lease is granted.

        The deadline counts the TTL from here, not from the grant: the claim
        just before it is the one moment not counted.
        """
        held = HeldLease(lease, deadline=_monotonic() + self._ttl_s)
        with self._lock:
            self._held.add(held)
        try:
            yield held
        finally:
            with self._lock:
                self._held.discard(held)

    def _renew_loop(self) -> None:
        while not self._closed.wait(self._renew_every_s):
            self._renew_all()

    def _maintenance_loop(self) -> None:
        while not self._closed.wait(self._maintenance_every_s):
            self._run_maintenance()

    def _renew_all(self) -> None:
        with self._lock:
            held_now = list(self._held)
        for held in held_now:
            asked_at = _monotonic()  # the ledger's new lease_until counts from later
            try:
                renew_lease(self._ledger, held.lease, ttl_s=self._ttl_s)
            except LeaseLost:
                log.warning("lost the lease on job %s; its worker stops", held.lease.job_id)
                held.lost.set()
            except LedgerError as exc:
                log.warning("could not renew the lease on job %s: %s", held.lease.job_id, exc)
                if held.ended():
                    # Expired for all we know: another worker may own the job
                    # (and its .part) by now, so stop before touching either.
                    held.lost.set()
            else:
                held.deadline = asked_at + self._ttl_s

    def _run_maintenance(self) -> None:
        assert self._maintenance is not None
        try:
            self._maintenance()
        except (LedgerError, OSError) as exc:
            log.warning("periodic reconciliation failed (tried again later): %s", exc)
