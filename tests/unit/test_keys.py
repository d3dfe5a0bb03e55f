"""Idempotency keys: fixed vectors, the documented canonical form, bad input."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docstokg import job_key, op_key
from docstokg.errors import KeyInputError
from docstokg.keys import JsonValue, canonical_json

# Changing any of these changes every key in every ledger: it needs a new
# KEY_FORMAT_VERSION, never an edit of the vectors.
JOB_VECTORS = [
    (
        ("W1", "pdf", "https://example.org/w1.pdf"),
        "6a270695a1057d7b7a6715e156de8d88557a2fc8815d286e3944d7c0b05174f2",
    ),
    (
        ("W\u00e9", "a", "https://ex.org/\u2603"),
        "4abf2effb7ae5947eecbe561ef16c94387d523d25b9fff6e28cb105af9a86e98",
    ),
]
OP_VECTORS = [
    (("HEAD", "job-1", {}), "d3275e56e62baeb048835e49856ba8739ec305a162281bc0c6ae264176724e0d"),
    (
        (
            "STREAM",
            "job-1",
            {
                "range": [0, 1024],
                "etag": '"abc"',
                "attempt": 2,
                "ratio": 0.5,
                "flag": True,
                "none": None,
            },
        ),
        "d19cae81ad92096786e1dd48f75b7f34fe2eebd102b27688721dd6212da2aeec",
    ),
]


@pytest.mark.parametrize(("args", "expected"), JOB_VECTORS)
def test_job_key_vectors(args: tuple[str, str, str], expected: str) -> None:
    assert job_key(*args) == expected


@pytest.mark.parametrize(("args", "expected"), OP_VECTORS)
def test_op_key_vectors(args: tuple[str, str, dict[str, object]], expected: str) -> None:
    kind, job_id, context = args
    assert op_key(kind, job_id, **context) == expected  # type: ignore[arg-type]


def test_job_key_is_sha256_of_the_documented_canonical_json() -> None:
    document = (
        b'{"artifact_id":"pdf","canonical_url":"https://example.org/w1.pdf",'
        b'"type":"job","v":1,"work_id":"W1"}'
    )
    assert (
        job_key("W1", "pdf", "https://example.org/w1.pdf") == hashlib.sha256(document).hexdigest()
    )


def test_op_key_is_sha256_of_the_documented_canonical_json() -> None:
    document = b'{"context":{"range":[0,1024]},"job_id":"job-1","kind":"STREAM","type":"op","v":1}'
    assert op_key("STREAM", "job-1", range=[0, 1024]) == hashlib.sha256(document).hexdigest()


def test_canonical_json_sorts_keys_has_no_whitespace_and_is_utf8() -> None:
    assert canonical_json({"b": 1, "a": [1, "x"], "c": {"z": None, "y": "\u00e9"}}) == (
        b'{"a":[1,"x"],"b":1,"c":{"y":"\xc3\xa9","z":null}}'
    )


def test_keys_are_stable_across_processes() -> None:
    program = (
        "from docstokg import job_key, op_key;"
        "print(job_key('W1', 'pdf', 'https://example.org/w1.pdf'));"
        "print(op_key('HEAD', 'job-1'))"
    )
    for seed in ("0", "12345"):
        output = subprocess.run(
            [sys.executable, "-c", program],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.split()
        assert output == [JOB_VECTORS[0][1], OP_VECTORS[0][1]]


def test_fields_cannot_bleed_into_each_other() -> None:
    assert job_key("a", "bc", "u") != job_key("ab", "c", "u")
    assert op_key("HEAD", "job-1") != op_key("HEAD", "job-1", n=0)
    assert op_key("HEAD", "job-1", n=1) != op_key("HEAD", "job-1", n="1")


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=5))
def test_op_key_ignores_context_order(context: dict[str, object]) -> None:
    reordered = dict(reversed(list(context.items())))
    assert op_key("K", "j", **context) == op_key("K", "j", **reordered)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("", "pdf", "u"), "work_id"),
        (("w", None, "u"), "artifact_id"),
        (("w", "pdf", 7), "canonical_url"),
    ],
)
def test_job_key_rejects_bad_fields(args: tuple[object, object, object], fragment: str) -> None:
    with pytest.raises(KeyInputError, match=fragment):
        job_key(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("context", "fragment"),
    [
        ({"when": float("nan")}, "finite"),
        ({"data": b"bytes"}, "bytes"),
        ({"nested": {1: "x"}}, "non-string key"),
        ({"items": [object()]}, r"items\[0\]"),
    ],
)
def test_op_key_rejects_ambiguous_context(context: dict[str, object], fragment: str) -> None:
    with pytest.raises(KeyInputError, match=fragment):
        op_key("HEAD", "job-1", **context)  # type: ignore[arg-type]


def test_key_errors_are_type_errors_and_docstokg_errors() -> None:
    from docstokg.errors import DocstokgError

    with pytest.raises(TypeError) as raised:
        op_key("", "job")
    assert isinstance(raised.value, DocstokgError)


@given(kind=st.text(min_size=1), job_id=st.text(min_size=1))
def test_an_op_key_without_context_is_the_digest_of_the_canonical_document(
    kind: str, job_id: str
) -> None:
    """Every step of the runner has no context: its key is the digest of this document."""
    document: dict[str, JsonValue] = {
        "v": 1, "type": "op", "kind": kind, "job_id": job_id, "context": {}
    }  # fmt: skip
    assert op_key(kind, job_id) == hashlib.sha256(canonical_json(document)).hexdigest()
