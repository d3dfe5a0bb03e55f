"""DatabaseClock: PostgreSQL's time, read once in a while and carried forward in between."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docstokg.ledger.clock import DatabaseClock


class Ticks:
    """A monotonic clock the test moves, and a database clock that counts its readings."""

    def __init__(self, database_offset: float = 1_000_000.0) -> None:
        self.monotonic = 50.0
        self.database_offset = database_offset
        self.reads = 0
        self.read_takes = 0.0  # monotonic seconds one reading takes (its round trip)

    def clock(self, resync_s: float = 10.0) -> DatabaseClock:
        """A DatabaseClock on this monotonic clock."""
        return DatabaseClock(resync_s=resync_s, monotonic=lambda: self.monotonic)

    def read_database(self) -> float:
        self.reads += 1
        self.monotonic += self.read_takes / 2
        value = self.monotonic + self.database_offset  # the database reads its clock mid-trip
        self.monotonic += self.read_takes / 2
        return value


def test_the_first_reading_asks_the_database() -> None:
    ticks = Ticks()
    clock = ticks.clock()
    assert clock.now(ticks.read_database) == pytest.approx(1_000_050.0, abs=1e-9)
    assert ticks.reads == 1


def test_within_the_interval_time_is_carried_forward_without_a_round_trip() -> None:
    ticks = Ticks()
    clock = ticks.clock()
    clock.now(ticks.read_database)
    ticks.monotonic += 9.5
    assert clock.now(ticks.read_database) == pytest.approx(1_000_059.5, abs=1e-9)
    assert ticks.reads == 1


def test_after_the_interval_the_database_is_read_again() -> None:
    ticks = Ticks()
    clock = ticks.clock()
    clock.now(ticks.read_database)
    ticks.monotonic += 10.0
    ticks.database_offset += 3.0  # the database's clock was stepped meanwhile
    assert clock.now(ticks.read_database) == pytest.approx(1_000_063.0, abs=1e-9)
    assert ticks.reads == 2


def test_a_reading_counts_from_the_middle_of_its_round_trip() -> None:
    ticks = Ticks()
    ticks.read_takes = 2.0
    clock = ticks.clock()
    first = clock.now(ticks.read_database)
    # The database read 1,000,051 one second into the trip; the trip ended at 52.
    assert first == pytest.approx(1_000_052.0, abs=1e-9)
    ticks.monotonic += 1.0
    assert clock.now(ticks.read_database) == pytest.approx(1_000_053.0, abs=1e-9)


def test_a_step_back_within_what_two_readings_may_disagree_by_is_hidden() -> None:
    ticks = Ticks()
    ticks.read_takes = 0.1  # each reading may be off by a tenth of a second
    clock = ticks.clock()
    clock.now(ticks.read_database)
    ticks.monotonic = 60.1  # due
    answered_meanwhile: list[float] = []

    def reading_behind() -> float:
        ticks.monotonic += 0.09
        # Another thread asks while this reading is out: it gets the old reading.
        answered_meanwhile.append(clock.now(ticks.read_database))
        value = ticks.monotonic + ticks.database_offset - 0.15  # noise, not a step
        ticks.monotonic += 0.01
        return value

    answer = clock.now(reading_behind)
    assert answered_meanwhile == [pytest.approx(1_000_060.19, abs=1e-9)]
    assert answer == answered_meanwhile[0]  # held, not 0.1 s back
    ticks.monotonic += 1.0
    assert clock.now(ticks.read_database) == pytest.approx(1_000_061.09, abs=1e-9)


def test_a_step_back_of_the_servers_clock_is_followed_as_every_process_will() -> None:
    """Holding time still would judge leases other processes grant (on the new time) expired."""
    ticks = Ticks()
    clock, started_later = ticks.clock(), ticks.clock()
    clock.now(ticks.read_database)
    ticks.monotonic += 10.0
    ticks.database_offset -= 120.0  # the server's clock stepped back two minutes
    assert clock.now(ticks.read_database) == pytest.approx(
        ticks.monotonic + ticks.database_offset, abs=1e-9
    )
    assert clock.now(ticks.read_database) == started_later.now(ticks.read_database)


@given(steps=st.lists(st.tuples(st.floats(0, 30), st.floats(0, 5)), min_size=1, max_size=40))
def test_answers_never_decrease_while_the_servers_clock_does_not(
    steps: list[tuple[float, float]],
) -> None:
    ticks = Ticks()
    clock = ticks.clock()
    answers = [clock.now(ticks.read_database)]
    for elapsed, step_forward in steps:
        ticks.monotonic += elapsed
        ticks.database_offset += step_forward
        answers.append(clock.now(ticks.read_database))
    assert answers == sorted(answers)


def test_while_one_thread_reads_the_others_go_on_with_the_reading_before() -> None:
    ticks = Ticks()
    clock = ticks.clock()
    clock.now(ticks.read_database)
    ticks.monotonic += 10.0  # due
    entered, release = threading.Event(), threading.Event()

    def slow_read() -> float:
        entered.set()
        assert release.wait(10.0)
        return ticks.read_database()

    reader = threading.Thread(target=clock.now, args=(slow_read,))
    reader.start()
    try:
        assert entered.wait(10.0)
        assert clock.now(ticks.read_database) == pytest.approx(
            1_000_060.0, abs=1e-9
        )  # the old reading
        assert ticks.reads == 1  # no second round trip while one is out
    finally:
        release.set()
        reader.join(10.0)
    assert ticks.reads == 2


def test_a_failed_reading_raises_and_the_next_call_reads_again() -> None:
    ticks = Ticks()
    clock = ticks.clock()
    clock.now(ticks.read_database)
    ticks.monotonic += 10.0

    def broken() -> float:
        raise ConnectionError("server closed the connection")

    with pytest.raises(ConnectionError):
        clock.now(broken)
    assert clock.now(ticks.read_database) == pytest.approx(1_000_060.0, abs=1e-9)
    assert ticks.reads == 2


def test_resync_zero_reads_every_time() -> None:
    ticks = Ticks()
    clock = ticks.clock(resync_s=0.0)
    for _ in range(3):
        clock.now(ticks.read_database)
    assert ticks.reads == 3


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="resync_s must be >= 0"):
        DatabaseClock(resync_s=-1.0)
