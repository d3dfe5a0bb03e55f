"""Host politeness shared by the fleet: every store keeps cooldowns, caps, rates and lapses.

Each :class:`~docstokg.download.politeness.CooldownStore` (this process's,
a real ``redis-server``, the ledger database on SQLite and on PostgreSQL) is
held to the same contract; then the gate and the fetcher are held to it over
real loopback HTTP; and the issue's test: two processes, one host answering
429 with ``Retry-After: 3``, and no process sends that host a request for
3 s after it, by the server's own timestamps (on Redis and on PostgreSQL).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from docstokg import Ledger
from docstokg.download import (
    ArtifactStore,
    CooldownStore,
    DownloadLimits,
    Fetcher,
    HostGate,
    HostRules,
    InProcessCooldownStore,
    make_client,
)
from docstokg.download.politeness import host_of
from docstokg.download.redis_store import RedisCooldownStore
from docstokg.errors import DownloadInterrupted, TransientFetchError
from docstokg.ledger.host_limits import LedgerCooldownStore
from docstokg.testing.server import Artifact, ArtifactServer, Fault, RequestRecord
from tests.conftest import BACKENDS
from tests.pgcluster import ThrowawayPostgres

STORES = ("in-process", "redis", *(f"ledger-{backend}" for backend in BACKENDS))
# The stores a fleet of machines shares (the ledger's: on PostgreSQL only).
SHARED_STORES = ("redis", *(("ledger",) if "postgresql" in BACKENDS else ()))
EVENT_DEADLINE_S = 20.0
RETRY_AFTER_S = 3


@pytest.fixture(scope="module")
def ledger_urls(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """One ledger per backend for the module, upgraded to head (each test has hosts of its own)."""
    urls: dict[str, str] = {}
    postgres: ThrowawayPostgres | None = None
    for backend in BACKENDS:
        if backend == "sqlite":
            urls[backend] = f"sqlite:///{tmp_path_factory.mktemp('politeness') / 'ledger.sqlite3'}"
        else:
            postgres = request.getfixturevalue("postgres")
            urls[backend] = postgres.create_database("politeness_stores")
        with Ledger.connect(urls[backend]) as ledger:
            ledger.upgrade()
    yield urls
    if postgres is not None:
        postgres.drop_database("politeness_stores")


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, ledger_urls: dict[str, str]) -> Iterator[CooldownStore]:
    """One store of each kind."""
    kind: str = request.param
    opened: CooldownStore
    if kind == "in-process":
        opened = InProcessCooldownStore()
    elif kind == "redis":
        opened = RedisCooldownStore.from_url(request.getfixturevalue("redis_url"))
    else:
        opened = LedgerCooldownStore(ledger_urls[kind.split("-", 1)[1]])
    yield opened
    opened.close()


@pytest.fixture
def host() -> str:
    """A host no other test has used (the ledger's store is shared by the module)."""
    return f"origin-{uuid.uuid4().hex[:12]}.example:443"


@pytest.fixture
def other(host: str) -> str:
    return "other-" + host


def _admit(
    store: CooldownStore,
    holder: str,
    host: str,
    *,
    cap: int | None = None,
    interval_s: float | None = None,
    ttl_s: float = 30.0,
) -> float:
    return store.admit(host, holder, max_concurrent=cap, interval_s=interval_s, slot_ttl_s=ttl_s)


def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait for an event the store or the server will show, failing after a deadline."""
    deadline = time.monotonic() + EVENT_DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen in {EVENT_DEADLINE_S}s"
        time.sleep(0.01)  # polling an observable event, not synchronising threads


# --- the stores' contract ---------------------------------------------------------------


def test_a_cooldown_holds_back_every_holder_of_that_host_only(
    store: CooldownStore, host: str, other: str
) -> None:
    assert _admit(store, "a", host) == 0.0  # a host never seen is ready
    store.cool_down(host, 30)

    assert 29 < _admit(store, "b", host) <= 30
    assert 29 < _admit(store, "c", host, cap=5, interval_s=0.001) <= 30
    assert 29 < store.cooldown_left(host) <= 30
    assert _admit(store, "d", other) == 0.0
    store.cool_down(host, 1)  # a shorter cooldown does not cut the longer one short
    assert store.cooldown_left(host) > 29


def test_a_cooldown_ends_on_its_own(store: CooldownStore, host: str) -> None:
    store.cool_down(host, 1.0)
    assert _admit(store, "a", host) > 0
    _until(lambda: _admit(store, "a", host) == 0.0, "the end of a 1 s cooldown")
    assert store.cooldown_left(host) == 0.0


def test_the_concurrency_cap_is_held_until_a_slot_is_given_back(
    store: CooldownStore, host: str, other: str
) -> None:
    assert _admit(store, "a", host, cap=2) == 0.0
    assert _admit(store, "b", host, cap=2) == 0.0
    assert _admit(store, "c", host, cap=2) < 0  # at the cap: ask again later
    assert _admit(store, "x", other, cap=2) == 0.0  # caps are per host

    store.leave(host, "a")
    assert _admit(store, "c", host, cap=2) == 0.0
    assert _admit(store, "d", host, cap=2) < 0


def test_the_rate_cap_spaces_request_starts(store: CooldownStore, host: str, other: str) -> None:
    assert _admit(store, "a", host, interval_s=30) == 0.0
    assert 29 < _admit(store, "b", host, interval_s=30) <= 30
    assert _admit(store, "c", other, interval_s=30) == 0.0


def test_the_slots_of_a_crashed_holder_lapse_and_renewed_ones_do_not(
    store: CooldownStore, host: str
) -> None:
    # "kept" renews its slot (its process lives); "crashed" never renews nor leaves.
    assert _admit(store, "kept", host, cap=2, ttl_s=1.0) == 0.0
    assert _admit(store, "crashed", host, cap=2, ttl_s=1.0) == 0.0
    store.renew([(host, "kept")], 60)

    # Once the crashed holder's lease has passed (so has kept's first one), a slot frees.
    _until(lambda: _admit(store, "new", host, cap=2) == 0.0, "the lapse of a crashed slot")
    assert _admit(store, "one-more", host, cap=2) < 0  # kept still holds the other slot
    store.renew([(host, "crashed")], 60)  # a lapsed slot is not brought back
    store.leave(host, "kept")
    assert _admit(store, "one-more", host, cap=2) == 0.0


# --- the gate and the fetcher -----------------------------------------------------------


def _fetcher(tmp_path: Path, gate: HostGate, *, user_agent: str = "docstokg-test") -> Fetcher:
    limits = DownloadLimits(user_agent=user_agent, connect_timeout_s=5, read_timeout_s=5)
    return Fetcher(make_client(limits), ArtifactStore(tmp_path / "out"), limits, politeness=gate)


def test_a_429_cools_its_host_down_for_its_retry_after(
    server: ArtifactServer, tmp_path: Path
) -> None:
    url = server.add("/busy", Artifact(b"x" * 100, faults=[Fault(429, {"Retry-After": "40"})]))
    store = InProcessCooldownStore()
    with HostGate(store, HostRules(max_cooldown_s=600)) as gate:
        fetcher = _fetcher(tmp_path, gate)
        with pytest.raises(TransientFetchError, match="429"):
            fetcher.probe(url)
        fetcher.client.close()
    assert 39 < store.cooldown_left(host_of(url)) <= 40


def test_a_retry_after_is_honoured_up_to_max_cooldown_s(
    server: ArtifactServer, tmp_path: Path
) -> None:
    hostile = Fault(503, {"Retry-After": "9" * 20})
    url = server.add("/busy", Artifact(b"x" * 100, faults=[hostile]))
    store = InProcessCooldownStore()
    with HostGate(store, HostRules(max_cooldown_s=5)) as gate:
        fetcher = _fetcher(tmp_path, gate)
        with pytest.raises(TransientFetchError, match="503"):
            fetcher.probe(url)
        fetcher.client.close()
    assert 4 < store.cooldown_left(host_of(url)) <= 5


def test_a_refused_connection_cools_the_host_down(tmp_path: Path) -> None:
    with ArtifactServer() as gone:
        url = gone.url("/a")
    store = InProcessCooldownStore()
    with HostGate(store, HostRules(error_cooldown_s=20)) as gate:
        fetcher = _fetcher(tmp_path, gate)
        with pytest.raises(TransientFetchError, match="ConnectError"):
            fetcher.probe(url)
        fetcher.client.close()
    assert 19 < store.cooldown_left(host_of(url)) <= 20


def test_a_worker_waits_out_the_cooldown_and_a_stop_ends_the_wait(
    server: ArtifactServer, tmp_path: Path
) -> None:
    url = server.add("/a", Artifact(b"x" * 100))
    store = InProcessCooldownStore()
    stop = threading.Event()
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            fetcher.probe(url, should_stop=stop.is_set)
            outcome.append(None)
        except DownloadInterrupted as exc:
            outcome.append(exc)

    with HostGate(store) as gate:
        fetcher = _fetcher(tmp_path, gate)
        store.cool_down(host_of(url), 600)
        worker = threading.Thread(target=probe)
        worker.start()
        stop.set()
        worker.join(timeout=EVENT_DEADLINE_S)
        fetcher.client.close()
    assert not worker.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], DownloadInterrupted)
    assert "no request was sent" in str(outcome[0])
    assert server.requests() == ()  # waited, never sent


def test_requests_wait_for_the_cooldown_rather_than_fail(
    server: ArtifactServer, tmp_path: Path
) -> None:
    url = server.add("/a", Artifact(b"x" * 100))
    store = InProcessCooldownStore()
    with HostGate(store) as gate:
        fetcher = _fetcher(tmp_path, gate)
        store.cool_down(host_of(url), 0.5)
        ends_at = time.time() + store.cooldown_left(host_of(url))
        head = fetcher.probe(url)
        fetcher.client.close()
    assert head.status == 200
    [request] = server.requests()
    assert request.started_at >= ends_at - 0.01  # not before the cooldown had passed


class CountingStore(InProcessCooldownStore):
    """This process's store, counting the admissions it refused at the cap."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0

    def admit(
        self,
        host: str,
        holder: str,
        *,
        max_concurrent: int | None,
        interval_s: float | None,
        slot_ttl_s: float,
    ) -> float:
        waited = super().admit(
            host, holder, max_concurrent=max_concurrent, interval_s=interval_s,
            slot_ttl_s=slot_ttl_s,
        )  # fmt: skip
        if waited < 0:
            self.refused += 1
        return waited


def test_no_more_requests_in_flight_to_a_host_than_its_cap(
    server: ArtifactServer, tmp_path: Path
) -> None:
    body = b"y" * 10_000
    url = server.add("/slow", Artifact(body, pause_after=100))
    store = CountingStore()
    with HostGate(store, HostRules(max_concurrent=2)) as gate:
        fetcher = _fetcher(tmp_path, gate)
        head = fetcher.probe(url)
        server.reset_stats()

        def stream(job: int) -> None:
            fetcher.stream(
                f"job-{job}", head, epoch=0, expected_sha256=None,
                should_stop=lambda: False, on_bytes=lambda _: None,
            )  # fmt: skip

        workers = [threading.Thread(target=stream, args=(job,)) for job in range(4)]
        for worker in workers:
            worker.start()
        assert server.wait_paused("/slow", timeout=EVENT_DEADLINE_S, count=2)
        _until(lambda: store.refused >= 4, "the other two workers waiting at the cap")
        assert len(server.requests()) == 2  # the cap held the other two back
        server.release("/slow")
        for worker in workers:
            worker.join(timeout=EVENT_DEADLINE_S)
        fetcher.client.close()
    assert not any(worker.is_alive() for worker in workers)
    assert [r.status for r in server.requests()] == [200] * 4  # all four went through in turn


# --- the test: two processes, one host answering 429 ------------------------------


def _child(
    store_kind: str, store_url: str, name: str, urls: list[str], out: Path
) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "tests.politeness_child", store_kind, store_url, name]
    return subprocess.Popen(
        [*command, str(out), *urls], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


@pytest.mark.parametrize("store_kind", SHARED_STORES)
def test_no_process_sends_a_request_to_a_host_in_its_retry_after(
    store_kind: str, server: ArtifactServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if store_kind == "redis":
        store_url = request.getfixturevalue("redis_url")
    else:  # the module's PostgreSQL ledger (this server's host:port is new to it)
        store_url = request.getfixturevalue("ledger_urls")["postgresql"]
    retry_after = Fault(429, {"Retry-After": str(RETRY_AFTER_S)})
    hot = server.add("/hot", Artifact(b"h" * 1000, faults=[retry_after]))
    lists = {
        name: [hot, *(server.add(f"/{name}/{i}", Artifact(b"x" * 1000)) for i in range(5))]
        for name in ("one", "two")
    }
    children = {
        name: _child(store_kind, store_url, name, urls, tmp_path / name)
        for name, urls in lists.items()
    }
    try:
        for child in children.values():  # both ready (imports done, store reached) ...
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        for child in children.values():  # ... then both go at once
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.close()
        for child in children.values():
            child.wait(timeout=60)
    finally:
        for child in children.values():
            child.kill()
            child.wait()
            if child.stdout is not None:
                child.stdout.close()
    assert [child.returncode for child in children.values()] == [0, 0]

    records = server.requests()
    assert {r.user_agent for r in records} == {"politeness-one", "politeness-two"}
    first_429 = next(r for r in records if r.status == 429)
    _assert_quiet_after(first_429, records)
    # The process that did not get the 429 was held back by the other's:
    # its first request (to the same host) came only once the cooldown had passed.
    other = next(r for r in records if r.user_agent != first_429.user_agent)
    assert other.started_at >= first_429.started_at + RETRY_AFTER_S


def _assert_quiet_after(first_429: RequestRecord, records: tuple[RequestRecord, ...]) -> None:
    """No request reached the server from first_429's arrival until Retry-After had passed."""
    quiet_until = first_429.started_at + RETRY_AFTER_S
    early = [
        (r.user_agent, r.path, round(r.started_at - first_429.started_at, 3))
        for r in records
        if r is not first_429 and first_429.started_at <= r.started_at < quiet_until
    ]
    assert early == [], f"requests sent during the {RETRY_AFTER_S}s cooldown: {early}"
    assert any(r.started_at >= quiet_until for r in records)  # and work went on after it
