"""Group commit: SQLite's one writer, shared in turn by the write units of work of a process.

SQLite lets one connection write at a time, and a commit costs far more than
the few statements of a state transition (every dirty page is a WAL frame
written on its own).  With many worker threads, units of work spent most of
their time queuing for the write lock while others committed one by one.

Here the write units of work of a process take turns on one writer
connection.  Each runs inside the transaction the units of work before it
left open, in a ``SAVEPOINT`` when there are such (so that its rollback undoes
its own writes only).  When it ends and another unit of work is already
queuing, it hands the open transaction on instead of committing; the unit of
work that finds nobody queuing (or fills a group of ``max_group``) commits
the whole group, before it returns.  A group never waits for anyone's network
or disk I/O: it stays open only while units of work are ready to run in it.

What a caller sees:

* Its unit of work is atomic (a savepoint rolled back on error undoes its
  writes alone) and sees every write committed before it, in order.
* ``commit()`` returns only once the COMMIT holding its writes has run: a
  unit of work that hands the group on waits for that COMMIT, as members of
  PostgreSQL's and SQLite's own group commits wait for theirs.  A process
  killed at any moment loses no unit of work whose ``commit()`` returned.
  (Against power loss, durability is the engine's: WAL with
  ``synchronous=NORMAL`` may lose the last commits, never corrupt the file.)
* If a group's COMMIT fails (a full disk, an I/O error), every unit of work
  it held gets the error from its ``commit()``; nothing else is affected,
  and the next unit of work starts a fresh transaction.
* The group is formed while its members wait: a unit of work only hands the
  group on when another is already queuing for the writer, so a lone writer
  commits at once and never waits for anyone's network or disk I/O.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, RootTransaction
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from docstokg.errors import LedgerError
from docstokg.ledger.engine import READ_ONLY_OPTION, database_error
from docstokg.ledger.faults import OutageWatch

# Units of work per COMMIT at most: a bound on how long other processes wait
# for SQLite's write lock, and on how much a failed COMMIT takes with it.
DEFAULT_MAX_GROUP = 16
_SAVEPOINT = "docstokg_uow"

Failure = DBAPIError | LedgerError


@dataclass(slots=True, eq=False)
class _Group:
    """One open transaction and the units of work released into it."""

    transaction: RootTransaction
    members: int = 0  # units of work whose writes it holds
    savepoint: bool = False  # the unit of work inside it now works in a savepoint
    finished: bool = False
    failure: Failure | None = None


class GroupCommit:
    """The writer connection of one SQLite ledger in this process, and its queue."""

    def __init__(
        self,
        engine: Engine,
        url: URL,
        *,
        max_group: int = DEFAULT_MAX_GROUP,
        outage: OutageWatch | None = None,
    ) -> None:
        self._engine = engine
        self._url = url
        self._outage = outage
        self._max_group = max_group
        self._lock = threading.Lock()
        self._free = threading.Condition(self._lock)  # the writer may be taken
        self._ended = threading.Condition(self._lock)  # a group committed (or failed)
        self._queued = threading.Condition(self._lock)  # a unit of work started queuing
        self._busy = False  # a unit of work holds the writer
        self._waiting = 0  # units of work queuing for it
        self._group: _Group | None = None
        self._connection: Connection | None = None
        # .inside: this thread holds the writer
        self._thread = threading.local()

    # --- a unit of work's side ------------------------------------------------------

    def enter(self) -> Connection:
        """Wait for the writer; returns its connection, in the open group's transaction."""
        if getattr(self._thread, "inside", False):
            raise LedgerError(
                "a write unit of work is already open in this thread; commit (or leave) it "
                "before opening another: SQLite has one writer, and it is this thread"
            )
        try:
            self._take_writer()  # sets self._thread.inside once the writer is ours
            if self._outage is not None:
                # Given up on while this one queued: said now, not after a busy timeout.
                self._outage.check()
            connection, group = self._join_group()
            # Only the writes of members before it need protecting from its
            # rollback; the first one may roll back the whole transaction.
            group.savepoint = group.members > 0
            if group.savepoint:
                _run(connection, f"SAVEPOINT {_SAVEPOINT}")
        except DBAPIError as exc:
            self.release_if_held()  # what the members before it wrote still commits
            raise database_error(self._url, exc) from exc
        except BaseException:  # even Ctrl-C must hand the writer on, then propagate as is
            self.release_if_held()
            raise
        return connection

    def release_if_held(self) -> None:
        """If this thread holds the writer without having ended its part, end it now.

        For a unit of work interrupted between taking the writer and being
        entered: the group's other members still commit, and the writer is
        freed for the next one.
        """
        if getattr(self._thread, "inside", False):
            self._end_group(failure=None)

    def leave(self, *, commit: bool, failing: bool = False) -> None:
        """End the caller's part of the open group (see the module's docstring).

        With ``commit`` its writes join the group (its savepoint is simply
        left in place: the group's COMMIT commits it) and this returns once
        that COMMIT has run; otherwise they are rolled back.  Raises if the
        group could not be committed, except when ``failing``: the caller's
        own error is then the one to see.
        """
        group = self._group
        if group is None or not getattr(self._thread, "inside", False):
            raise LedgerError("this thread does not hold the ledger's writer; nothing to end")
        if not commit and not group.savepoint:  # the group holds only this one's writes
            self._end_group(failure=None, roll_back=True)
            return
        if not commit:
            try:
                connection = self._require_connection()
                _run(connection, f"ROLLBACK TO {_SAVEPOINT}")
                _run(connection, f"RELEASE {_SAVEPOINT}")
            except DBAPIError as exc:
                # SQLite rolled back the whole transaction (a full disk, an I/O
                # error): the writes of the members before it went with it.
                self._end_group(failure=exc)
                if not failing:
                    raise database_error(self._url, exc) from exc
                return
            except BaseException:  # Ctrl-C mid-rollback: the group's state is unknown, so it goes
                self._end_group(failure=LedgerError("a unit of work was interrupted while ending"))
                raise
        group.savepoint = False
        if commit:
            group.members += 1
        if self._hand_on(group):
            if not commit:
                return  # nothing of ours is in the group any more
            self._await_commit(group)
        else:
            self._end_group(failure=None)
        if commit and not failing:
            self._raise_if_failed(group)

    def wait_for_queue(self, count: int, timeout_s: float) -> bool:
        """Block until ``count`` units of work queue for the writer; False after ``timeout_s``.

        For diagnostics, and for tests that need a group to form deterministically.
        """
        with self._lock:
            return self._queued.wait_for(lambda: self._waiting >= count, timeout_s)

    def _await_commit(self, group: _Group) -> None:
        """Wait until ``group`` has been committed (or has failed).

        Its COMMIT is run by whichever member finds nobody queuing behind it.
        Should that member be interrupted while queuing, the group is left
        with nobody to end it: the waiting member ends it itself.
        """
        with self._lock:
            while not group.finished:
                if self._orphaned() and self._group is group:
                    self._busy = True
                    self._thread.inside = True
                    break
                self._ended.wait()
        if getattr(self._thread, "inside", False):
            self._end_group(failure=None)

    # --- the writer's life ----------------------------------------------------------

    def close(self) -> None:
        """Commit what is pending and close the writer connection (no thread may be writing)."""
        with self._lock:
            if self._busy or self._waiting:
                raise LedgerError(
                    "the ledger was closed while units of work were writing in it; stop the "
                    "threads that write before closing it"
                )
            self._busy = True
        group = self._group
        try:
            if group is not None:
                self._finish(group, failure=None, roll_back=False)
            connection, self._connection = self._connection, None
            if connection is not None:
                connection.close()
        finally:
            self._free_writer(group)
        if group is not None:
            self._raise_if_failed(group)

    def _take_writer(self) -> None:
        interrupted: BaseException | None = None
        with self._lock:
            self._waiting += 1
            self._queued.notify_all()
            try:
                while self._busy:
                    self._free.wait()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, once the writer is passed on
                interrupted = exc
            self._waiting -= 1
            if interrupted is None:
                self._busy = True
                self._thread.inside = True
                return
            # Interrupted while queuing: the writer may have been passed to us.
            orphaned = self._orphaned()
            if orphaned:
                self._busy = True
                self._thread.inside = True
            elif self._waiting:
                self._free.notify()
        if orphaned:
            self._end_group(failure=None)
        raise interrupted

    def _join_group(self) -> tuple[Connection, _Group]:
        """The writer's connection and the open group (begun here if none is)."""
        if self._group is not None:
            return self._require_connection(), self._group
        connection = self._connection
        if connection is None or connection.closed or connection.invalidated:
            connection = self._engine.connect()
            connection.execution_options(**{READ_ONLY_OPTION: False})
            self._connection = connection
        try:
            transaction = connection.begin()  # BEGIN IMMEDIATE (the engine's begin hook)
        except DBAPIError:
            self._connection = None
            connection.close()  # a failed BEGIN may leave it unusable
            raise
        self._group = _Group(transaction)
        return connection, self._group

    def _hand_on(self, group: _Group) -> bool:
        """Pass the open group to a queuing unit of work instead of committing, if one queues."""
        with self._lock:
            if self._waiting == 0 or group.members >= self._max_group:
                return False
            self._busy = False
            self._free.notify()
        self._thread.inside = False
        return True

    def _end_group(self, *, failure: Failure | None, roll_back: bool = False) -> None:
        """Commit the open group (roll back after ``failure``, or if asked); free the writer."""
        group = self._group
        try:
            if group is not None:
                self._finish(group, failure=failure, roll_back=roll_back)
        finally:
            self._free_writer(group)

    def _finish(self, group: _Group, *, failure: Failure | None, roll_back: bool) -> None:
        """COMMIT or ROLLBACK ``group``, the writer held; a failure is kept on the group."""
        group.failure = failure
        if failure is not None or roll_back:
            self._roll_back(group)
            return
        try:
            group.transaction.commit()
        except DBAPIError as exc:
            group.failure = exc
            self._discard_connection()
        except BaseException as exc:
            group.failure = LedgerError(f"the COMMIT was interrupted ({type(exc).__name__})")
            self._discard_connection()
            raise

    def _free_writer(self, group: _Group | None) -> None:
        """Mark ``group`` ended (it stayed visible to settle() until now) and free the writer."""
        self._thread.inside = False
        with self._lock:
            if group is not None:
                group.finished = True
                if self._group is group:
                    self._group = None
                self._ended.notify_all()
            self._busy = False
            if self._waiting:
                self._free.notify()

    def _roll_back(self, group: _Group) -> None:
        try:
            if group.transaction.is_active:
                group.transaction.rollback()
                return
        except DBAPIError:
            pass  # the connection is in an unknown state: replaced below
        # A failed COMMIT or ROLLBACK may leave SQLite inside the transaction,
        # holding the file's write lock: the connection goes, a fresh one follows.
        self._discard_connection()

    def _discard_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.invalidate()

    def _orphaned(self) -> bool:
        """With the lock held: is a group open that nobody holds or queues for?"""
        return not self._busy and self._waiting == 0 and self._group is not None

    def _raise_if_failed(self, group: _Group) -> None:
        failure = group.failure
        if failure is None:
            return
        if isinstance(failure, DBAPIError):
            raise database_error(self._url, failure) from failure
        raise LedgerError(f"nothing was committed: {failure}") from failure

    def _require_connection(self) -> Connection:
        if self._connection is None:
            raise LedgerError("the writer connection is gone; open a new unit of work")
        return self._connection


def _run(connection: Connection, statement: str) -> None:
    """A savepoint statement, straight to the driver (it runs for every unit of work)."""
    driver = connection.connection.driver_connection
    try:
        driver.execute(statement)  # type: ignore[union-attr]
    except sqlite3.Error as exc:
        raise DBAPIError.instance(statement, (), exc, sqlite3.Error) from exc
