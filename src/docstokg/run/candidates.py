"""A run's own jobs, offered to its claims a window of ids at a time.

One ledger serves several manifests, so a run claims only its own jobs.  A
claim names the job ids it may take (one primary-key probe each) rather than
"any job of manifest M": that would walk every member of M, or every other
manifest's claimable jobs ahead of M's, on every claim (seconds per claim at
a few hundred thousand jobs).  A claim among a window costs the same whatever
the size of the ledger or of the manifest.

The run keeps the ids of its jobs not known to have ended, in manifest order.
Windows rotate, so workers claiming at once start at different places.  A
job is forgotten when this process ends it, when a window yields nothing and
the ledger says which of its jobs ended elsewhere, or when the run's
completion check reads the unfinished ones.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Iterator

WINDOW = 256
"""Job ids per claim: a few hundred primary-key probes, far below any bound-parameter limit."""


class Candidates:
    """The run's unfinished job ids, handed out a window at a time (thread-safe)."""

    def __init__(self, job_ids: Iterable[str], *, window: int = WINDOW) -> None:
        if window < 1:
            raise ValueError(f"a window holds at least one job id, not {window}")
        self._all: list[str] = list(dict.fromkeys(job_ids))  # in manifest order
        self._ids = self._all  # the order windows walk: _all, less some ended ones
        self._live: set[str] = set(self._ids)  # those not known to have ended
        self._window = window
        self._next = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._live)

    def window(self) -> list[str]:
        """The next window of job ids not known to have ended (empty: all ended)."""
        with self._lock:
            return self._take()

    def windows(self) -> Iterator[list[str]]:
        """Windows covering every job not known to have ended once, from the next one on.

        Lazily: a claim that succeeds in the first window walks no further.
        """
        with self._lock:
            ids = self._ids
            start = self._next % len(ids) if ids else 0
            self._next = start + self._window  # the next pass starts one window further
        position, walked = start, 0
        while True:
            with self._lock:
                if ids is not self._ids:  # compacted or reset meanwhile: start again there
                    ids, position, walked = self._ids, 0, 0
                window: list[str] = []
                while walked < len(ids) and len(window) < self._window:
                    job_id = ids[position % len(ids)]
                    position, walked = position + 1, walked + 1
                    if job_id in self._live:
                        window.append(job_id)
            if not window:
                return
            yield window

    def ended(self, job_ids: Iterable[str]) -> None:
        """These jobs ended: no claim is offered them again."""
        with self._lock:
            self._live.difference_update(job_ids)
            if len(self._live) * 2 < len(self._ids):
                self._compact()

    def keep(self, among: Collection[str], unfinished: Collection[str]) -> None:
        """Of the jobs ``among``, only those in ``unfinished`` have not ended (the ledger said)."""
        self.ended(job_id for job_id in among if job_id not in unfinished)

    def reset(self, unfinished: Collection[str]) -> None:
        """Exactly the run's jobs in ``unfinished`` are left (one that ended may have been
        requeued since, e.g. by ``job verify``: it is offered again)."""
        with self._lock:
            self._ids = [job_id for job_id in self._all if job_id in unfinished]
            self._live = set(self._ids)
            self._next = 0

    def _take(self) -> list[str]:
        ids, live, taken = self._ids, self._live, list[str]()
        if not live:
            return taken
        position = self._next % len(ids)
        for _ in range(len(ids)):
            job_id = ids[position]
            position = (position + 1) % len(ids)
            if job_id in live:
                taken.append(job_id)
                if len(taken) == self._window:
                    break
        self._next = position
        return taken

    def _compact(self) -> None:
        """Drop the ended ids from the order, so a window never walks past many of them."""
        self._ids = [job_id for job_id in self._ids if job_id in self._live]
        self._next = 0
