"""The fleet's host politeness in the ledger database: cooldowns, slots and rates per host.

The store a fleet uses when its ledger is on PostgreSQL and it has no Redis
(see :mod:`docstokg.download.politeness`, whose ``CooldownStore`` this class
implements; this layer does not import it).  Two tables:

- ``host_limits``: one row per host: ``cooldown_until`` (no request before)
  and ``next_request_at`` (the rate cap's next turn), epoch seconds;
- ``host_slots``: one row per request in flight to a capped host, with the
  ``lease_until`` its holder renews; a crashed holder's row lapses then.

An admission is one transaction that locks the host's row first (an upsert,
so the first request to a new host creates it), so the admissions of one
host take turns across every connection, while those of other hosts do not
wait.  Times are the database's clock (PostgreSQL's ``clock_timestamp()``),
so machines whose clocks differ agree.  The statements are built once per
dialect and run by :class:`~docstokg.ledger.prepared.Prepared`, as every
statement of the ledger is; SQLite works too (one host, ``BEGIN IMMEDIATE``
serialises the admissions), though the run only picks this store on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Double,
    Engine,
    bindparam,
    case,
    cast,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from docstokg.errors import LedgerError
from docstokg.ledger.engine import (
    READ_ONLY_OPTION,
    create_ledger_engine,
    database_error,
    is_sqlite,
    parse_url,
)
from docstokg.ledger.models import host_limits_table, host_slots_table
from docstokg.ledger.prepared import Prepared

limits = host_limits_table.c
slots = host_slots_table.c
DIALECTS: dict[str, Any] = {"sqlite": sqlite, "postgresql": postgresql}
#: Connections one process's store keeps (beyond the ledger's own pool): admissions are short.
DEFAULT_POOL_SIZE = 2
#: How long an admission waits for one of them before it fails (transient).
POOL_TIMEOUT_S = 60.0
#: What ``admit`` answers when every slot is held (the protocol: negative).
AT_CAP = -1.0

_now = bindparam("now", type_=Double)


def _database_now(dialect: str) -> ColumnElement[float]:
    """The database's clock, epoch seconds (SQLite: this host's, as its ledger uses)."""
    if dialect == "postgresql":
        return cast(func.extract("epoch", func.clock_timestamp()), Double)
    return (func.julianday("now") - 2440587.5) * 86400.0


def _per_dialect(build: Callable[[Any, ColumnElement[float]], Any]) -> Prepared:
    """One statement per dialect: ``build(dialect module, database clock)``."""
    return Prepared({name: build(module, _database_now(name)) for name, module in DIALECTS.items()})


# Locks the host's row (creating it if need be) and reads it with the clock.
LOCK_HOST = _per_dialect(
    lambda dialect, now: (
        dialect.insert(host_limits_table)
        .values(host=bindparam("host"), cooldown_until=0.0, next_request_at=0.0)
        .on_conflict_do_update(index_elements=["host"], set_={"host": bindparam("host")})
        .returning(limits.cooldown_until, limits.next_request_at, now)
    )
)
DROP_LAPSED_SLOTS = Prepared(
    delete(host_slots_table).where(slots.host == bindparam("host"), slots.lease_until < _now)
)
COUNT_SLOTS = Prepared(
    select(func.count()).select_from(host_slots_table).where(slots.host == bindparam("host"))
)
TAKE_SLOT = Prepared(
    host_slots_table.insert().values(
        host=bindparam("host"),
        holder=bindparam("holder"),
        lease_until=_now + bindparam("ttl_s", type_=Double),
    )
)
BOOK_NEXT_REQUEST = Prepared(
    update(host_limits_table)
    .where(limits.host == bindparam("host"))
    .values(next_request_at=_now + bindparam("interval_s", type_=Double))
)
LEAVE_SLOT = Prepared(
    delete(host_slots_table).where(
        slots.host == bindparam("host"), slots.holder == bindparam("holder")
    )
)
RENEW_SLOT = _per_dialect(
    lambda _dialect, now: (
        update(host_slots_table)
        .where(
            slots.host == bindparam("host"),
            slots.holder == bindparam("holder"),
            slots.lease_until >= now,
        )
        .values(lease_until=now + bindparam("ttl_s", type_=Double))
    )
)


def _cool_down(dialect: Any, now: ColumnElement[float]) -> Any:
    """Upsert ``now + seconds`` as the cooldown's end; a longer one already recorded stays."""
    insert = dialect.insert(host_limits_table).values(
        host=bindparam("host"),
        cooldown_until=now + bindparam("seconds", type_=Double),
        next_request_at=0.0,
    )
    proposed = insert.excluded.cooldown_until
    return insert.on_conflict_do_update(
        index_elements=["host"],
        set_={
            "cooldown_until": case(
                (proposed > limits.cooldown_until, proposed), else_=limits.cooldown_until
            )
        },
    )


COOL_DOWN = _per_dialect(_cool_down)
COOLDOWN_LEFT = _per_dialect(
    lambda _dialect, now: select(limits.cooldown_until - now).where(
        limits.host == bindparam("host")
    )
)


def ledger_cooldown_store(
    url: str | URL, *, pool_size: int = DEFAULT_POOL_SIZE
) -> Callable[[], LedgerCooldownStore] | None:
    """Opens the store in the ledger at ``url`` if it is on PostgreSQL (None for SQLite).

    For :func:`docstokg.download.politeness.open_cooldown_store`'s ``shared``:
    a SQLite ledger is one host's, whose processes need no shared store.
    """
    parsed = parse_url(url)
    if is_sqlite(parsed):
        return None
    return lambda: LedgerCooldownStore(parsed, pool_size=pool_size)


class LedgerCooldownStore:
    """Per-host cooldowns, slots and rates in the ledger's database (a pool of its own)."""

    def __init__(self, url: str | URL, *, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        self._url = parse_url(url)
        self.where = f"the ledger database {self._url.render_as_string(hide_password=True)}"
        self._engine: Engine = create_ledger_engine(
            self._url, pool_size=pool_size, pool_timeout=POOL_TIMEOUT_S
        )

    def admit(
        self,
        host: str,
        holder: str,
        *,
        max_concurrent: int | None,
        interval_s: float | None,
        slot_ttl_s: float,
    ) -> float:
        """0.0 (admitted), the seconds until the host is ready, or :data:`AT_CAP`.

        Without caps only the cooldown matters: one read, no lock, no write.
        """
        if max_concurrent is None and interval_s is None:
            return self.cooldown_left(host)
        with self._transaction() as connection:
            row = LOCK_HOST.first(connection, {"host": host})
            assert row is not None  # an upsert ... RETURNING always returns its row
            cooldown_until, next_request_at, now = (float(value) for value in row)
            if cooldown_until > now:
                return cooldown_until - now
            if interval_s is not None and next_request_at > now:
                return next_request_at - now
            slot = {"host": host, "holder": holder, "now": now, "ttl_s": slot_ttl_s}
            if max_concurrent is not None and not self._take_slot(connection, slot, max_concurrent):
                return AT_CAP
            if interval_s is not None:
                booking = {"host": host, "now": now, "interval_s": interval_s}
                BOOK_NEXT_REQUEST.count(connection, booking)
            return 0.0

    @staticmethod
    def _take_slot(connection: Connection, slot: dict[str, Any], cap: int) -> bool:
        """Take ``slot`` if fewer than ``cap`` are held (the host's row is locked: no race)."""
        DROP_LAPSED_SLOTS.count(connection, slot)
        if COUNT_SLOTS.scalar(connection, slot) >= cap:
            return False
        TAKE_SLOT.count(connection, slot)
        return True

    def leave(self, host: str, holder: str) -> None:
        with self._transaction() as connection:
            LEAVE_SLOT.count(connection, {"host": host, "holder": holder})

    def renew(self, slots: Sequence[tuple[str, str]], slot_ttl_s: float) -> None:
        rows = [{"host": host, "holder": holder, "ttl_s": slot_ttl_s} for host, holder in slots]
        with self._transaction() as connection:
            RENEW_SLOT.many(connection, rows)

    def cool_down(self, host: str, seconds: float) -> None:
        with self._transaction() as connection:
            COOL_DOWN.count(connection, {"host": host, "seconds": seconds})

    def cooldown_left(self, host: str) -> float:
        with self._transaction(read_only=True) as connection:
            left = COOLDOWN_LEFT.scalar(connection, {"host": host})
        return 0.0 if left is None else max(0.0, float(left))

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _transaction(self, *, read_only: bool = False) -> Iterator[Connection]:
        """One short transaction; the driver's errors become the ledger's, named.

        A read-only one does not take SQLite's write lock (a plain BEGIN).
        """
        try:
            with self._engine.connect() as connection:
                connection.execution_options(**{READ_ONLY_OPTION: read_only})
                with connection.begin():
                    yield connection
        except DBAPIError as exc:
            raise database_error(self._url, exc) from exc
        except SQLAlchemyError as exc:  # the pool stayed exhausted for POOL_TIMEOUT_S
            raise LedgerError(f"{self.where} refused a host-politeness update: {exc}") from exc
