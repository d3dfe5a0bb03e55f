"""Masking of secrets in URLs before they reach a terminal, a log or a metric.

The ledger keeps the URLs it needs to fetch and to connect; everything a person or
a log collector reads goes through :func:`mask_url` (one URL) or :func:`mask_urls`
(free text that may quote URLs, such as a driver's error message). Both work on
plain strings, without SQLAlchemy or httpx, so any layer may use them.

What is masked, by ``***``:

* the password of the URL's userinfo (``scheme://user:secret@host``), for database
  URLs and manifest URLs alike; the user name is kept, it helps to diagnose;
* the value of every query parameter whose name looks like a credential: a name
  containing ``password``, ``passwd``, ``pwd``, ``secret``, ``token``, ``apikey``,
  ``api_key``, ``signature``, ``credential`` or ``auth``, or exactly ``key``,
  ``sig``, ``sas`` or ``code`` (pre-signed S3/GCS/Azure links, OAuth codes, libpq's
  ``?password=``). Other parameters stay readable: they name the artifact.

Masking is string surgery on the spans of the secrets: the rest of the URL is kept
byte for byte, so a masked URL still identifies its artifact.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

__all__ = ["MASK", "is_secret_param", "mask_url", "mask_urls"]

MASK = "***"

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
# An authority with no userinfo: a host (or [IPv6] literal) and an optional numeric port.
_HOST_PORT = re.compile(r"^(\[[^\]]*\]|[^:\[\]@]*)(:\d*)?$")
_SECRET_PARTS = (
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "apikey",
    "signature",
    "credential",
    "auth",
)
_SECRET_NAMES = frozenset({"key", "sig", "sas", "code"})
# A URL inside free text: a scheme, "://", then everything up to whitespace or a
# quote/bracket that usually closes it in a message.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
_TRAILING = ".,;:!?)]"


def is_secret_param(name: str) -> bool:
    """Whether a query parameter of this name carries a credential by its name."""
    folded = re.sub(r"[^a-z0-9]", "", unquote_plus(name).lower())
    return folded in _SECRET_NAMES or any(part in folded for part in _SECRET_PARTS)


def mask_url(url: str) -> str:
    """``url`` with its userinfo password and credential-like query values as ``***``.

    Never raises: a string that is not a URL comes back unchanged (it has no
    userinfo to hide), so callers may pass whatever the user typed.
    """
    scheme = _SCHEME.match(url)
    if scheme is None:
        return url
    head, rest = url[: scheme.end()], url[scheme.end() :]
    rest = _mask_userinfo(rest)
    return head + _mask_query(rest)


def mask_urls(text: str) -> str:
    """``text`` with every URL in it passed through :func:`mask_url`.

    For messages that quote a URL we did not build, such as a database driver's
    error or an exception's ``str``.
    """
    return _URL_IN_TEXT.sub(_mask_match, text)


def _mask_match(match: re.Match[str]) -> str:
    """One URL found in text; the punctuation that ends a sentence is not part of it."""
    found = match.group(0)
    url = found.rstrip(_TRAILING)
    return mask_url(url) + found[len(url) :]


def _mask_userinfo(rest: str) -> str:
    """``rest`` (the URL after ``scheme://``) with the userinfo password masked.

    RFC 3986 ends the authority at the first ``/``, ``?`` or ``#``; a password that
    holds one of them unencoded (which SQLAlchemy accepts in a database URL) makes
    that authority look like ``user:pa`` - not a valid ``host:port`` - and then the
    userinfo runs to the first ``@``, as SQLAlchemy reads it.
    """
    authority_end = _first_of(rest, "/?#")
    authority = rest[:authority_end]
    if "@" in authority:
        userinfo_end = authority.rindex("@")
    elif _HOST_PORT.match(authority) is None and "@" in rest:
        userinfo_end = rest.index("@")
    else:
        return rest
    userinfo = rest[:userinfo_end]
    if ":" not in userinfo:
        return rest
    user = userinfo[: userinfo.index(":")]
    return f"{user}:{MASK}{rest[userinfo_end:]}"


def _mask_query(rest: str) -> str:
    """``rest`` with the values of credential-like query parameters masked."""
    start = rest.find("?")
    if start < 0:
        return rest
    end = rest.find("#", start)
    end = len(rest) if end < 0 else end
    pairs = [_mask_pair(pair) for pair in rest[start + 1 : end].split("&")]
    return rest[: start + 1] + "&".join(pairs) + rest[end:]


def _mask_pair(pair: str) -> str:
    """One ``name=value`` query pair, its value masked if the name is a secret's."""
    name, sep, value = pair.partition("=")
    if sep and value and is_secret_param(name):
        return f"{name}={MASK}"
    return pair


def _first_of(text: str, characters: str) -> int:
    """Index of the first of ``characters`` in ``text``, or ``len(text)``."""
    found = [i for i in (text.find(c) for c in characters) if i >= 0]
    return min(found, default=len(text))
