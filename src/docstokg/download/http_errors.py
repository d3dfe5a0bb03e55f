"""Sorting HTTP failures into transient (retry later) and permanent (give up now).

The runner retries a :class:`TransientFetchError` with backoff and fails a job
at once on a :class:`PermanentFetchError`, so this module is where "should we
try again?" is decided, in one place, for statuses and for httpx exceptions
alike.  Every message names the URL and says which of the two it is, because
it ends up verbatim in the job's ``last_error``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from docstokg.errors import FetchError, PermanentFetchError, TransientFetchError

#: 4xx statuses that describe a passing condition of the server, not of the request.
TRANSIENT_CLIENT_STATUSES = frozenset({408, 429})


def classify_status(status: int, headers: httpx.Headers, url: str) -> FetchError | None:
    """The error a response status means, or None for a 2xx.

    5xx, 408 and 429 are transient (with the server's Retry-After, if any);
    any other 4xx, and a 3xx the client did not follow (no Location, 304 ...),
    is permanent: asking again gets the same answer.
    """
    if 200 <= status < 300:
        return None
    phrase = httpx.codes.get_reason_phrase(status) or "(no reason phrase)"
    head = f"HTTP {status} {phrase} for {url}"
    if status >= 500 or status in TRANSIENT_CLIENT_STATUSES:
        retry_after = parse_retry_after(headers.get("Retry-After"))
        wait = f", server asks to wait {retry_after:g}s" if retry_after is not None else ""
        return TransientFetchError(
            f"{head} (transient: retried later{wait})", retry_after_s=retry_after
        )
    if 300 <= status < 400:
        return PermanentFetchError(
            f"{head} (permanent: a redirect without a usable Location, not followed; not retried)"
        )
    return PermanentFetchError(f"{head} (permanent: not retried)")


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP-date).

    A date in the past means "now" (0.0); a value that is neither form is
    ignored (None) rather than trusted, so a broken header cannot stall a job.
    """
    if value is None:
        return None
    text = value.strip()
    if is_ascii_digits(text):
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC without saying so
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


def is_ascii_digits(text: str) -> bool:
    """Whether ``text`` is a non-negative integer as HTTP writes one (0-9 only).

    Not ``str.isdigit``: it also accepts digits ``int`` cannot read, such as
    ``"²"``, which a header decoded as Latin-1 can carry.
    """
    return text.isascii() and text.isdigit()


def translate_httpx_error(
    exc: Exception, url: str, *, detail: str = "", max_redirects: int | None = None
) -> FetchError:
    """The FetchError an httpx exception stands for.

    Redirect loops, unsupported schemes and malformed URLs can never succeed;
    everything on the wire (refused or reset connections, timeouts, a peer
    that hangs up mid-body) may well succeed on the next attempt.  ``detail``
    is appended after the URL (how far the body got, the redirect limit).
    """
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TooManyRedirects):
        limit = "" if max_redirects is None else f" (max_redirects={max_redirects})"
        return PermanentFetchError(
            f"too many redirects fetching {url}{limit}: a redirect loop, or a chain "
            "longer than max_redirects (permanent: not retried)"
        )
    if isinstance(exc, httpx.UnsupportedProtocol):
        return PermanentFetchError(
            f"bad scheme in {url}: {text}; only http:// and https:// URLs can be fetched "
            "(permanent: not retried)"
        )
    if isinstance(exc, httpx.InvalidURL):
        return PermanentFetchError(f"invalid URL {url!r}: {text} (permanent: not retried)")
    if isinstance(exc, httpx.LocalProtocolError):
        return PermanentFetchError(
            f"could not send a valid request for {url}: {text} (permanent: not retried)"
        )
    kind = type(exc).__name__
    return TransientFetchError(f"{kind} fetching {url}{detail}: {text} (transient: retried later)")


#: What :func:`translate_httpx_error` understands; catch these around every request.
HTTPX_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError, httpx.InvalidURL)
