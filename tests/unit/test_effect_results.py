"""How an effect's result is recorded, and what a replay of it returns."""

from __future__ import annotations

import json
from enum import StrEnum
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docstokg.errors import EffectResultTooLarge
from docstokg.services.effect_results import recorded as _recorded

plain = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
nested = st.recursive(
    plain, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3)
)


def _same(left: Any, right: Any) -> bool:
    """Equal, of the same types, dicts in the same key order (all the way down)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return list(left) == list(right) and all(_same(left[k], right[k]) for k in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(map(_same, left, right))
    return bool(left == right)  # no NaN: results must be finite


@given(result=st.dictionaries(st.text(), plain | nested, max_size=6))
def test_what_is_returned_is_what_a_replay_decodes(result: dict[str, Any]) -> None:
    encoded, returned = _recorded(result, "HEAD", 1 << 20)
    assert encoded == json.dumps(
        result, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    assert _same(returned, json.loads(encoded))


def test_a_flat_result_is_copied_not_shared() -> None:
    result = {"b": 1, "a": "x"}
    _, returned = _recorded(result, "HEAD", 1024)
    assert returned == result
    assert returned is not result
    assert list(returned) == ["a", "b"]  # in the recorded (sorted) order


class Kind(StrEnum):
    HEAD = "head"


class Count(int):
    pass


class Redacting(dict[str, Any]):
    def __getitem__(self, key: str) -> Any:
        return "***"


@pytest.mark.parametrize(
    "result",
    [
        {"kind": Kind.HEAD},
        {"count": Count(3)},
        {"flag": True, "n": 1},
        Redacting(token="abc"),
        MappingProxyType({"b": 2, "a": 1}),
    ],
)
def test_subclasses_and_other_mappings_return_what_a_replay_decodes(result: Any) -> None:
    encoded, returned = _recorded(result, "HEAD", 1024)
    assert _same(returned, json.loads(encoded))


def test_values_whose_json_differs_are_decoded_as_a_replay_would() -> None:
    _, returned = _recorded({"range": (0, 10)}, "STREAM", 1024)
    assert returned == {"range": [0, 10]}  # a tuple comes back as a list
    _, returned = _recorded({1: "one"}, "STREAM", 1024)
    assert returned == {"1": "one"}  # a key comes back as text


@pytest.mark.parametrize(
    ("result", "error"),
    [
        (["not", "a", "dict"], TypeError),
        ({"when": object()}, TypeError),
        ({"ratio": float("nan")}, TypeError),
        ({"blob": "x" * 100}, EffectResultTooLarge),
    ],
)
def test_results_that_cannot_be_recorded_are_refused(result: object, error: type) -> None:
    with pytest.raises(error):
        _recorded(result, "HEAD", 64)
