"""The pipeline is one table, and each step's allowed origins are read off the transition table.

The origins are written out here independently: if the table of moves and
the steps drift apart (a state inserted on the path without the step after
it learning to start from it), a step would refuse every job.
"""

from __future__ import annotations

import pytest

from docstokg.errors import UnknownState
from docstokg.run.steps import PIPELINE, Step
from docstokg.states import JobState, as_state, as_states, origins

S = JobState


def test_the_pipeline_walks_head_stream_finalize_index_dedupe_in_that_order() -> None:
    assert [step.kind for step in PIPELINE] == ["HEAD", "STREAM", "FINALIZE", "INDEX", "DEDUPE"]
    assert [step.effect is not None for step in PIPELINE] == [True, True, True, False, False]


def test_each_step_starts_from_the_states_the_transition_table_moves_to_its_target_from() -> None:
    assert {step.kind: step.allowed_from for step in PIPELINE} == {
        "HEAD": {S.LEASED},
        "STREAM": {S.HEAD_DONE, S.RESUME_OK},
        "FINALIZE": {S.STREAMING},
        "INDEX": {S.FINALIZED},
        "DEDUPE": {S.INDEXED},
    }


def test_dedupe_chooses_its_state_from_its_result() -> None:
    dedupe = PIPELINE[-1]
    assert dedupe.moves_to == {S.DEDUPED, S.SKIPPED_DUPLICATE}
    assert callable(dedupe.target)
    assert dedupe.target({"outcome": "SKIPPED_DUPLICATE"}) is S.SKIPPED_DUPLICATE


def test_origins_of_a_move_back_into_the_lifecycle_include_failed() -> None:
    assert origins({S.LEASED}) == {S.PLANNED, S.FAILED}
    assert S.FAILED not in origins({S.FAILED})
    assert origins({S.FAILED}) >= {S.LEASED, S.STREAMING, S.INDEXED}


@pytest.mark.parametrize(
    ("kwargs", "complaint"),
    [
        ({}, "exactly one of effect and write"),
        ({"effect": lambda job: {}, "write": lambda job: lambda uow, now: {}}, "exactly one"),
        ({"write": lambda job: lambda uow, now: {}}, "plain body"),
    ],
)
def test_a_malformed_row_is_refused_when_the_table_is_built(
    kwargs: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        Step("VERIFY", frozenset({S.FINALIZED}), **kwargs)  # type: ignore[arg-type]


def test_a_row_with_several_targets_must_say_how_it_chooses() -> None:
    with pytest.raises(ValueError, match="must choose"):
        Step("SPLIT", frozenset({S.DEDUPED, S.SKIPPED_DUPLICATE}), effect=lambda job: {})


def test_state_names_are_states() -> None:
    assert as_state("HEAD_DONE") is S.HEAD_DONE
    assert as_state(S.LEASED) is S.LEASED
    assert as_states(("LEASED", S.HEAD_DONE)) == {S.LEASED, S.HEAD_DONE}


def test_an_unknown_state_name_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(UnknownState, match=r"'HEAD_DUN' is not a job state.*HEAD_DONE"):
        as_state("HEAD_DUN")


def test_one_name_where_a_collection_of_states_belongs_is_refused() -> None:
    with pytest.raises(UnknownState, match=r"write allowed_from=\('LEASED',\)"):
        as_states("LEASED")
