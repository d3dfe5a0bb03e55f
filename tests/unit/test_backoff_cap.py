"""A server's Retry-After delays the next attempt, but never past the backoff's cap.

A hostile or broken server can answer ``Retry-After: 999999``; taken as is,
it would park the job for days.  The mutation test dropped the cap and no
test noticed.
"""

from __future__ import annotations

from docstokg.services import Backoff


def test_a_huge_retry_after_is_capped_at_cap_s() -> None:
    backoff = Backoff(base_s=1.0, cap_s=10.0)
    # The first attempt's own delay is 0.5-1 s, so the cap is what decides here.
    assert backoff.delay_s(1, retry_after_s=1e6) == 10.0


def test_a_retry_after_under_the_cap_is_waited_out() -> None:
    backoff = Backoff(base_s=1.0, cap_s=10.0)
    assert backoff.delay_s(1, retry_after_s=7.0) == 7.0
