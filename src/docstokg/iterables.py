"""Small iteration helpers (``itertools.batched`` arrived only in Python 3.12)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

_T = TypeVar("_T")


def batched(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    """Consecutive lists of at most ``size`` items, without materialising ``items``."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
