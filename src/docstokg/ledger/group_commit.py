"""Group commit: SQLite's one writer, shared in turn by the write units of work of a process.

SQLite lets one connection write at a time, and a commit costs far more than
the few statements of a state transition (each dirty page is a WAL frame
written on its own).  With many worker threads most of a write unit of work's
time went into waiting for the write lock while others committed one by one.

Here the write units of work of this process queue for one writer connection.
Each runs its statements inside a ``SAVEPOINT`` of a transaction that the
writers before it may have opened; when it is done it releases its savepoint
and, if another unit of work is already waiting, hands the open transaction
on instead of committing.  The last of such a group (or the one that fills a
group of ``max_group``) commits for all of them, and every member's
``commit()`` returns only once that COMMIT has succeeded.

What each caller sees is unchanged: its unit of work is atomic (a savepoint
rolled back on error undoes its writes alone), it sees the writes of the
units of work that committed before it, and when ``commit()`` returns its
writes are in the database file.  If the group's COMMIT fails, every member's
``commit()`` raises, and nothing of any member is kept.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, RootTransaction
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from docstokg.errors import LedgerError
from docstokg.ledger.engine import READ_ONLY_OPTION, connect_error

# Units of work per COMMIT at most: a bound on how long a member waits for the
# others, and on how long other processes wait for SQLite's write lock.
DEFAULT_MAX_GROUP = 16
_SAVEPOINT = "docstokg_uow"


@dataclass(slots=True)
class _Group:
    """One open transaction and the units of work released into it."""

    transaction: RootTransaction
    members: int = 0  # units of work whose writes it holds
    savepoint: bool = False  # the unit of work inside it now works in a savepoint
    finished: bool = False
    failure: DBAPIError | LedgerError | None = None


class GroupCommit:
    """The writer connection of one SQLite ledger in this process, and its queue."""

    def __init__(self, engine: Engine, url: URL, *, max_group: int = DEFAULT_MAX_GROUP) -> None:
        self._engine = engine
        self._url = url
        self._max_group = max_group
        self._lock = threading.Lock()
        self._free = threading.Condition(self._lock)  # a unit of work may take the writer
        self._ended = threading.Condition(self._lock)  # a group committed (or failed)
        self._busy = False  # a unit of work holds the writer
        self._waiting = 0  # units of work queued for it
        self._group: _Group | None = None
        self._connection: Connection | None = None
        self._inside = threading.local()

    # --- a unit of work's side ------------------------------------------------------

    def enter(self) -> Connection:
        """Wait for the writer; returns its connection, in the open group's transaction."""
        if getattr(self._inside, "active", False):
            raise LedgerError(
                "a write unit of work is already open in this thread; commit (or leave) it "
                "before opening another: SQLite has one writer, and it is this thread"
            )
        with self._lock:
            self._waiting += 1
            try:
                while self._busy:
                    self._free.wait()
            except BaseException:  # interrupted while queuing: the writer may be ours to pass
                self._waiting -= 1
                self._pass_writer_on()
                raise
            self._waiting -= 1
            self._busy = True
        self._inside.active = True
        try:
            connection, group = self._join_group()
            # Only the writes of members before it need protecting from its
            # rollback; the first one can roll back the whole transaction.
            group.savepoint = group.members > 0
            if group.savepoint:
                _run(connection, f"SAVEPOINT {_SAVEPOINT}")
        except DBAPIError as exc:
            self._end_group(failure=None)  # what the members before us wrote still commits
            raise connect_error(self._url, exc) from exc
        except BaseException:  # even Ctrl-C must hand the writer on, then propagate as is
            self._end_group(failure=None)
            raise
        return connection

    def leave(self, *, commit: bool, failing: bool = False) -> None:
        """End the caller's part of the group; return once the group has committed.

        With ``commit`` the caller's writes join the group (its savepoint is
        simply left in place: the group's COMMIT commits it).  Without, they are
        rolled back; the caller still waits for the group if it may have read
        the writes of members before it, so nothing it saw can vanish after it
        returns.  Raises if the group's COMMIT failed (all members' writes are
        then lost), except when ``failing``: the caller's own error is the one
        to see, and it waits for nobody.
        """
        group = self._group
        if group is None:
            raise LedgerError("this unit of work does not hold the writer; it cannot end here")
        if not commit and not group.savepoint:  # the group holds nothing but this one's writes
            self._end_group(failure=None, roll_back=True)
            return
        try:
            if not commit:
                connection = self._require_connection()
                _run(connection, f"ROLLBACK TO {_SAVEPOINT}")
                _run(connection, f"RELEASE {_SAVEPOINT}")
        except DBAPIError as exc:
            # SQLite rolled back the whole transaction (a full disk, an I/O
            # error): the other members' writes went with it.
            self._end_group(failure=exc)
            if not failing:
                raise connect_error(self._url, exc) from exc
            return
        except BaseException:
            self._end_group(failure=LedgerError("a unit of work was interrupted while ending"))
            raise
        saw_writes = commit or group.members > 0
        group.savepoint = False
        if commit:
            group.members += 1
        must_wait = saw_writes and not failing
        if self._hand_on(group):
            if must_wait:
                self._wait_for(group)
            return
        self._end_group(failure=None)
        if must_wait:
            self._raise_if_failed(group)

    # --- the writer's life ----------------------------------------------------------

    def close(self) -> None:
        """Close the writer connection (between runs; no unit of work may be open)."""
        with self._lock:
            if self._busy or self._group is not None:
                raise LedgerError("the ledger was closed while a unit of work was writing")
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

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
        """Pass the open group to a waiting unit of work instead of committing, if one waits."""
        with self._lock:
            if self._waiting == 0 or group.members >= self._max_group:
                return False
            self._busy = False
            self._free.notify()
        self._inside.active = False
        return True

    def _wait_for(self, group: _Group) -> None:
        """Wait until ``group`` has ended; end it ourselves if nobody else is left to."""
        with self._lock:
            while not group.finished:
                if not self._busy and self._waiting == 0 and self._group is group:
                    # The unit of work it was handed to never came (it was
                    # interrupted while queuing): the group is ours to end.
                    self._busy = True
                    break
                self._ended.wait()
        if not group.finished:
            self._end_group(failure=None)
        self._raise_if_failed(group)

    def _pass_writer_on(self) -> None:
        """With the lock held and the writer free: wake whoever must take it, or end the group."""
        if self._busy:
            return
        if self._waiting:
            self._free.notify()
        elif self._group is not None:
            self._ended.notify_all()  # a member waiting for the group will end it

    def _end_group(
        self, *, failure: DBAPIError | LedgerError | None, roll_back: bool = False
    ) -> None:
        """Commit the open group (roll back after ``failure``, or if asked); free the writer."""
        group, self._group = self._group, None
        try:
            if group is not None:
                group.failure = failure
                if failure is None and not roll_back:
                    self._commit(group)
                else:
                    self._roll_back(group)
        finally:
            self._inside.active = False
            with self._lock:
                if group is not None:
                    group.finished = True
                    self._ended.notify_all()
                self._busy = False
                self._pass_writer_on()

    def _commit(self, group: _Group) -> None:
        try:
            group.transaction.commit()
        except DBAPIError as exc:
            group.failure = exc
            self._roll_back(group)

    def _roll_back(self, group: _Group) -> None:
        try:
            if group.transaction.is_active:
                group.transaction.rollback()
        except DBAPIError:
            # The connection is in an unknown state: a fresh one for the next group.
            connection, self._connection = self._connection, None
            if connection is not None:
                connection.invalidate()

    def _raise_if_failed(self, group: _Group) -> None:
        failure = group.failure
        if failure is None:
            return
        if isinstance(failure, DBAPIError):
            raise connect_error(self._url, failure) from failure
        raise LedgerError(
            f"nothing was committed: the transaction this unit of work shared was rolled "
            f"back ({failure})"
        ) from failure

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
