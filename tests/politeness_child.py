"""One process of the fleet, for tests/integration/test_host_politeness.py.

``python -m tests.politeness_child STORE_KIND STORE_URL NAME OUT URL...``
opens the fleet's store (``redis`` or ``ledger``), says ``ready`` once it is
reached, waits for a line on stdin (so that both processes start together),
then probes each URL in turn through a :class:`~docstokg.download.Fetcher`
gated by that store, one at a time per host across the fleet
(``max_concurrent=1``), retrying an answer that is transient.  Its
User-Agent is ``politeness-NAME``, so the server tells the processes apart.
"""

from __future__ import annotations

import sys
from pathlib import Path

from docstokg.download import (
    ArtifactStore,
    CooldownStore,
    DownloadLimits,
    Fetcher,
    HostGate,
    HostRules,
    make_client,
    open_cooldown_store,
)
from docstokg.errors import TransientFetchError
from docstokg.ledger.host_limits import ledger_cooldown_store

ATTEMPTS = 5


def open_store(kind: str, url: str) -> CooldownStore:
    if kind == "redis":
        return open_cooldown_store(redis_url=url)
    opener = ledger_cooldown_store(url)
    if opener is None:
        raise SystemExit(f"{url} is not a PostgreSQL ledger")
    return open_cooldown_store(redis_url=None, shared=opener)


def main(argv: list[str]) -> int:
    kind, store_url, name, out, *urls = argv
    store = open_store(kind, store_url)
    store.cooldown_left("warm-up:0")  # the store answers: connected, scripts loaded
    limits = DownloadLimits(user_agent=f"politeness-{name}", connect_timeout_s=5, read_timeout_s=5)
    rules = HostRules(max_concurrent=1, max_cooldown_s=60, slot_ttl_s=10)
    with HostGate(store, rules) as gate, make_client(limits) as client:
        fetcher = Fetcher(client, ArtifactStore(Path(out)), limits, politeness=gate)
        print("ready", flush=True)
        sys.stdin.readline()
        for url in urls:
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    fetcher.probe(url)
                    break
                except TransientFetchError:
                    if attempt == ATTEMPTS:
                        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
