"""Every backward move through ``advance_state`` is refused and leaves the row as it was.

A job is walked to each state a holder can be in (and to each terminal
success); from there every move to an earlier state, and every move out of a
terminal success, must raise :class:`InvalidTransition` and change nothing.
A backward entry added to the transition table (STREAMING → HEAD_DONE) went
unnoticed by the suite before these tests.
"""

from __future__ import annotations

import pytest

from docstokg import InvalidTransition, JobState, Lease, Ledger, advance_state
from docstokg.states import SUCCESS_STATES
from tests.lifecycle import PATH_FROM_LEASED, job_of, plan, take, walk
from tests.unit.test_transition_table import FORWARD_ORDER

S = JobState


def _earlier(state: JobState) -> list[JobState]:
    """The states before ``state`` on the path (PLANNED first)."""
    return list(FORWARD_ORDER[: FORWARD_ORDER.index(state)])


def _refused_and_unmoved(ledger: Ledger, lease: Lease, frm: JobState, to: JobState) -> None:
    before = job_of(ledger, lease.job_id)
    assert before.state is frm
    with pytest.raises(InvalidTransition):
        advance_state(ledger, lease, to_state=to, allowed_from=[frm])
    assert job_of(ledger, lease.job_id) == before, f"{frm} → {to} was refused but moved the row"


@pytest.mark.parametrize("frm", list(PATH_FROM_LEASED), ids=str)
def test_every_backward_move_from_a_held_state_is_refused(ledger: Ledger, frm: JobState) -> None:
    plan(ledger)
    lease = take(ledger, "worker-a")
    walk(ledger, lease, frm)
    earlier = _earlier(frm)
    assert earlier, f"no state comes before {frm}"
    for to in earlier:
        _refused_and_unmoved(ledger, lease, frm, to)
    # The holder still holds the job and may move it on: nothing was spent.
    assert job_of(ledger, lease.job_id).lease_epoch == lease.epoch


@pytest.mark.parametrize("end", sorted(SUCCESS_STATES), ids=str)
def test_no_move_out_of_a_terminal_success(ledger: Ledger, end: JobState) -> None:
    plan(ledger)
    lease = take(ledger, "worker-a")
    walk(ledger, lease, S.INDEXED)
    assert advance_state(ledger, lease, to_state=end, allowed_from=[S.INDEXED]) is True
    for to in JobState:
        _refused_and_unmoved(ledger, lease, end, to)


def test_streaming_back_to_head_done_is_refused(ledger: Ledger) -> None:
    """The mutant the mutation test planted, named on its own for a readable failure."""
    plan(ledger)
    lease = take(ledger, "worker-a")
    walk(ledger, lease, S.STREAMING)
    _refused_and_unmoved(ledger, lease, S.STREAMING, S.HEAD_DONE)
    assert advance_state(ledger, lease, to_state=S.FINALIZED, allowed_from=[S.STREAMING]) is True
