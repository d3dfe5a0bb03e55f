"""Mutation testing by a fixed list of hand-made mutants: does the suite catch realistic bugs?

Each mutant is one small, plausible bug in the code that carries docstokg's
guarantees (fencing, claims, transitions, retries, takeover, resume,
reconcile, dedupe, keys, limits, exit codes, operations, config precedence,
BEGIN IMMEDIATE, migrations, redaction): a file, an exact snippet of it, its
replacement, and the few test files that ought to notice.  The repository is
copied once to a temporary folder (without .venv and .git); each mutant is
applied there alone, its tests run with this interpreter and ``PYTHONPATH``
pointing at the copy (checked: the copy's docstokg is the one imported), and
the file is put back before the next.  The working tree is never touched.

A mutant is *killed* when its tests fail (or time out), *survived* when they
pass.  Before the mutants, the union of the selected tests runs once on the
unmutated copy: a test that already fails there (work in progress in a
shared tree) would pass for a kill, so it is listed and left out of every
mutant's run.  A snippet no longer found exactly once in its file (the code
moved on) is reported *stale* and left out of the rate; update the list.

Prints one line per mutant and the kill rate; exit status 1 below
``--goal`` (95 %), 2 if any mutant is stale.

    DOCSTOKG_TEST_BACKENDS=sqlite .venv/bin/python bench/mutants.py
    .venv/bin/python bench/mutants.py --only resume-short-206 --only fencing-expiry
    .venv/bin/python bench/mutants.py --list
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IGNORED = shutil.ignore_patterns(
    ".venv", ".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
    ".hypothesis", "*.pyc", "*.sqlite3*",
)  # fmt: skip
PER_MUTANT_TIMEOUT_S = 300.0
DEFAULT_GOAL = 0.95

# Test files, named once.
SERVICES = "tests/integration/test_lifecycle_services.py"
FAILURES = "tests/integration/test_lifecycle_failures.py"
FAKE_LEDGER = "tests/unit/test_services_with_a_fake_ledger.py"
FETCH = "tests/integration/test_fetch.py"
SHORT_RANGES = "tests/integration/test_short_ranges.py"
CHECKPOINT = "tests/integration/test_part_checkpoint.py"
RUNNER = "tests/integration/test_runner.py"
RUNNER_FAULTS = "tests/integration/test_runner_faults.py"
JOB_STEPS = "tests/integration/test_job_steps.py"
OPERATIONS = "tests/integration/test_operations.py"
UNIT_OF_WORK = "tests/integration/test_unit_of_work.py"
TABLE = "tests/unit/test_transition_table.py"
BACKWARD = "tests/integration/test_backward_transitions.py"
OUT_OF_ATTEMPTS = "tests/unit/test_out_of_attempts.py"
KEYS = "tests/unit/test_keys.py"
CONFIG = "tests/unit/test_config.py"
REDACT = "tests/unit/test_redact.py"
NO_PASSWORD = "tests/e2e/test_no_password_in_output.py"
REVISIONS = "tests/migrations/test_revisions.py"
TOUR = "tests/integration/test_lifecycle_stateful.py::test_lifecycle_tour"
ADOPTION = "tests/migrations/test_adoption.py"
BACKOFF_CAP = "tests/unit/test_backoff_cap.py"


@dataclass(frozen=True)
class Mutant:
    """One bug: ``original`` (found exactly once in ``path``) becomes ``replacement``."""

    name: str
    area: str
    path: str
    original: str
    replacement: str
    tests: tuple[str, ...]


def _m(name: str, area: str, path: str, original: str, replacement: str, *tests: str) -> Mutant:
    return Mutant(name, area, path, original, replacement, tests)


STATES = "src/docstokg/states.py"
STATEMENTS = "src/docstokg/ledger/statements.py"
TRANSITIONS = "src/docstokg/services/transitions.py"
FETCH_PY = "src/docstokg/download/fetch.py"
PART_WRITER = "src/docstokg/download/part_writer.py"
MAINTENANCE = "src/docstokg/services/maintenance.py"
CONTENT = "src/docstokg/services/content.py"

MUTANTS: tuple[Mutant, ...] = (
    # -- the three the first mutation test found unguarded (issue 14, item 7) --
    _m(
        "transitions-backward",
        "transitions",
        STATES,
        "    JobState.STREAMING: frozenset({JobState.FINALIZED}),",
        "    JobState.STREAMING: frozenset({JobState.FINALIZED, JobState.HEAD_DONE}),",
        TABLE,
        BACKWARD,
    ),
    _m(
        "resume-short-206",
        "resume",
        PART_WRITER,
        "        if expected is not None and size != expected:",
        "        if expected is not None and size > expected:",
        SHORT_RANGES,
        FETCH,
    ),
    _m(
        "redaction-start-line",
        "redaction",
        "src/docstokg/run/runner.py",
        "                mask_url(settings.db_url or str(ledger.url)),",
        "                settings.db_url or str(ledger.url),",
        NO_PASSWORD,
    ),
    # -- fencing --
    _m(
        "fencing-expiry",
        "fencing",
        STATEMENTS,
        '    jobs.lease_until >= bindparam("now"),\n)\n_now = ',
        ")\n_now = ",
        SERVICES,
        FAILURES,
    ),
    _m(
        "fencing-epoch",
        "fencing",
        STATEMENTS,
        '    jobs.lease_epoch == bindparam("epoch"),\n    jobs.lease_until >= bindparam("now"),',
        '    jobs.lease_until >= bindparam("now"),',
        SERVICES,
        FAILURES,
    ),
    _m(
        "fencing-finish-keeps-lease",
        "fencing",
        STATEMENTS,
        'lease_owner=case((bindparam("finishes", type_=Boolean), None), else_=jobs.lease_owner),',
        "lease_owner=jobs.lease_owner,",
        SERVICES,
        TOUR,
    ),
    _m(
        "claims-fifo",
        "claims",
        STATEMENTS,
        ".order_by(jobs.created_at, jobs.job_id).limit(1)",
        ".order_by(jobs.job_id).limit(1)",
        SERVICES,
    ),
    _m(
        "claims-backoff-ignored",
        "claims",
        STATEMENTS,
        "            jobs.attempts < jobs.max_attempts,\n"
        "            or_(jobs.next_attempt_at.is_(None), jobs.next_attempt_at <= _now),\n",
        "            jobs.attempts < jobs.max_attempts,\n",
        SERVICES,
        FAILURES,
    ),
    _m(
        "claims-live-lease",
        "claims",
        STATEMENTS,
        "    or_(jobs.lease_until.is_(None), jobs.lease_until < _now),",
        "    or_(jobs.lease_until.is_(None), jobs.lease_until <= _now),",
        SERVICES,
        TOUR,
    ),
    # -- transitions --
    _m(
        "transitions-finished-under",
        "transitions",
        TRANSITIONS,
        "    return job.state in SUCCESS_STATES and job.lease_epoch == lease.epoch",
        "    return job.state in SUCCESS_STATES",
        SERVICES,
        TOUR,
        FAKE_LEDGER,
    ),
    _m(
        "transitions-check-skipped",
        "transitions",
        TRANSITIONS,
        "    check_transition(to_state, allowed_from)\n    if to_state is JobState.FAILED:",
        "    if to_state is JobState.FAILED:",
        SERVICES,
        BACKWARD,
        FAKE_LEDGER,
    ),
    # -- retries --
    _m(
        "retries-exhaust-ignored",
        "retries",
        TRANSITIONS,
        "            exhaust=not retryable,",
        "            exhaust=False,",
        SERVICES,
        FAILURES,
        RUNNER_FAULTS,
        FAKE_LEDGER,
    ),
    _m(
        "retries-last-attempt-text",
        "retries",
        TRANSITIONS,
        "            text = out_of_attempts(error, attempt, job.max_attempts)",
        "            text = error[:MAX_ERROR_CHARS]",
        OUT_OF_ATTEMPTS,
        FAILURES,
        FAKE_LEDGER,
    ),
    _m(
        "retries-retry-after-uncapped",
        "retries",
        TRANSITIONS,
        "            delay = max(delay, min(retry_after_s, self.cap_s))",
        "            delay = max(delay, retry_after_s)",
        BACKOFF_CAP,
        RUNNER_FAULTS,
        FAILURES,
    ),
    # -- takeover --
    _m(
        "takeover-same-epoch",
        "takeover",
        STATEMENTS,
        "            lease_epoch=jobs.lease_epoch + 1,\n        )\n"
        "        .returning(*_LEASE_RETURNING)",
        "            lease_epoch=jobs.lease_epoch,\n        )\n"
        "        .returning(*_LEASE_RETURNING)",
        SERVICES,
        FAILURES,
    ),
    _m(
        "takeover-failed-not-restarted",
        "takeover",
        STATES,
        "RESTART_ON_GRANT = frozenset({JobState.PLANNED, JobState.FAILED})",
        "RESTART_ON_GRANT = frozenset({JobState.PLANNED})",
        SERVICES,
        FAILURES,
    ),
    # -- resume --
    _m(
        "resume-wrong-start",
        "resume",
        FETCH_PY,
        "    if int(match.group(1)) != have or int(match.group(2)) < have:",
        "    if int(match.group(2)) < have:",
        SHORT_RANGES,
        FETCH,
        CHECKPOINT,
    ),
    _m(
        "resume-prefix-unverified",
        "resume",
        FETCH_PY,
        "    hasher = hash_fd_prefix(fd, saved.length)\n"
        "    if hasher is None or hasher.hexdigest() != saved.sha256:",
        "    hasher = hash_fd_prefix(fd, saved.length)\n    if hasher is None:",
        CHECKPOINT,
        FETCH,
    ),
    _m(
        "resume-416-always-complete",
        "resume",
        FETCH_PY,
        "        if total == have:  # everything is already here, and verified",
        "        if total is not None:  # everything is already here, and verified",
        SHORT_RANGES,
        FETCH,
    ),
    _m(
        "resume-part-longer-than-file",
        "resume",
        FETCH_PY,
        "    fits = probe.length is None or have <= probe.length",
        "    fits = True",
        FETCH,
    ),
    # -- limits --
    _m(
        "limits-head-in-kib",
        "limits",
        FETCH_PY,
        "    if length is not None and length > limits.max_bytes:",
        "    if length is not None and length > limits.max_bytes * 1024:",
        FETCH,
        RUNNER_FAULTS,
    ),
    _m(
        "limits-announced-body-in-kib",
        "limits",
        PART_WRITER,
        "        if expected is not None and expected > self.limits.max_bytes:",
        "        if expected is not None and expected > self.limits.max_bytes * 1024:",
        FETCH,
        RUNNER_FAULTS,
    ),
    # -- reconcile --
    _m(
        "reconcile-wrong-base",
        "reconcile",
        MAINTENANCE,
        "if not (base / final_path).exists()]",
        "if not (staging_root / final_path).exists()]",
        SERVICES,
        FAILURES,
    ),
    _m(
        "reconcile-deletes-recent-parts",
        "reconcile",
        MAINTENANCE,
        "        if age <= max_age_s:",
        "        if age >= max_age_s:",
        SERVICES,
        FAILURES,
    ),
    _m(
        "reconcile-no-attempt-left",
        "reconcile",
        STATEMENTS,
        "(jobs.attempts >= jobs.max_attempts, jobs.max_attempts - 1), else_=jobs.attempts",
        "(jobs.attempts >= jobs.max_attempts, jobs.max_attempts), else_=jobs.attempts",
        SERVICES,
        FAILURES,
    ),
    # -- dedupe --
    _m(
        "dedupe-every-job-first",
        "dedupe",
        CONTENT,
        "        if owner is None:\n            return {",
        "        if True:\n            return {",
        JOB_STEPS,
        RUNNER,
        FAILURES,
    ),
    # Not equivalent, though a run cannot show it (its paths are content-addressed, so the
    # duplicate's own path is the owner's): DEDUPE handed another path must repoint the job.
    _m(
        "dedupe-duplicate-keeps-own-path",
        "dedupe",
        CONTENT,
        "        if owner_path is not None and owner_path != content.final_path:",
        "        if owner_path is not None and owner_path == content.final_path:",
        SERVICES,
        JOB_STEPS,
        RUNNER,
        FAILURES,
    ),
    # -- keys --
    _m(
        "keys-url-left-out",
        "keys",
        "src/docstokg/keys.py",
        '            "canonical_url": canonical_url,\n        }',
        "        }",
        KEYS,
    ),
    _m(
        "keys-context-left-out",
        "keys",
        "src/docstokg/keys.py",
        '"kind": kind, "job_id": job_id, "context": context}',
        '"kind": kind, "job_id": job_id}',
        KEYS,
    ),
    # -- exit codes --
    _m(
        "exit-skipped-rows-succeed",
        "exit codes",
        "src/docstokg/run/runner.py",
        '        lost = self.counts["failed"] or self.counts["unfinished"] or self.skipped_rows',
        '        lost = self.counts["failed"] or self.counts["unfinished"]',
        RUNNER,
    ),
    _m(
        "exit-stopped-is-failure",
        "exit codes",
        "src/docstokg/run/runner.py",
        '        if self.counts["unfinished"] and self.interrupted:\n            return 130',
        '        if self.counts["unfinished"] and self.interrupted:\n            return 1',
        RUNNER_FAULTS,
    ),
    # -- operations --
    _m(
        "operations-retry-one-short",
        "operations",
        STATEMENTS,
        '_REFILL_VALUES = {"attempts": 0,',
        '_REFILL_VALUES = {"attempts": 1,',
        OPERATIONS,
    ),
    _m(
        "operations-vacuum-live-failed",
        "operations",
        STATEMENTS,
        "    or_(jobs.state.in_(sorted(s.value for s in SUCCESS_STATES)), and_(*_EXHAUSTED)),",
        "    or_(jobs.state.in_(sorted(s.value for s in SUCCESS_STATES)),"
        " jobs.state == JobState.FAILED.value),",
        OPERATIONS,
    ),
    # -- config precedence --
    _m(
        "config-environment-under-file",
        "config precedence",
        "src/docstokg/config.py",
        "    path = _config_path(config_file, cwd, problems)\n    if path is not None:\n"
        '        file_source = f"file {path}"\n'
        "        for key, value in _read_section(path, problems).items():\n"
        "            values[key] = value\n            sources[key] = file_source\n\n"
        "    _apply_environment(env, values, sources, problems)\n",
        "    _apply_environment(env, values, sources, problems)\n"
        "    path = _config_path(config_file, cwd, problems)\n    if path is not None:\n"
        '        file_source = f"file {path}"\n'
        "        for key, value in _read_section(path, problems).items():\n"
        "            values[key] = value\n            sources[key] = file_source\n\n",
        CONFIG,
    ),
    # Replaces "config-db-path-over-db-url" (db_path preferred when both keys are set), an
    # equivalent mutant: IdempotencyConfig refuses db_path and db_url together for every
    # validated instance (frozen, cross-checked), so resolve_db_url never sees both.
    _m(
        "config-db-url-over-flag",
        "config precedence",
        "src/docstokg/config.py",
        "    if db_flag is not None:\n        if not db_flag.strip():",
        "    if settings.config.db_url is not None:\n        return settings.config.db_url\n"
        "    if db_flag is not None:\n        if not db_flag.strip():",
        CONFIG,
    ),
    # -- BEGIN IMMEDIATE --
    _m(
        "begin-deferred",
        "BEGIN IMMEDIATE",
        "src/docstokg/ledger/engine.py",
        '        statement = "BEGIN" if read_only else "BEGIN IMMEDIATE"',
        '        statement = "BEGIN"',
        UNIT_OF_WORK,
        FAILURES,
    ),
    # -- migrations --
    _m(
        "migrations-unknown-revision-upgraded",
        "migrations",
        "src/docstokg/ledger/migrate.py",
        "        _check_known(status.revision)\n        return False",
        "        return False",
        REVISIONS,
        ADOPTION,
    ),
    _m(
        "migrations-old-revision-accepted",
        "migrations",
        "src/docstokg/ledger/migrate.py",
        "    if not status.is_current:\n        raise SchemaNotCurrent(\n"
        '            f"the ledger database has revision',
        "    if status.revision is None:\n        raise SchemaNotCurrent(\n"
        '            f"the ledger database has revision',
        REVISIONS,
        UNIT_OF_WORK,
    ),
    # -- redaction --
    _m(
        "redaction-query-kept",
        "redaction",
        "src/docstokg/redact.py",
        "    return head + _mask_query(rest)",
        "    return head + rest",
        REDACT,
        NO_PASSWORD,
    ),
)


# --- running ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    mutant: Mutant
    outcome: str  # killed | survived | timeout (killed) | stale
    seconds: float
    detail: str = ""


def copy_repository(destination: Path) -> Path:
    """The tree without its virtualenv, git data and caches; returns the copy's root."""
    root = destination / "repo"
    shutil.copytree(REPO, root, ignore=IGNORED, symlinks=True)
    return root


def environment(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy / "src"), str(copy)])
    env.setdefault("DOCSTOKG_TEST_BACKENDS", "sqlite")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_imports_the_copy(copy: Path) -> None:
    """Refuse to run unless the copy's docstokg and tests are the ones imported there."""
    where = "import docstokg, tests; print(docstokg.__file__); print(tests.__file__)"
    probe = subprocess.run(
        [sys.executable, "-c", where],
        cwd=copy, env=environment(copy), capture_output=True, text=True, check=True,
    )  # fmt: skip
    imported = [Path(line).resolve() for line in probe.stdout.split()]
    expected = [
        (copy / "src/docstokg/__init__.py").resolve(),
        (copy / "tests/__init__.py").resolve(),
    ]
    if imported != expected:
        raise SystemExit(
            f"the copy at {copy} is not what gets imported: {imported}; expected {expected}"
        )


@dataclass(frozen=True)
class TestRun:
    passed: bool | None  # None: timed out
    tail: str  # the last lines of pytest's report
    failed: tuple[str, ...]  # node ids of the tests that failed or errored


def run_tests(
    copy: Path, tests: Sequence[str], *, stop_first: bool, deselect: Sequence[str] = ()
) -> TestRun:
    """Run ``tests`` in the copy (minus ``deselect``), with this interpreter."""
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
            "--no-header", *(["-x"] if stop_first else []), *tests,
            *(arg for node in deselect for arg in ("--deselect", node))]  # fmt: skip
    try:
        done = subprocess.run(
            argv, cwd=copy, env=environment(copy), capture_output=True, text=True,
            timeout=PER_MUTANT_TIMEOUT_S, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return TestRun(None, f"timed out after {PER_MUTANT_TIMEOUT_S:.0f}s", ())
    if done.returncode not in (0, 1):
        # 2..5: pytest could not collect or run: not a verdict about the mutant.
        raise SystemExit(
            f"pytest exited {done.returncode} for {tests}:\n{done.stdout}\n{done.stderr}"
        )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    # "FAILED tests/...::name - reason" in the summary; a captured log line can also start
    # with "ERROR " (a logger's level), so only what names a test file counts.
    failed = tuple(
        node
        for line in lines
        if line.startswith(("FAILED ", "ERROR "))
        and (node := line.split(" ", 1)[1].split(" - ", 1)[0]).startswith("tests/")
    )
    return TestRun(done.returncode == 0, " | ".join(lines[-2:]), failed)


def apply(copy: Path, mutant: Mutant) -> str | None:
    """Write the mutant into the copy; the original text, or None if the snippet is stale."""
    target = copy / mutant.path
    original = target.read_text(encoding="utf-8")
    if original.count(mutant.original) != 1:
        return None
    mutated = original.replace(mutant.original, mutant.replacement)
    compile(mutated, str(target), "exec")  # a mutant must be a bug, not a syntax error
    target.write_text(mutated, encoding="utf-8")
    return original


def check_snippets(mutants: Sequence[Mutant]) -> int:
    """Each snippet found once in the working tree, and each mutated file compiles; 0 if so."""
    problems = []
    for m in mutants:
        text = (REPO / m.path).read_text(encoding="utf-8")
        if (found := text.count(m.original)) != 1:
            problems.append(f"{m.name}: snippet found {found} times in {m.path}")
            continue
        try:
            compile(text.replace(m.original, m.replacement), m.path, "exec")
        except SyntaxError as error:
            problems.append(f"{m.name}: the mutated {m.path} does not compile: {error}")
        problems += [
            f"{m.name}: no test file {t}"
            for t in m.tests
            if not (REPO / t.split("::", 1)[0]).is_file()
        ]
    for problem in problems:
        print(problem)
    print(f"{len(mutants)} mutants checked, {len(problems)} problems")
    return 2 if problems else 0


def try_mutant(copy: Path, mutant: Mutant, deselect: Sequence[str]) -> Verdict:
    started = time.monotonic()
    original = apply(copy, mutant)
    if original is None:
        found = (copy / mutant.path).read_text(encoding="utf-8").count(mutant.original)
        return Verdict(mutant, "stale", 0.0, f"snippet found {found} times in {mutant.path}")
    try:
        run = run_tests(copy, mutant.tests, stop_first=True, deselect=deselect)
    finally:
        (copy / mutant.path).write_text(original, encoding="utf-8")
    elapsed = time.monotonic() - started
    outcome = "timeout (killed)" if run.passed is None else "survived" if run.passed else "killed"
    return Verdict(mutant, outcome, elapsed, run.failed[0] if run.failed else run.tail)


def baseline(copy: Path, mutants: Sequence[Mutant]) -> tuple[str, ...]:
    """Run every selected test once unmutated; the ids of those that already fail.

    Those are left out of every mutant's run (and listed): in a tree others are
    editing, a test broken by work in progress must not count as a kill.
    """
    tests = sorted({test for mutant in mutants for test in mutant.tests})
    started = time.monotonic()
    run = run_tests(copy, tests, stop_first=False)
    print(f"baseline: {len(tests)} test files on the unmutated copy, "
          f"{time.monotonic() - started:.0f}s: {run.tail}", flush=True)  # fmt: skip
    if run.passed is None:
        raise SystemExit("the unmutated tests timed out: raise PER_MUTANT_TIMEOUT_S or fix them")
    for node in run.failed:
        print(f"  fails without any mutant, left out: {node}", flush=True)
    return run.failed


def report(verdicts: Sequence[Verdict], goal: float) -> int:
    applied = [v for v in verdicts if v.outcome != "stale"]
    killed = [v for v in applied if v.outcome != "survived"]
    survivors = [v for v in applied if v.outcome == "survived"]
    stale = [v for v in verdicts if v.outcome == "stale"]
    rate = len(killed) / len(applied) if applied else 0.0
    print(f"\nkill rate: {len(killed)}/{len(applied)} = {rate:.1%} (goal {goal:.0%})"
          f"; {len(survivors)} survived, {len(stale)} stale")  # fmt: skip
    for verdict in survivors:
        m = verdict.mutant
        print(f"  survived: {m.name} ({m.area}) in {m.path}: {m.original.strip()!r} "
              f"-> {m.replacement.strip()!r}; tests {', '.join(m.tests)}")  # fmt: skip
    for verdict in stale:
        print(f"  stale: {verdict.mutant.name}: {verdict.detail}")
    if stale:
        return 2
    return 0 if rate >= goal else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--only", action="append", default=[], help="run only this mutant (repeatable)"
    )
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument(
        "--check",
        action="store_true",
        help="only check that every snippet is found once and compiles (reads only)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument("--goal", type=float, default=DEFAULT_GOAL, help="kill rate required (0-1)")
    args = parser.parse_args(argv)

    unknown = set(args.only) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"no mutant named {sorted(unknown)}; see --list")
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name:36} {m.area:18} {m.path}  tests: {' '.join(m.tests)}")
        return 0

    if args.check:
        return check_snippets(chosen)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="docstokg-mutants-") as scratch:
        copy = copy_repository(Path(scratch))
        check_imports_the_copy(copy)
        backends = environment(copy)["DOCSTOKG_TEST_BACKENDS"]
        print(
            f"{len(chosen)} mutants; copy at {copy}; DOCSTOKG_TEST_BACKENDS={backends}", flush=True
        )
        broken = () if args.no_baseline else baseline(copy, chosen)
        verdicts = []
        for mutant in chosen:
            verdict = try_mutant(copy, mutant, broken)
            verdicts.append(verdict)
            line = f"{verdict.outcome:17} {mutant.name:36} {verdict.seconds:6.1f}s"
            print(f"{line}  {verdict.detail}", flush=True)
    print(f"wall time: {time.monotonic() - started:.0f}s")
    if broken:
        print(f"{len(broken)} tests failed without any mutant and were left out (see above)")
    return report(verdicts, args.goal)


if __name__ == "__main__":
    sys.exit(main())
