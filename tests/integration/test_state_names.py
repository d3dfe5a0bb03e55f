"""The seed's call style: states by name wherever the library takes a JobState.

``advance_state(ledger, lease, to_state="HEAD_DONE", allowed_from=("LEASED",))``
raised ``AttributeError: 'str' object has no attribute 'value'`` before.
"""

from __future__ import annotations

import pytest

from docstokg import JobState, JobSteps, Ledger, advance_state, run_effect
from docstokg.errors import UnknownState
from docstokg.keys import op_key
from tests.lifecycle import job_of, plan, take


def test_advance_state_takes_state_names(ledger: Ledger) -> None:
    plan(ledger)
    lease = take(ledger, "w1")
    assert advance_state(ledger, lease, to_state="HEAD_DONE", allowed_from=("LEASED",)) is True
    assert job_of(ledger, lease.job_id).state is JobState.HEAD_DONE


def test_advance_state_reads_the_origins_off_the_transition_table_when_none_are_given(
    ledger: Ledger,
) -> None:
    plan(ledger)
    lease = take(ledger, "w1")
    assert advance_state(ledger, lease, to_state="HEAD_DONE") is True
    assert advance_state(ledger, lease, to_state=JobState.STREAMING) is True
    assert job_of(ledger, lease.job_id).state is JobState.STREAMING


def test_an_unknown_state_name_is_a_clear_error_and_nothing_moves(ledger: Ledger) -> None:
    plan(ledger)
    lease = take(ledger, "w1")
    with pytest.raises(UnknownState, match="'HEAD_DUN' is not a job state"):
        advance_state(ledger, lease, to_state="HEAD_DUN", allowed_from=("LEASED",))
    with pytest.raises(UnknownState, match="one name, not a collection"):
        advance_state(ledger, lease, to_state="HEAD_DONE", allowed_from="LEASED")
    assert job_of(ledger, lease.job_id).state is JobState.LEASED


def test_effects_and_chained_steps_take_state_names(ledger: Ledger) -> None:
    plan(ledger)
    lease = take(ledger, "w1")
    head = run_effect(
        ledger, lease, kind="HEAD", opkey=op_key("HEAD", lease.job_id),
        effect_fn=lambda: {"status": 200}, advance_to="HEAD_DONE", allowed_from=["LEASED"],
    )  # fmt: skip
    assert head == {"status": 200}
    with JobSteps(ledger, lease) as steps:  # the chained API: each result commits with the next
        steps.effect(kind="STREAM", opkey=op_key("STREAM", lease.job_id),
                     effect_fn=lambda: {"size": 1}, advance_to="STREAMING")  # fmt: skip
        steps.effect(kind="FINALIZE", opkey=op_key("FINALIZE", lease.job_id),
                     effect_fn=lambda: {"final_path": "x"}, advance_to="FINALIZED")  # fmt: skip
    assert job_of(ledger, lease.job_id).state is JobState.FINALIZED
