"""The loopback artifact server, over real sockets with httpx.

The downloader's integration tests trust this server to misbehave exactly as
scripted, so each scripted behaviour is pinned here on the wire.
"""

from __future__ import annotations

import functools
import hashlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

import httpx
import pytest

from docstokg.testing.server import (
    Artifact,
    ArtifactServer,
    Fault,
    PathStats,
    generated_body,
)

T = TypeVar("T")

BODY = generated_body("test-body", 100_000)


class _InThread(Generic[T]):
    """Runs a call in a thread and keeps its result or exception for the test to inspect."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self.result: T | None = None
        self.error: BaseException | None = None
        self._fn = fn
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test to assert on
            self.error = exc

    def join(self, timeout: float = 10.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the client thread did not finish"


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as http:
        yield http


def _get_bytes(url: str, headers: dict[str, str] | None = None) -> bytes:
    with httpx.Client(timeout=10.0) as http:
        return http.get(url, headers=headers).content


def test_a_full_get_returns_the_body_and_counts_it(
    server: ArtifactServer, client: httpx.Client
) -> None:
    url = server.add("/a/1.pdf", Artifact(body=BODY, content_type="application/pdf"))
    assert url == f"{server.base_url}/a/1.pdf"
    assert url.startswith("http://127.0.0.1:")

    response = client.get(url)

    assert response.status_code == 200
    assert response.content == BODY
    assert response.headers["content-length"] == str(len(BODY))
    assert response.headers["content-type"] == "application/pdf"
    assert server.stats("/a/1.pdf") == PathStats(
        get_requests=1, full_gets=1, body_bytes_sent=len(BODY)
    )
    assert server.total() == server.stats("/a/1.pdf")


def test_head_carries_the_headers_of_a_full_get_without_a_body(
    server: ArtifactServer, client: httpx.Client
) -> None:
    url = server.add("/h", Artifact(body=BODY))
    expected_etag = f'"{hashlib.sha256(BODY).hexdigest()[:16]}"'

    head = client.head(url)
    get = client.get(url)

    assert head.status_code == 200
    assert head.content == b""
    for name in ("content-length", "content-type", "etag", "last-modified", "accept-ranges"):
        assert head.headers[name] == get.headers[name], name
    assert head.headers["content-length"] == str(len(BODY))
    assert head.headers["etag"] == expected_etag
    assert head.headers["last-modified"] == "Wed, 21 Oct 2026 07:28:00 GMT"
    assert head.headers["accept-ranges"] == "bytes"
    stats = server.stats("/h")
    assert (stats.head_requests, stats.get_requests, stats.body_bytes_sent) == (1, 1, len(BODY))


def test_an_explicit_etag_is_served_and_last_modified_can_be_left_out(
    server: ArtifactServer, client: httpx.Client
) -> None:
    url = server.add("/e", Artifact(body=b"x", etag='W/"v1"', last_modified=None))

    response = client.head(url)

    assert response.headers["etag"] == 'W/"v1"'
    assert "last-modified" not in response.headers


def test_a_range_is_answered_206_with_exactly_those_bytes(
    server: ArtifactServer, client: httpx.Client
) -> None:
    url = server.add("/r", Artifact(body=BODY))
    total = len(BODY)

    closed = client.get(url, headers={"Range": "bytes=10-19"})
    open_ended = client.get(url, headers={"Range": "bytes=99000-"})
    clamped = client.get(url, headers={"Range": "bytes=5-999999999"})

    assert closed.status_code == 206
    assert closed.content == BODY[10:20]
    assert closed.headers["content-range"] == f"bytes 10-19/{total}"
    assert closed.headers["content-length"] == "10"
    assert open_ended.status_code == 206
    assert open_ended.content == BODY[99000:]
    assert open_ended.headers["content-range"] == f"bytes 99000-{total - 1}/{total}"
    assert clamped.content == BODY[5:]
    assert clamped.headers["content-range"] == f"bytes 5-{total - 1}/{total}"
    stats = server.stats("/r")
    assert stats.range_gets == 3
    assert stats.full_gets == 0
    assert stats.range_headers == ("bytes=10-19", "bytes=99000-", "bytes=5-999999999")
    assert stats.body_bytes_sent == 10 + (total - 99000) + (total - 5)


def test_if_range_must_match_the_etag_or_last_modified_to_get_a_206(
    server: ArtifactServer, client: httpx.Client
) -> None:
    url = server.add("/i", Artifact(body=BODY))
    etag = client.head(url).headers["etag"]

    by_etag = client.get(url, headers={"Range": "bytes=100-", "If-Range": etag})
    by_date = client.get(
        url, headers={"Range": "bytes=100-", "If-Range": "Wed, 21 Oct 2026 07:28:00 GMT"}
    )
    stale = client.get(url, headers={"Range": "bytes=100-", "If-Range": '"stale"'})

    assert (by_etag.status_code, by_date.status_code) == (206, 206)
    assert by_etag.content == BODY[100:]
    assert stale.status_code == 200
    assert stale.content == BODY
    assert "content-range" not in stale.headers
    stats = server.stats("/i")
    assert (stats.range_gets, stats.full_gets) == (2, 1)
    assert stats.if_range_headers == (etag, "Wed, 21 Oct 2026 07:28:00 GMT", '"stale"')


def test_a_range_past_the_end_is_416_with_the_total_length(
    server: ArtifactServer, client: httpx.Client
) -> None:
    url = server.add("/u", Artifact(body=BODY))

    response = client.get(url, headers={"Range": f"bytes={len(BODY)}-"})

    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(BODY)}"
    assert server.stats("/u").body_bytes_sent == 0


def test_an_artifact_without_ranges_ignores_range_and_never_advertises_it(
    server: ArtifactServer, client: httpx.Client
) -> None:
    url = server.add("/n", Artifact(body=BODY, ranges=False))

    response = client.get(url, headers={"Range": "bytes=10-19"})
    head = client.head(url)

    assert response.status_code == 200
    assert response.content == BODY
    assert "accept-ranges" not in response.headers
    assert "accept-ranges" not in head.headers
    assert server.stats("/n").full_gets == 1


def test_head_status_refuses_head_but_get_still_works(
    server: ArtifactServer, client: httpx.Client
) -> None:
    url = server.add("/nohead", Artifact(body=BODY, head_status=405))

    head = client.head(url)
    get = client.get(url)

    assert head.status_code == 405
    assert head.headers["allow"] == "GET"
    assert get.status_code == 200
    assert get.content == BODY


def test_faults_are_served_in_order_then_the_artifact(
    server: ArtifactServer, client: httpx.Client
) -> None:
    faults = [Fault(503, {"Retry-After": "1"}), Fault(429, {"Retry-After": "2"}), Fault(500)]
    url = server.add("/f", Artifact(body=BODY, faults=faults))

    first = client.head(url)  # a HEAD consumes a fault too
    second = client.get(url)
    third = client.get(url)
    fourth = client.get(url)

    assert (first.status_code, first.headers["retry-after"]) == (503, "1")
    assert (second.status_code, second.headers["retry-after"]) == (429, "2")
    assert third.status_code == 500
    assert fourth.status_code == 200
    assert fourth.content == BODY
    assert server.stats("/f").faults_served == 3
    assert server.stats("/f").body_bytes_sent == len(BODY)
    assert len(faults) == 3, "the caller's list of faults must not be consumed"


def test_truncate_at_closes_after_a_short_body(
    server: ArtifactServer, client: httpx.Client
) -> None:
    url = server.add("/t", Artifact(body=BODY, truncate_at=1000))

    with pytest.raises(httpx.RemoteProtocolError):
        client.get(url)
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(url, headers={"Range": "bytes=5000-"})

    stats = server.stats("/t")
    assert stats.body_bytes_sent == 2000
    assert (stats.full_gets, stats.range_gets) == (1, 1)


def test_a_redirect_loop_is_reported_by_the_client(server: ArtifactServer) -> None:
    server.add("/loop/a", Artifact(body=b"", redirect_to="/loop/b"))
    url = server.add("/loop/b", Artifact(body=b"", redirect_to="/loop/a"))

    with httpx.Client(follow_redirects=True, max_redirects=3, timeout=10.0) as http:
        first_hop = http.get(url, follow_redirects=False)
        with pytest.raises(httpx.TooManyRedirects):
            http.get(url)

    assert first_hop.status_code == 302
    assert first_hop.headers["location"] == "/loop/a"
    assert server.stats("/loop/a").get_requests + server.stats("/loop/b").get_requests >= 4


def test_a_permanent_status_is_served_to_every_request(
    server: ArtifactServer, client: httpx.Client
) -> None:
    gone = server.add("/gone", Artifact(body=BODY, status=410))
    missing = server.add("/missing", Artifact(body=BODY, status=404))

    assert [client.get(gone).status_code for _ in range(2)] == [410, 410]
    assert client.head(gone).status_code == 410
    assert client.get(missing).status_code == 404
    assert server.stats("/gone").body_bytes_sent == 0


def test_an_unknown_path_is_404_and_still_counted(
    server: ArtifactServer, client: httpx.Client
) -> None:
    response = client.get(server.url("/nowhere"))

    assert response.status_code == 404
    assert server.stats("/nowhere").get_requests == 1
    assert server.stats("/never-asked") == PathStats()


def test_a_paused_get_waits_for_release_then_finishes(server: ArtifactServer) -> None:
    body = generated_body("paused", 300_000)
    url = server.add("/p", Artifact(body=body, pause_after=100_000))

    fetch = _InThread(lambda: _get_bytes(url))
    assert server.wait_paused("/p")
    assert server.stats("/p").body_bytes_sent == 100_000
    assert fetch.thread.is_alive()

    server.release("/p")
    fetch.join()

    assert fetch.error is None
    assert fetch.result == body
    assert server.stats("/p").body_bytes_sent == len(body)
    assert not server.wait_paused("/p", timeout=0.01)


def test_a_ranged_get_pauses_at_the_absolute_offset(server: ArtifactServer) -> None:
    url = server.add("/pr", Artifact(body=BODY, pause_after=60_000))

    fetch = _InThread(lambda: _get_bytes(url, {"Range": "bytes=50000-"}))
    assert server.wait_paused("/pr")
    assert server.stats("/pr").body_bytes_sent == 10_000

    server.release("/pr")
    fetch.join()
    assert fetch.result == BODY[50_000:]


def test_wait_paused_times_out_when_nothing_pauses(server: ArtifactServer) -> None:
    server.add("/np", Artifact(body=BODY, pause_after=10))

    assert server.wait_paused("/np", timeout=0.05) is False


def test_requests_on_one_client_reuse_one_connection(
    server: ArtifactServer, client: httpx.Client
) -> None:
    url = server.add("/k", Artifact(body=BODY))

    first = client.get(url)
    second = client.head(url)
    third = client.get(url, headers={"Range": "bytes=0-9"})

    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 206)
    assert server.connections() == 1
    with httpx.Client(timeout=10.0) as other:
        other.get(url)
    assert server.connections() == 2

    server.reset_stats()
    assert server.connections() == 0
    assert server.total() == PathStats()


def test_stop_ends_a_paused_get_promptly(server: ArtifactServer) -> None:
    url = server.add("/stuck", Artifact(body=BODY, pause_after=1000))
    fetch = _InThread(lambda: _get_bytes(url))
    assert server.wait_paused("/stuck")

    began = time.monotonic()
    server.stop()
    fetch.join(timeout=5.0)

    assert time.monotonic() - began < 3.0
    assert isinstance(fetch.error, httpx.RemoteProtocolError)
    assert server.stats("/stuck").body_bytes_sent == 1000
    server.stop()  # idempotent


def test_a_client_vanishing_mid_body_leaves_no_traceback(
    server: ArtifactServer, capfd: pytest.CaptureFixture[str]
) -> None:
    body = generated_body("vanish", 8 * 1024 * 1024)
    server.add("/v", Artifact(body=body, pause_after=1024))
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10.0) as raw:
        raw.sendall(f"GET /v HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert server.wait_paused("/v")
    # The client is gone with unread data (its kernel answers with a reset); resume writing.
    server.release("/v")
    server.stop()  # joins the connection's thread, so its outcome is final

    assert server.stats("/v").body_bytes_sent < len(body)
    assert capfd.readouterr().err == ""


def test_throttling_slows_the_body_to_the_configured_rate(
    server: ArtifactServer, client: httpx.Client
) -> None:
    body = generated_body("slow", 40_000)
    url = server.add("/slow", Artifact(body=body, bytes_per_s=200_000))

    began = time.monotonic()
    response = client.get(url)
    elapsed = time.monotonic() - began

    assert response.content == body
    # 40 kB at 200 kB/s in 10 kB slices: the last slice leaves after 0.15 s (unthrottled: ~1 ms).
    assert elapsed >= 0.12


def test_many_concurrent_downloads_over_a_few_connections(server: ArtifactServer) -> None:
    size = 64 * 1024
    paths = [f"/a/{i}" for i in range(200)]
    for path in paths:
        server.add(path, Artifact(body=generated_body(path, size)))
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    with httpx.Client(limits=limits, timeout=10.0) as http:

        def download(part: list[str]) -> int:
            return sum(http.get(server.url(p)).content == generated_body(p, size) for p in part)

        workers = [_InThread(functools.partial(download, paths[i::8])) for i in range(8)]
        for worker in workers:
            worker.join(30.0)

    assert [w.error for w in workers] == [None] * 8
    assert sum(w.result or 0 for w in workers) == 200
    totals = server.total()
    assert totals.full_gets == 200
    assert totals.body_bytes_sent == 200 * size
    assert server.connections() <= 8


def test_generated_body_is_deterministic_and_sized() -> None:
    assert generated_body("s", 1000) == generated_body("s", 1000)
    assert len(generated_body("s", 65_536)) == 65_536
    assert generated_body("s", 1000) != generated_body("t", 1000)
    assert generated_body("s", 0) == b""


def test_add_refuses_a_relative_path(server: ArtifactServer) -> None:
    with pytest.raises(ValueError, match="must start with '/'"):
        server.add("a/1", Artifact(body=b""))


@pytest.mark.slow
def test_the_module_serves_generated_artifacts_from_a_subprocess() -> None:
    command = [sys.executable, "-m", "docstokg.testing.server", "--count", "3", "--size", "1000"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            base_url = process.stdout.readline().strip()
            body = _get_bytes(f"{base_url}/a/2")
        finally:
            process.terminate()
            process.wait(10.0)
    assert body == generated_body("/a/2", 1000)
    assert process.returncode == 0
