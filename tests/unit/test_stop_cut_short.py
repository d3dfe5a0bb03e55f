"""Which failures a stopping run counts as interruptions rather than failed attempts."""

from __future__ import annotations

import httpx

from docstokg.download import cut_short_by_the_wire
from docstokg.download.http_errors import classify_status, translate_httpx_error
from docstokg.errors import PermanentFetchError, TransientFetchError

URL = "http://h/x"


def from_httpx(exc: Exception) -> TransientFetchError | PermanentFetchError:
    """The FetchError the download layer raises for ``exc``, chained to it as it is there."""
    try:
        raise translate_httpx_error(exc, URL) from exc
    except (TransientFetchError, PermanentFetchError) as raised:
        return raised


def test_a_timed_out_or_dropped_connection_is_cut_short() -> None:
    assert cut_short_by_the_wire(from_httpx(httpx.ReadTimeout("timed out")))
    assert cut_short_by_the_wire(from_httpx(httpx.RemoteProtocolError("peer closed")))


def test_an_answer_from_the_server_is_not() -> None:
    unavailable = classify_status(503, httpx.Headers({"Retry-After": "30"}), URL)
    assert isinstance(unavailable, TransientFetchError)
    assert not cut_short_by_the_wire(unavailable)
    assert not cut_short_by_the_wire(OSError(28, "No space left on device"))
