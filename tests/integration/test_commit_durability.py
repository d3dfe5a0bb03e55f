"""Commit means committed (issue 14, line 1).

``uow.commit()`` returns only once the transaction holding the unit of work
has committed.  A process whose threads report each returned commit is
SIGKILLed at random moments; every reported commit must be in the database
afterwards (both backends; the child is :mod:`tests.durability_child`).  That
a failed group COMMIT raises in every unit of work it held is proved in
:mod:`tests.integration.test_group_commit`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from tests.durability_child import KillPoints, missing_commits

KILLS = 20
THREADS = 8
KILL_AFTER_S = (0.03, 0.2)  # of work, once the child's threads run
SEED_ENV = "DOCSTOKG_DURABILITY_SEED"  # set it to replay a failing draw of kill points
QUEUE_TIMEOUT_S = 30.0


# --- 1. SIGKILL at random moments: every reported commit is there -------------------------


@pytest.fixture(scope="module")
def child(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KillPoints]:
    """The forking child, started once for both backends (its import is most of its cost)."""
    with KillPoints(tmp_path_factory.mktemp("durability") / "child.err") as started:
        yield started


def test_every_commit_reported_before_a_sigkill_is_in_the_database(
    db_url: str, child: KillPoints
) -> None:
    seed = int(os.environ.get(SEED_ENV) or random.randrange(2**32))
    rng = random.Random(seed)
    reported, lost = 0, []
    for round_number in range(KILLS):
        reports = child.kill_round(
            db_url, round_number, seed=seed, threads=THREADS, delay_s=rng.uniform(*KILL_AFTER_S)
        )
        reported += reports.writes
        lost += [f"kill {round_number}: {what}" for what in missing_commits(db_url, reports)]
    assert reported >= KILLS, f"only {reported} writes reported in {KILLS} kills (seed {seed})"
    assert not lost, (
        f"{len(lost)} of {reported} writes reported committed are not in the database after "
        f"{KILLS} SIGKILLs (replay with {SEED_ENV}={seed}); the first:\n" + "\n".join(lost[:10])
    )
