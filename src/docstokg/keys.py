"""Deterministic idempotency keys.

A key is the SHA-256 of a canonical JSON document: keys sorted, no whitespace,
UTF-8, and a ``v`` field naming the key format.  The same inputs give the same
key in every process, on every machine and Python version, which is what lets
a restarted worker find the job and op rows that an earlier one wrote.  Should
the format ever change, ``v`` changes with it so old and new keys never collide.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from docstokg.errors import KeyInputError

KEY_FORMAT_VERSION = 1

JsonValue = str | int | float | bool | None | list["JsonValue"] | dict[str, "JsonValue"]


def job_key(work_id: str, artifact_id: str, canonical_url: str) -> str:
    """The idempotency key of the job that fetches ``canonical_url`` for one artifact."""
    for name, value in (
        ("work_id", work_id),
        ("artifact_id", artifact_id),
        ("canonical_url", canonical_url),
    ):
        if not isinstance(value, str) or not value:
            raise KeyInputError(f"job_key needs a non-empty string for {name}, got {value!r}")
    return _digest(
        {
            "v": KEY_FORMAT_VERSION,
            "type": "job",
            "work_id": work_id,
            "artifact_id": artifact_id,
            "canonical_url": canonical_url,
        }
    )


def op_key(kind: str, job_id: str, /, **context: JsonValue) -> str:
    """The key of one effect (``kind``) of one job, refined by ``context``.

    ``context`` separates effects of the same kind that must run separately
    (for example one STREAM per byte range); it must be plain JSON data.
    """
    if not isinstance(kind, str) or not kind:
        raise KeyInputError(f"op_key needs a non-empty string kind, got {kind!r}")
    if not isinstance(job_id, str) or not job_id:
        raise KeyInputError(f"op_key needs a non-empty string job_id, got {job_id!r}")
    _check_json(context, "context")
    return _digest(
        {"v": KEY_FORMAT_VERSION, "type": "op", "kind": kind, "job_id": job_id, "context": context}
    )


_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(document: Mapping[str, JsonValue]) -> bytes:
    """The exact bytes that are hashed: sorted keys, no whitespace, UTF-8."""
    return canonical_text(document).encode("utf-8")


def canonical_text(document: Mapping[str, Any]) -> str:
    """``document`` as canonical JSON text (as :func:`canonical_json`, before UTF-8).

    Raises TypeError for values JSON cannot hold, ValueError for NaN and infinities.
    """
    return _ENCODER.encode(document)


def _digest(document: Mapping[str, JsonValue]) -> str:
    return hashlib.sha256(canonical_json(document)).hexdigest()


def _check_json(value: object, where: str) -> None:
    """Refuse values whose JSON form would be ambiguous or platform-dependent."""
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise KeyInputError(f"op_key context {where} is {value!r}; use a finite number")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json(item, f"{where}[{index}]")
        return
    if isinstance(value, Mapping):
        for name, item in value.items():
            if not isinstance(name, str):
                raise KeyInputError(
                    f"op_key context {where} has the non-string key {name!r}; "
                    "JSON keys must be strings"
                )
            _check_json(item, f"{where}.{name}")
        return
    raise KeyInputError(
        f"op_key context {where} is a {type(value).__name__} ({value!r}); "
        "only str, int, float, bool, None, lists and dicts of those can be hashed"
    )


def job_id_for(idempotency_key: str) -> str:
    """The job_id of a new job: the first 128 bits of its key, spelled as a UUID.

    Derived rather than random so that the same job has the same id in every
    ledger it is planned into (a SQLite trial and the PostgreSQL production
    run, a ledger rebuilt from its manifest).  Jobs adopted from v3 keep theirs.
    """
    k = idempotency_key
    return f"{k[:8]}-{k[8:12]}-{k[12:16]}-{k[16:20]}-{k[20:32]}"
