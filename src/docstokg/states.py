"""Job states and the table of moves between them.

A job walks one path::

    PLANNED → LEASED → HEAD_DONE → [RESUME_OK] → STREAMING → FINALIZED → INDEXED
            → DEDUPED | SKIPPED_DUPLICATE

FAILED can be entered from any state that is not terminal, and a FAILED job
with attempts left goes back to LEASED when a worker is granted it.  DEDUPED
and SKIPPED_DUPLICATE are terminal successes; a FAILED job whose attempts are
exhausted is terminal too, but that depends on its counters, not its state.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from enum import StrEnum

from docstokg.errors import UnknownState


class JobState(StrEnum):
    """Where a job stands.  Values are the strings stored in ``artifact_jobs.state``."""

    PLANNED = "PLANNED"
    LEASED = "LEASED"
    HEAD_DONE = "HEAD_DONE"
    RESUME_OK = "RESUME_OK"
    STREAMING = "STREAMING"
    FINALIZED = "FINALIZED"
    INDEXED = "INDEXED"
    DEDUPED = "DEDUPED"
    FAILED = "FAILED"
    SKIPPED_DUPLICATE = "SKIPPED_DUPLICATE"


SUCCESS_STATES = frozenset({JobState.DEDUPED, JobState.SKIPPED_DUPLICATE})
"""Terminal states in which the artifact is stored (by this job or another)."""

# Position on the path, for "is the job already at or past this state?".
# The two terminal successes share the last rank: they are alternatives.
PATH_RANK: dict[JobState, int] = {
    JobState.PLANNED: 0,
    JobState.LEASED: 1,
    JobState.HEAD_DONE: 2,
    JobState.RESUME_OK: 3,
    JobState.STREAMING: 4,
    JobState.FINALIZED: 5,
    JobState.INDEXED: 6,
    JobState.DEDUPED: 7,
    JobState.SKIPPED_DUPLICATE: 7,
}

_FORWARD: dict[JobState, frozenset[JobState]] = {
    JobState.PLANNED: frozenset({JobState.LEASED}),
    JobState.LEASED: frozenset({JobState.HEAD_DONE}),
    JobState.HEAD_DONE: frozenset({JobState.RESUME_OK, JobState.STREAMING}),
    JobState.RESUME_OK: frozenset({JobState.STREAMING}),
    JobState.STREAMING: frozenset({JobState.FINALIZED}),
    JobState.FINALIZED: frozenset({JobState.INDEXED}),
    JobState.INDEXED: frozenset(SUCCESS_STATES),
    JobState.FAILED: frozenset({JobState.LEASED}),
}

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    state: (
        _FORWARD.get(state, frozenset())
        | (
            frozenset({JobState.FAILED})
            if state not in SUCCESS_STATES | {JobState.FAILED}
            else frozenset()
        )
    )
    for state in JobState
}
"""Every allowed move: ``to in TRANSITIONS[frm]``."""

# States a grant turns into LEASED; every other claimable state is kept, so the
# new holder resumes where the last one stopped.
RESTART_ON_GRANT = frozenset({JobState.PLANNED, JobState.FAILED})


def is_allowed(frm: JobState, to: JobState) -> bool:
    return to in TRANSITIONS[frm]


def is_at_or_past(current: JobState, target: JobState) -> bool:
    """True when a job in ``current`` has already reached ``target`` (a replayed move)."""
    if current == target:
        return True
    if current not in PATH_RANK or target not in PATH_RANK:
        return False
    if target in SUCCESS_STATES:  # the other terminal success is not "past" this one
        return False
    return PATH_RANK[current] > PATH_RANK[target]


def as_state(value: JobState | str) -> JobState:
    """``value`` as a :class:`JobState`: the library accepts state names wherever it takes states.

    ``"HEAD_DONE"`` and ``JobState.HEAD_DONE`` are the same; any other name
    is refused with the list of valid ones.
    """
    if isinstance(value, JobState):
        return value
    try:
        return JobState(value)
    except ValueError:
        names = ", ".join(state.value for state in JobState)
        raise UnknownState(f"{value!r} is not a job state; the states are: {names}") from None


def as_states(values: Iterable[JobState | str]) -> frozenset[JobState]:
    """Every name of ``values`` as a :class:`JobState` (see :func:`as_state`).

    A single string is refused: ``allowed_from="LEASED"`` would otherwise be
    read as the letters L, E, A, S...
    """
    if isinstance(values, str):
        raise UnknownState(
            f"allowed_from={values!r} is one name, not a collection of states; "
            f"write allowed_from=({values!r},)"
        )
    return frozenset(as_state(value) for value in values)


def origins(targets: Collection[JobState]) -> frozenset[JobState]:
    """The states from which the transition table moves a job to one of ``targets``.

    A step's allowed origins, read off the table: adding a state in the
    middle of the path changes where the next step starts from here, and
    nowhere else.
    """
    wanted = frozenset(targets)
    return frozenset(state for state, moves in TRANSITIONS.items() if moves & wanted)
