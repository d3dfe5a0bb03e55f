"""What every step records: its result as canonical JSON, within a size limit, or its failure."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from typing import Any

from docstokg.errors import EffectResultTooLarge, InvalidTransition
from docstokg.keys import canonical_text
from docstokg.ledger import Lease, Ledger
from docstokg.services.transitions import MAX_ERROR_CHARS
from docstokg.states import JobState, as_state, as_states, origins

DEFAULT_MAX_RESULT_BYTES = 64 * 1024

EffectResult = dict[str, Any]
#: The state a step moves its job to, or the function of its result that picks it.
Target = JobState | Callable[[EffectResult], JobState]


def move_of(
    advance_to: JobState | str | None, allowed_from: Collection[JobState | str] | None
) -> tuple[JobState | None, frozenset[JobState]]:
    """A move given by name or state; the origins default to the transition table's."""
    if advance_to is None:
        return None, as_states(allowed_from or ())
    target = step_target(as_state(advance_to))
    return target, origins({target}) if allowed_from is None else as_states(allowed_from)


#: Moves that belong to the lifecycle, not to a step: a failure goes through
#: ``fail_job`` (an attempt counted, the lease ended, a backoff), a grant through a claim.
_NOT_A_STEP_TARGET = frozenset({JobState.FAILED, JobState.LEASED, JobState.PLANNED})


def step_target(target: JobState) -> JobState:
    """``target``, unless no step may move a job there (see ``_NOT_A_STEP_TARGET``)."""
    if target in _NOT_A_STEP_TARGET:
        raise InvalidTransition(
            f"a step cannot move its job to {target}: use fail_job to record a failure "
            "(it counts the attempt and ends the lease); a job is LEASED only by a claim"
        )
    return target


def recorded(result: object, kind: str, limit: int) -> tuple[str, EffectResult]:
    """``result`` as the ledger records it (JSON text), and as every replay returns it."""
    if not isinstance(result, Mapping):
        raise TypeError(
            f"the {kind} effect returned {type(result).__name__}, not a dict; effects "
            "return a JSON object describing what they did"
        )
    try:
        encoded = canonical_text(dict(result))  # sorted keys, no spaces, finite numbers
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"the {kind} effect returned a result that is not JSON-serialisable ({exc}); "
            "return str, numbers, bools, None, lists and dicts only"
        ) from exc
    size = len(encoded.encode("utf-8"))
    if size > limit:
        raise EffectResultTooLarge(kind, size, limit)
    return encoded, decoded_result(encoded)


def decoded_result(encoded: str) -> EffectResult:
    """A recorded result as a replay returns it."""
    decoded: EffectResult = json.loads(encoded)
    return decoded


def record_failure(ledger: Ledger, lease: Lease, opkey: str, error: str) -> None:
    """Record the op as FAILED so it runs again; skipped if the lease is gone.

    Without the lease the op stays IN_PROGRESS under an old epoch, which the
    next holder takes over all the same.
    """
    with ledger.unit_of_work() as uow:
        if uow.ops.fail(lease, op_key=opkey, error=error[:MAX_ERROR_CHARS], now=uow.now()):
            uow.commit()
