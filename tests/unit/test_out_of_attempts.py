"""The text a job keeps once its attempts are used up."""

from __future__ import annotations

from docstokg.services import out_of_attempts
from docstokg.services.transitions import MAX_ERROR_CHARS


def test_the_error_says_no_attempt_is_left() -> None:
    error = "HTTP 503 for http://h/x (transient: retried later)"
    assert out_of_attempts(error, 5, 5) == f"{error}; no attempt left (5 of 5 used)"


def test_a_long_error_is_shortened_so_that_the_ending_survives() -> None:
    text = out_of_attempts("x" * (2 * MAX_ERROR_CHARS), 3, 3)
    assert len(text) == MAX_ERROR_CHARS
    assert text.endswith("x; no attempt left (3 of 3 used)")
