"""How hard the fleet hits one host: cooldowns, concurrency caps and rate caps, shared.

Every HTTP request of the :class:`~docstokg.download.fetcher.Fetcher` goes
through a :class:`HostGate`, which asks a :class:`CooldownStore` for its turn
before it sends and tells it what the host answered after:

- a 429 or 503 (its ``Retry-After``, else ``error_cooldown_s``), a refused
  connection or a timeout puts the host in *cooldown*: no worker of any
  process sends it a request until the cooldown has passed;
- ``max_concurrent`` caps the requests in flight to the host, fleet-wide:
  each holds a *slot*, a lease that its process renews while the request
  lasts, so the slots of a crashed process lapse after ``slot_ttl_s``;
- ``max_per_s`` caps how many requests a second the fleet starts on the host.

A worker whose host is not ready *waits* (it does not fail), asking again
when the store says the host will be ready, and stops waiting as soon as the
run stops.  The store decides atomically and on its own clock (Redis's, or
the database's), so machines whose clocks differ still agree.  Which store:
:func:`open_cooldown_store` (Redis if ``redis_url`` is set, else the ledger's
PostgreSQL if the run asks for it, else this process only).

What is at-least-once here: a host is keyed by its URL's ``host:port``
before redirects.  A request decided before another worker's 429 was
recorded may still reach the host after it (only ``max_concurrent = 1``
orders them strictly): politeness is best effort, and nothing of the
ledger's exactly-once promise rests on it.  A store that cannot be reached
sends no request at all: the attempt fails as transient and is retried later.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

import httpx

from docstokg.download.http_errors import parse_retry_after
from docstokg.errors import (
    ConfigurationError,
    DocstokgError,
    DownloadInterrupted,
    FetchError,
    TransientFetchError,
)

log = logging.getLogger(__name__)

StopCheck = Callable[[], bool]

#: Statuses that say "you are asking too much": the host cools down after them.
COOLDOWN_STATUSES = frozenset({429, 503})
#: httpx failures that say the host is struggling (not the body's fault, not ours):
#: a refused or unreachable connection, a timeout.  A pool timeout is this
#: process's own queue, not the host's.
COOLDOWN_ERRORS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadTimeout,
    httpx.WriteTimeout,
)
#: How often a waiting worker looks at the stop flag: how promptly a stop ends a wait.
STOP_CHECK_S = 0.1
#: The first pause of a worker waiting for a slot; it doubles up to ``max_poll_s``.
FIRST_POLL_S = 0.02
#: What :meth:`CooldownStore.admit` answers when the host's every slot is held.
AT_CAP = -1.0


@dataclass(frozen=True, slots=True)
class HostRules:
    """The politeness every host gets (one set for all hosts).

    ``max_concurrent`` and ``max_per_s`` are fleet-wide (None: no cap, the
    workers' count bounds it).  ``max_cooldown_s`` bounds what a server's
    Retry-After can impose (a hostile ``Retry-After: 99999999`` must not stall
    the fleet; the run passes its ``backoff_max_s``).
    """

    max_concurrent: int | None = None
    max_per_s: float | None = None
    max_cooldown_s: float = 600.0
    error_cooldown_s: float = 2.0
    slot_ttl_s: float = 30.0
    max_poll_s: float = 0.25

    def __post_init__(self) -> None:
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigurationError(
                f"max_concurrent requests per host must be >= 1 (or None: no cap), got "
                f"{self.max_concurrent!r}"
            )
        if self.max_per_s is not None and not (0 < self.max_per_s < math.inf):
            raise ConfigurationError(
                f"max_per_s requests per second per host must be a positive number (or None: "
                f"no cap), got {self.max_per_s!r}"
            )
        for name in ("max_cooldown_s", "error_cooldown_s", "slot_ttl_s", "max_poll_s"):
            value = getattr(self, name)
            if not (0 <= value < math.inf) or (name in ("slot_ttl_s", "max_poll_s") and not value):
                raise ConfigurationError(
                    f"{name} must be a finite number of seconds (> 0 for slot_ttl_s and "
                    f"max_poll_s, >= 0 otherwise), got {value!r}"
                )

    @property
    def interval_s(self) -> float | None:
        """Seconds between two request starts on one host (None: no rate cap)."""
        return None if self.max_per_s is None else 1.0 / self.max_per_s


class CooldownStore(Protocol):
    """Where the fleet's per-host politeness lives; every method is atomic in the store.

    Times are the store's own (Redis's clock, the database's): a worker only
    hears durations.  A failure raises a :class:`~docstokg.errors.DocstokgError`
    naming the store and what to do.
    """

    #: Says where the state lives, for messages (credentials masked).
    where: str

    def admit(
        self,
        host: str,
        holder: str,
        *,
        max_concurrent: int | None,
        interval_s: float | None,
        slot_ttl_s: float,
    ) -> float:
        """0.0: ``holder`` may send now (its slot taken, the host's next turn booked).

        Positive: the seconds until the host is ready (its cooldown, or the
        rate's gap).  Negative (:data:`AT_CAP`): every slot is held; nobody
        knows when one frees, so the worker asks again after a short pause.
        """
        ...

    def leave(self, host: str, holder: str) -> None:
        """Give ``holder``'s slot back (nothing if it holds none)."""
        ...

    def renew(self, slots: Sequence[tuple[str, str]], slot_ttl_s: float) -> None:
        """Extend each ``(host, holder)`` slot to ``slot_ttl_s`` from now (not lapsed ones)."""
        ...

    def cool_down(self, host: str, seconds: float) -> None:
        """No request to ``host`` until ``seconds`` from now (a longer cooldown stays)."""
        ...

    def cooldown_left(self, host: str) -> float:
        """Seconds until ``host``'s cooldown ends (0.0: none)."""
        ...

    def close(self) -> None: ...


def host_of(url: str) -> str:
    """The key a URL's host is known by in the store: ``host:port``, lowercase."""
    parsed = httpx.URL(url)
    port = parsed.port or {"https": 443, "http": 80}.get(parsed.scheme, 0)
    return f"{parsed.host.lower()}:{port}"


def default_owner() -> str:
    """Names this process in slot holders (for an operator reading the store)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def open_cooldown_store(
    *, redis_url: str | None, shared: Callable[[], CooldownStore] | None = None
) -> CooldownStore:
    """The fleet's store: Redis if ``redis_url`` is set, else ``shared()``, else this process's.

    ``shared`` opens the ledger database's store when the ledger is on
    PostgreSQL (see :func:`docstokg.ledger.host_limits.ledger_cooldown_store`);
    the run passes it, as this layer knows nothing of the ledger.
    """
    if redis_url is not None:
        # Imported here: redis-py costs every other command a tenth of a second at start.
        from docstokg.download.redis_store import RedisCooldownStore  # noqa: PLC0415

        return RedisCooldownStore.from_url(redis_url)
    if shared is not None:
        return shared()
    return InProcessCooldownStore()


# === the gate =============================================================================


class Permit:
    """One admitted request: tell it what the host answered (see :meth:`answered`)."""

    def answered(self, response: httpx.Response) -> None:
        """Note the response's status (the ungated permit ignores it)."""


class _HostPermit(Permit):
    """A permit of a :class:`HostGate`: a 429 or 503 cools its host down."""

    def __init__(self, gate: HostGate, host: str) -> None:
        self.gate = gate
        self.host = host
        self.cooled = False

    def answered(self, response: httpx.Response) -> None:
        """Put the host in cooldown if it answered 429 or 503 (once per permit)."""
        if response.status_code not in COOLDOWN_STATUSES or self.cooled:
            return
        self.cooled = True
        asked = parse_retry_after(response.headers.get("Retry-After"))
        rules = self.gate.rules
        seconds = rules.error_cooldown_s if asked is None else asked
        self.gate.cool_down(self.host, min(seconds, rules.max_cooldown_s))


class Ungated:
    """No politeness: every request goes out at once (the fetch functions' default)."""

    @contextmanager
    def request(self, url: str, should_stop: StopCheck | None = None) -> Iterator[Permit]:
        yield Permit()


UNGATED = Ungated()


class HostGate:
    """Every request's way through the :class:`CooldownStore`: wait for a turn, report back.

    One per process, shared by its workers; it renews the slots they hold
    (every ``slot_ttl_s / 3``) from a thread of its own, so a slot outlives a
    long download but not a crashed process.  Closing it ends every wait
    (:class:`~docstokg.errors.DownloadInterrupted`) and closes the store.
    """

    def __init__(
        self,
        store: CooldownStore,
        rules: HostRules | None = None,
        *,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.rules = rules or HostRules()
        self._owner = owner or default_owner()
        self._closed = threading.Event()
        self._held: set[tuple[str, str]] = set()
        self._held_lock = threading.Lock()
        self._keeper: threading.Thread | None = None

    @contextmanager
    def request(self, url: str, should_stop: StopCheck | None = None) -> Iterator[Permit]:
        """Wait for ``url``'s host to be ready, hold its turn for the block, report failures.

        A refused connection or a timeout raised in the block cools the host
        down before its slot is given back, so the next holder of the slot
        already sees the cooldown.
        """
        host = host_of(url)
        holder = self._wait_turn(host, should_stop or _never)
        permit = _HostPermit(self, host)
        try:
            yield permit
        except COOLDOWN_ERRORS:
            if not permit.cooled:
                permit.cooled = True
                self.cool_down(host, min(self.rules.error_cooldown_s, self.rules.max_cooldown_s))
            raise
        finally:
            self._leave(host, holder)

    def cool_down(self, host: str, seconds: float) -> None:
        """Record a cooldown of ``host``; a store that fails is logged, the failure stands."""
        if seconds <= 0:
            return
        try:
            self.store.cool_down(host, seconds)
        except DocstokgError as exc:
            log.warning("could not record a %.1fs cooldown of %s: %s", seconds, host, exc)

    def _wait_turn(self, host: str, should_stop: StopCheck) -> str:
        """Ask the store until it admits us; returns the holder name our slot carries."""
        holder = f"{self._owner}:{uuid.uuid4().hex}"
        rules = self.rules
        poll = FIRST_POLL_S
        while True:
            self._check_stop(host, should_stop)
            wait_s = self._admit(host, holder)
            if wait_s == 0:
                if rules.max_concurrent is not None:
                    self._hold(host, holder)
                return holder
            if wait_s > 0:  # a cooldown or a rate gap says when
                pause = wait_s
            else:  # a full cap does not: poll, backing off
                pause = poll
                poll = min(poll * 2, rules.max_poll_s)
            # A little jitter, so workers that waited together do not all ask at once.
            self._pause(pause + random.uniform(0, min(0.05, pause / 10)), host, should_stop)

    def _admit(self, host: str, holder: str) -> float:
        rules = self.rules
        try:
            return self.store.admit(
                host,
                holder,
                max_concurrent=rules.max_concurrent,
                interval_s=rules.interval_s,
                slot_ttl_s=rules.slot_ttl_s,
            )
        except FetchError:
            raise
        except DocstokgError as exc:
            raise TransientFetchError(
                f"no request sent to {host}: the host-politeness store ({self.store.where}) "
                f"failed: {exc} (transient: retried later)"
            ) from exc

    def _pause(self, seconds: float, host: str, should_stop: StopCheck) -> None:
        """Wait ``seconds``, looking at the stop flag every ``STOP_CHECK_S``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._check_stop(host, should_stop)
            self._closed.wait(min(left, STOP_CHECK_S))

    def _check_stop(self, host: str, should_stop: StopCheck) -> None:
        if should_stop() or self._closed.is_set():
            raise DownloadInterrupted(
                f"stopped while waiting for {host} (cooling down, at its cap or its rate); "
                "no request was sent"
            )

    # --- slots ---------------------------------------------------------------------------

    def _hold(self, host: str, holder: str) -> None:
        with self._held_lock:
            self._held.add((host, holder))
            if self._keeper is None:
                self._keeper = threading.Thread(
                    target=self._keep_slots, name="host-slots-keeper", daemon=True
                )
                self._keeper.start()

    def _leave(self, host: str, holder: str) -> None:
        if self.rules.max_concurrent is None:
            return
        with self._held_lock:
            self._held.discard((host, holder))
        try:
            self.store.leave(host, holder)
        except DocstokgError as exc:  # the slot lapses on its own after slot_ttl_s
            log.warning("could not give back a slot of %s (it lapses by itself): %s", host, exc)

    def _keep_slots(self) -> None:
        """Renew the held slots every ``slot_ttl_s / 3`` until the gate closes."""
        ttl = self.rules.slot_ttl_s
        while not self._closed.wait(ttl / 3):
            with self._held_lock:
                held = sorted(self._held)
            if not held:
                continue
            try:
                self.store.renew(held, ttl)
            except DocstokgError as exc:
                log.warning("could not renew %d host slot(s): %s", len(held), exc)

    # --- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """End every wait and the slot keeper, then close the store."""
        self._closed.set()
        if self._keeper is not None:
            self._keeper.join()
        self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _never() -> bool:
    return False


# === this process only ====================================================================


@dataclass
class _HostState:
    cooldown_until: float = 0.0
    next_request_at: float = 0.0
    slots: dict[str, float] = field(default_factory=dict)  # holder -> lease end


class InProcessCooldownStore:
    """The default: politeness among the workers of this process only (monotonic clock)."""

    where = "this process"

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._hosts: dict[str, _HostState] = {}

    def admit(
        self,
        host: str,
        holder: str,
        *,
        max_concurrent: int | None,
        interval_s: float | None,
        slot_ttl_s: float,
    ) -> float:
        with self._lock:
            now = self._clock()
            state = self._hosts.setdefault(host, _HostState())
            if state.cooldown_until > now:
                return state.cooldown_until - now
            if interval_s is not None and state.next_request_at > now:
                return state.next_request_at - now
            if max_concurrent is not None:
                state.slots = {h: end for h, end in state.slots.items() if end > now}
                if len(state.slots) >= max_concurrent:
                    return AT_CAP
                state.slots[holder] = now + slot_ttl_s
            if interval_s is not None:
                state.next_request_at = now + interval_s
            return 0.0

    def leave(self, host: str, holder: str) -> None:
        with self._lock:
            state = self._hosts.get(host)
            if state is not None:
                state.slots.pop(holder, None)

    def renew(self, slots: Sequence[tuple[str, str]], slot_ttl_s: float) -> None:
        with self._lock:
            now = self._clock()
            for host, holder in slots:
                state = self._hosts.get(host)
                if state is not None and state.slots.get(holder, -math.inf) > now:
                    state.slots[holder] = now + slot_ttl_s

    def cool_down(self, host: str, seconds: float) -> None:
        with self._lock:
            state = self._hosts.setdefault(host, _HostState())
            state.cooldown_until = max(state.cooldown_until, self._clock() + seconds)

    def cooldown_left(self, host: str) -> float:
        with self._lock:
            state = self._hosts.get(host)
            return 0.0 if state is None else max(0.0, state.cooldown_until - self._clock())

    def close(self) -> None:
        """Nothing to release: the state dies with the process."""


Gate = HostGate | Ungated
"""What the fetch functions send their requests through."""
