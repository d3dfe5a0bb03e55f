"""The run's candidates: windows of its own unfinished jobs, rotating, never a finished one."""

from __future__ import annotations

import pytest

from docstokg.run.candidates import Candidates


def test_windows_cover_every_job_once_and_rotate_between_calls() -> None:
    candidates = Candidates([f"j{n}" for n in range(10)], window=4)

    first = list(candidates.windows())
    second = list(candidates.windows())

    assert [len(window) for window in first] == [4, 4, 2]
    assert sorted(job for window in first for job in window) == sorted(f"j{n}" for n in range(10))
    assert first[0] != second[0]  # concurrent workers start at different places


def test_an_ended_job_is_offered_no_more_until_the_ledger_says_it_is_unfinished() -> None:
    candidates = Candidates(["a", "b", "c", "a"], window=10)

    candidates.ended(["b"])
    assert sorted(candidates.window()) == ["a", "c"]
    candidates.keep(["a", "c"], unfinished={"c"})
    assert candidates.window() == ["c"]
    assert len(candidates) == 1

    candidates.reset({"a", "b"})  # b was requeued (job verify): offered again
    assert sorted(candidates.window()) == ["a", "b"]


def test_with_every_job_ended_there_is_nothing_to_claim() -> None:
    candidates = Candidates(["a", "b"], window=1)
    candidates.ended(["a", "b", "not-ours"])

    assert candidates.window() == []
    assert list(candidates.windows()) == []
    assert len(candidates) == 0


def test_a_window_holds_at_least_one_job() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Candidates(["a"], window=0)
