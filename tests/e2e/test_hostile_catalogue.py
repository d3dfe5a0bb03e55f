"""Issue 13's catalogue of hostile inputs: every row of ``hostile_cases.CASES``, run for real.

Each case sets up its files and its misbehaving loopback server, runs one
``docstokg`` command line in-process, and checks the exit code, the message
(fragments that must and must not appear in stdout+stderr) and what is on
disk afterwards.  No output ever holds a traceback.  The summary line
"hostile-input catalogue: N cases, ..." is printed by ``conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from docstokg.testing.server import ArtifactServer
from tests.e2e.hostile_cases import CASES, CRASHED, FAST_ENV, Case, World, env_without_docstokg

CATEGORIES = ("manifest", "server", "config", "database", "filesystem", "operations")


def test_the_catalogue_is_large_and_spread_over_every_category() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), "two cases share an id"
    assert len(CASES) >= 120
    for category in CATEGORIES:
        assert sum(case.category == category for case in CASES) >= 8, category
    assert {case.category for case in CASES} == set(CATEGORIES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_input(
    case: Case, tmp_path: Path, server: ArtifactServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config/idempotency.yaml of the repository is read
    env = env_without_docstokg()
    if case.fast:
        env.update(FAST_ENV)
    env.update(case.env)
    world = World(tmp=tmp_path, server=server, env=env)
    for step in case.setup:
        step(world)

    result = world.invoke(case.argv)

    assert result.exit_code != CRASHED, f"the command crashed\n{result.explain()}"
    assert "Traceback" not in result.output, result.explain()
    assert result.exit_code in case.exit_codes, (
        f"exit {result.exit_code}, expected {sorted(case.exit_codes)}\n{result.explain()}"
    )
    for fragment in case.fragments:
        wanted = world.fill(fragment)
        assert wanted in result.output, f"{wanted!r} not printed\n{result.explain()}"
    for fragment in case.forbidden:
        unwanted = world.fill(fragment)
        assert unwanted not in result.output, f"{unwanted!r} printed\n{result.explain()}"
    for check in case.checks:
        check(world, result)
