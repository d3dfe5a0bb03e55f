"""Secrets in URLs are masked before anything prints or logs them."""

from __future__ import annotations

import io
import logging

import pytest

from docstokg.cli.output import MaskSecrets
from docstokg.redact import is_secret_param, mask_url, mask_urls


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        # Database URLs: the password, percent-encoded or holding '/', '?' or '@'.
        ("postgresql+psycopg://ledger:s3cret@db:5432/docstokg",
         "postgresql+psycopg://ledger:***@db:5432/docstokg"),
        ("postgresql://ledger:p%40ss@db/docstokg", "postgresql://ledger:***@db/docstokg"),
        ("postgresql://ledger:pa/ss?x@db/docstokg", "postgresql://ledger:***@db/docstokg"),
        ("postgresql://ledger:p@ss@db/docstokg", "postgresql://ledger:***@db/docstokg"),
        ("postgresql://ledger@db/docstokg?password=s3cret&sslmode=require",
         "postgresql://ledger@db/docstokg?password=***&sslmode=require"),
        ("postgresql://ledger:s3cret@[::1]:5432/db", "postgresql://ledger:***@[::1]:5432/db"),
        # Manifest URLs: userinfo and credential-like query values; the rest kept as is.
        ("https://user:secret@example.org/a/b.pdf", "https://user:***@example.org/a/b.pdf"),
        ("https://example.org/f.pdf?token=abc&name=f.pdf#page=2",
         "https://example.org/f.pdf?token=***&name=f.pdf#page=2"),
        ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AK%2F1&X-Amz-Signature=ff&X-Amz-Expires=60",
         "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60"),
        ("https://h/x?sig=abc&api_key=k&access_token=t&key=AIza",
         "https://h/x?sig=***&api_key=***&access_token=***&key=***"),
    ],
)  # fmt: skip
def test_secrets_are_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert mask_url(masked) == masked  # masking twice changes nothing


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////var/lib/docstokg/manifest.sqlite3",
        "postgresql+psycopg://ledger@db:5432/docstokg",
        "https://registry.example.org/@scope/pkg/-/pkg-1.0.tgz",  # '@' in the path
        "https://example.org:8443/@scope/pkg?page=2",  # a port, then '@' in the path
        "https://example.org/a.pdf?keyword=x&token=",  # empty values hide nothing
        "not a url at all",
        "",
    ],
)
def test_urls_without_secrets_are_unchanged(url: str) -> None:
    assert mask_url(url) == url


@pytest.mark.parametrize(
    ("name", "secret"),
    [("token", True), ("X-Amz-Signature", True), ("client_secret", True), ("PWD", True),
     ("key", True), ("name", False), ("keyword", False), ("page", False)],
)  # fmt: skip
def test_which_query_names_are_secrets(name: str, secret: bool) -> None:
    assert is_secret_param(name) is secret


def test_urls_inside_text_are_masked() -> None:
    text = (
        "HTTP 404 Not Found for https://u:hunter2@example.org/x.pdf?token=abc; "
        "cannot use 'postgresql://ledger:s3cret@db/docstokg'"
    )
    masked = mask_urls(text)
    assert "hunter2" not in masked
    assert "abc" not in masked
    assert "s3cret" not in masked
    assert masked == (
        "HTTP 404 Not Found for https://u:***@example.org/x.pdf?token=***; "
        "cannot use 'postgresql://ledger:***@db/docstokg'"
    )


def test_log_records_are_masked_message_arguments_and_traceback() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(MaskSecrets())
    logger = logging.getLogger("docstokg.test_redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("retrying %s", "https://u:hunter2@h/x?token=abc")
        try:
            raise RuntimeError("failed for postgresql://ledger:s3cret@db/x")
        except RuntimeError:
            logger.exception("job failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "retrying https://u:***@h/x?token=***" in text
    assert "postgresql://ledger:***@db/x" in text
    for secret in ("hunter2", "abc", "s3cret"):
        assert secret not in text
