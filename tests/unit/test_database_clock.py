"""DatabaseClock: PostgreSQL's time, read once in a while and carried forward in between."""

from __future__ import annotations

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

    def read_database(self) -> float:
        self.reads += 1
        self.monotonic += self.read_takes / 2
        value = self.monotonic + self.database_offset  # the database reads its clock mid-trip
        self.monotonic += self.read_takes / 2
        return value


def test_the_first_reading_asks_the_database() -> None:
    ticks = Ticks()
    clock = DatabaseClock(resync_s=10.0, monotonic=lambda: ticks.monotonic)
    assert clock.now(ticks.read_database) == pytest.approx(1_000_050.0)
    assert ticks.reads == 1


def test_within_the_interval_time_is_carried_forward_without_a_round_trip() -> None:
    ticks = Ticks()
    clock = DatabaseClock(resync_s=10.0, monotonic=lambda: ticks.monotonic)
    clock.now(ticks.read_database)
    ticks.monotonic += 9.5
    assert clock.now(ticks.read_database) == pytest.approx(1_000_059.5)
    assert ticks.reads == 1


def test_after_the_interval_the_database_is_read_again() -> None:
    ticks = Ticks()
    clock = DatabaseClock(resync_s=10.0, monotonic=lambda: ticks.monotonic)
    clock.now(ticks.read_database)
    ticks.monotonic += 10.0
    ticks.database_offset += 3.0  # the database's clock was stepped meanwhile
    assert clock.now(ticks.read_database) == pytest.approx(1_000_063.0)
    assert ticks.reads == 2


def test_a_reading_counts_from_the_middle_of_its_round_trip() -> None:
    ticks = Ticks()
    ticks.read_takes = 2.0
    clock = DatabaseClock(resync_s=10.0, monotonic=lambda: ticks.monotonic)
    first = clock.now(ticks.read_database)
    # The database read 1,000,051 one second into the trip; the trip ended at 52.
    assert first == pytest.approx(1_000_052.0)
    ticks.monotonic += 1.0
    assert clock.now(ticks.read_database) == pytest.approx(1_000_053.0)


def test_time_never_runs_backwards_when_a_new_reading_is_behind() -> None:
    ticks = Ticks()
    clock = DatabaseClock(resync_s=10.0, monotonic=lambda: ticks.monotonic)
    clock.now(ticks.read_database)
    ticks.monotonic += 10.0
    carried = 1_000_060.0
    ticks.database_offset -= 0.25  # this reading is a quarter second behind what was carried
    assert clock.now(ticks.read_database) == pytest.approx(carried)
    ticks.monotonic += 1.0
    assert clock.now(ticks.read_database) == pytest.approx(carried + 0.75)


@given(steps=st.lists(st.tuples(st.floats(0, 30), st.floats(-5, 5)), min_size=1, max_size=40))
def test_answers_never_decrease(steps: list[tuple[float, float]]) -> None:
    ticks = Ticks()
    clock = DatabaseClock(resync_s=10.0, monotonic=lambda: ticks.monotonic)
    answers = [clock.now(ticks.read_database)]
    for elapsed, step in steps:
        ticks.monotonic += elapsed
        ticks.database_offset += step
        answers.append(clock.now(ticks.read_database))
    assert answers == sorted(answers)


def test_resync_zero_reads_every_time() -> None:
    ticks = Ticks()
    clock = DatabaseClock(resync_s=0.0, monotonic=lambda: ticks.monotonic)
    for _ in range(3):
        clock.now(ticks.read_database)
    assert ticks.reads == 3


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="resync_s must be >= 0"):
        DatabaseClock(resync_s=-1.0)
