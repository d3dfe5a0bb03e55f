"""The transition table itself: exactly the documented moves, and none of them backward.

A backward move slipped into ``_FORWARD`` (say STREAMING → HEAD_DONE) would let
a replayed step undo progress; a mutation test showed no test noticed.  Here
the table is compared with the path written out independently, and every
backward pair and every move out of a terminal success is checked refused.
"""

from __future__ import annotations

import itertools

import pytest

from docstokg.states import PATH_RANK, SUCCESS_STATES, TRANSITIONS, JobState, is_allowed

S = JobState

# The documented path, written out here rather than derived from the code under test.
FORWARD_ORDER: tuple[JobState, ...] = (
    S.PLANNED,
    S.LEASED,
    S.HEAD_DONE,
    S.RESUME_OK,
    S.STREAMING,
    S.FINALIZED,
    S.INDEXED,
    S.DEDUPED,  # DEDUPED and SKIPPED_DUPLICATE are alternatives at the end
)
EXPECTED: dict[JobState, set[JobState]] = {
    S.PLANNED: {S.LEASED, S.FAILED},
    S.LEASED: {S.HEAD_DONE, S.FAILED},
    S.HEAD_DONE: {S.RESUME_OK, S.STREAMING, S.FAILED},
    S.RESUME_OK: {S.STREAMING, S.FAILED},
    S.STREAMING: {S.FINALIZED, S.FAILED},
    S.FINALIZED: {S.INDEXED, S.FAILED},
    S.INDEXED: {S.DEDUPED, S.SKIPPED_DUPLICATE, S.FAILED},
    S.DEDUPED: set(),
    S.SKIPPED_DUPLICATE: set(),
    S.FAILED: {S.LEASED},  # the retry: a grant restarts a FAILED job
}


def _position(state: JobState) -> int:
    return FORWARD_ORDER.index(S.DEDUPED if state in SUCCESS_STATES else state)


def backward_pairs() -> list[tuple[JobState, JobState]]:
    """Every (from, to) on the path with ``to`` before ``from``, and every move out of an end."""
    on_path = [state for state in JobState if state is not S.FAILED]
    backward: list[tuple[JobState, JobState]] = [
        (frm, to)
        for frm, to in itertools.product(on_path, on_path)
        if _position(to) < _position(frm)
    ]
    out_of_ends: list[tuple[JobState, JobState]] = [
        (frm, to) for frm in SUCCESS_STATES for to in JobState
    ]
    out_of_failed: list[tuple[JobState, JobState]] = [
        (S.FAILED, to) for to in JobState if to is not S.LEASED
    ]
    return sorted(set(backward + out_of_ends + out_of_failed))


def test_the_table_has_exactly_the_documented_moves() -> None:
    actual = {state: set(TRANSITIONS[state]) for state in JobState}
    assert actual == EXPECTED


@pytest.mark.parametrize(("frm", "to"), backward_pairs(), ids=str)
def test_no_backward_move_is_allowed(frm: JobState, to: JobState) -> None:
    assert not is_allowed(frm, to), f"the table allows the backward move {frm} → {to}"


def test_every_allowed_move_goes_forward_or_to_failed_or_retries() -> None:
    for frm, to in itertools.product(JobState, JobState):
        if not is_allowed(frm, to):
            continue
        retry = (frm, to) == (S.FAILED, S.LEASED)
        assert to is S.FAILED or retry or PATH_RANK[to] > PATH_RANK[frm], f"{frm} → {to}"


def test_the_backward_pairs_cover_the_whole_path() -> None:
    """The parametrisation above is not vacuous: 21 on the path, 20 out of ends, 9 out of FAILED."""
    pairs = backward_pairs()
    assert (S.STREAMING, S.HEAD_DONE) in pairs
    assert len(pairs) == 21 + 2 * 10 + 9
