"""AGENTS.md's runbooks, run against ledgers put into each runbook's situation.

The operator documentation is only worth something while its commands work
and show what it says they show.  Each test here builds the incident a
runbook is about (a dead worker's expired lease, duplicate downloads, stale
``.part`` files, a wave of failures, many workers on one SQLite file, a
damaged store, a ledger database stopped mid-run), then
runs every command of that runbook's ``<!-- runbook-check: N -->`` blocks the
way an operator would paste them (``bash``, with ``$DB``, ``$OUT`` and
``$JOB`` set, ``docstokg`` being ``python -m docstokg``), and every statement
of its ``<!-- runbook-sql: N -->`` blocks through the ledger's own
connection, and asserts that each exits 0 and shows the situation.  The
``<!-- runbook-fix: N -->`` repairs are run too, and must repair.  The JSON
documents shown in AGENTS.md are compared, key by key, with what the commands
print.

Renaming a command, an option or a JSON key therefore fails a test here until
AGENTS.md follows.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from docstokg import (
    JobState,
    Ledger,
    fail_job,
    lease_next_job,
    op_key,
    plan_jobs,
    run_effect,
)
from docstokg.cli import app
from docstokg.config import ENABLE_ENV, KEYS, IdempotencyConfig, env_var
from docstokg.keys import job_id_for, job_key
from docstokg.ledger.engine import database_error, parse_url
from docstokg.metrics import exposition
from docstokg.testing.server import Artifact, ArtifactServer, generated_body
from tests.cli_kit import cli_env, free_port
from tests.lifecycle import WorkerDied
from tests.manifests import write_jsonl
from tests.pgcluster import ThrowawayPostgres

pytestmark = pytest.mark.slow

AGENTS_MD = Path(__file__).resolve().parents[2] / "AGENTS.md"
RUNBOOK_TITLES = {
    1: "stuck in a leased state",
    2: "downloaded twice",
    3: "stale .part files",
    4: "failure rate",
    5: "database is locked",
    6: "stored file missing or corrupt",
    7: "database went away",
}
PARTS = ("Symptom", "Diagnose", "Cause", "Resolution", "Prevention")
PLACEHOLDERS = {"DB", "OUT", "JOB"}
HOUR = 3600.0
DEAD_OWNER = "worker-7:4242:9f3a1c:w2"
LIVE_OWNER = "worker-8:5151:0b7e2d:w0"
COMMAND_TIMEOUT_S = 60.0
# REPAIRS: the runbook-fix blocks run on SQLite only.  Every CLI call starts a
# Python process (~0.6 s), and the repairs' statements are the ones the
# integration tests already run on both backends; the diagnostics, whose SQL
# blocks are where the dialects differ, run on both.
KiB = 1024


# --- reading AGENTS.md -----------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    kind: str  # runbook-check | runbook-sql | runbook-fix | json-shape
    key: str  # the runbook's number, or the command of a json-shape
    language: str
    body: str


_BLOCK = re.compile(
    r"<!-- (runbook-check|runbook-sql|runbook-fix|json-shape): ([^>]+?) -->\n"
    r"```(\w+)\n(.*?)\n```",
    re.DOTALL,
)
_RUNBOOK_HEADING = re.compile(r"^### Runbook (\d+): (.+)$", re.MULTILINE)
_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


def agents_md() -> str:
    return AGENTS_MD.read_text(encoding="utf-8")


def blocks(kind: str, key: str) -> list[Block]:
    found = [
        Block(*match.groups())
        for match in _BLOCK.finditer(agents_md())
        if match.group(1) == kind and match.group(2) == key
    ]
    assert found, f"AGENTS.md has no <!-- {kind}: {key} --> block"
    return found


def commands_of(kind: str, runbook: int) -> list[str]:
    """The shell commands of a runbook's blocks: one per line, `\\` continuations joined."""
    commands: list[str] = []
    for block in blocks(kind, str(runbook)):
        assert block.language == "bash", f"{kind} {runbook} must be a ```bash block"
        pending = ""
        for line in block.body.splitlines():
            stripped = line.strip()
            if not pending and (not stripped or stripped.startswith("#")):
                continue
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            commands.append(pending + stripped)
            pending = ""
        assert not pending, f"a command of {kind} {runbook} ends with a backslash"
    return commands


def sql_of(runbook: int) -> list[str]:
    statements = []
    for block in blocks("runbook-sql", str(runbook)):
        assert block.language == "sql"
        statements += [part.strip() for part in block.body.split(";") if part.strip()]
    return statements


def runbook_sections() -> dict[int, tuple[str, str]]:
    """Runbook number -> (title, text up to the next ``###`` heading)."""
    document = agents_md()
    sections: dict[int, tuple[str, str]] = {}
    for match in _RUNBOOK_HEADING.finditer(document):
        rest = document[match.end() :]
        following = re.search(r"^### ", rest, re.MULTILINE)
        body = rest if following is None else rest[: following.start()]
        sections[int(match.group(1))] = (match.group(2), body)
    return sections


# --- running the commands as an operator would -----------------------------------------------


@dataclass(frozen=True)
class Ran:
    command: str
    returncode: int
    stdout: str
    stderr: str

    def explain(self) -> str:
        return (
            f"$ {self.command}\nexit {self.returncode}\nstdout:\n{self.stdout}\n"
            f"stderr:\n{self.stderr}"
        )

    def json(self) -> Any:
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError as error:
            raise AssertionError(f"not one JSON document ({error})\n{self.explain()}") from None


class Outputs:
    """What each command of a block printed, found by a fragment of the command."""

    def __init__(self, ran: list[Ran]) -> None:
        self.ran = ran

    def of(self, fragment: str) -> Ran:
        for result in self.ran:
            if fragment in result.command:
                return result
        commands = "\n".join(result.command for result in self.ran)
        raise AssertionError(f"no command with {fragment!r} in the runbook block:\n{commands}")

    def json(self, fragment: str) -> Any:
        return self.of(fragment).json()


def shell_env(tmp_path: Path, **values: str) -> dict[str, str]:
    """The test's environment minus docstokg's settings; `docstokg` runs `python -m docstokg`."""
    shims = tmp_path / "shims"
    if not shims.exists():
        shims.mkdir()
        shim = shims / "docstokg"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m docstokg "$@"\n')
        shim.chmod(0o755)
    env = cli_env(columns=400)
    env["PATH"] = f"{shims}{os.pathsep}{env.get('PATH', '')}"
    env.update(values)
    return env


def run_command(command: str, *, cwd: Path, env: Mapping[str, str]) -> Ran:
    """One command in bash (`set -euo pipefail`: an unset variable or a failed pipe is an error)."""
    unknown = set(_VARIABLE.findall(command)) - PLACEHOLDERS
    assert not unknown, f"{command!r} uses {unknown}; runbooks may only use {PLACEHOLDERS}"
    completed = subprocess.run(
        ["bash", "-c", f"set -euo pipefail\n{command}"],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    return Ran(command, completed.returncode, completed.stdout, completed.stderr)


def run_commands(
    commands: list[str], *, cwd: Path, env: Mapping[str, str], concurrently: bool = False
) -> Outputs:
    """Run the commands in order, or all at once (diagnostics only read); each must exit 0."""
    if concurrently:
        with ThreadPoolExecutor(max_workers=len(commands)) as pool:
            results = list(
                pool.map(lambda command: run_command(command, cwd=cwd, env=env), commands)
            )
    else:
        results = [run_command(command, cwd=cwd, env=env) for command in commands]
    for result in results:
        assert result.returncode == 0, result.explain()
    return Outputs(results)


def run_runbook(
    kind: str, runbook: int, *, tmp_path: Path, db: str, out: Path, job: str = ""
) -> Outputs:
    """A runbook's blocks of ``kind``: diagnostics concurrently, repairs in their order."""
    cwd = tmp_path / "operator"  # no config/idempotency.yaml here: the defaults apply
    cwd.mkdir(exist_ok=True)
    env = shell_env(tmp_path, DB=db, OUT=str(out), JOB=job)
    commands = commands_of(kind, runbook)
    return run_commands(commands, cwd=cwd, env=env, concurrently=kind == "runbook-check")


def query(db_url: str, statement: str) -> list[dict[str, Any]]:
    """One runbook SQL statement through the ledger's own connection, read-only."""
    assert re.match(r"SELECT\b", statement, re.IGNORECASE), (
        f"runbook SQL must be a plain SELECT:\n{statement}"
    )
    with Ledger.connect(db_url) as ledger, ledger.unit_of_work(read_only=True) as uow:
        return [dict(row) for row in uow.session.execute(text(statement)).mappings()]


def run_sql(runbook: int, db_url: str) -> list[list[dict[str, Any]]]:
    return [query(db_url, statement) for statement in sql_of(runbook)]


def cli(*args: str, cwd: Path, env: Mapping[str, str]) -> Ran:
    completed = subprocess.run(
        [sys.executable, "-m", "docstokg", *args],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    return Ran(" ".join(args), completed.returncode, completed.stdout, completed.stderr)


def job_id(work_id: str, artifact_id: str, url: str) -> str:
    return job_id_for(job_key(work_id, artifact_id, url))


class TickingClock:
    """Epoch seconds that start in the past and move 1 ms per reading, so rows keep their order."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


def _die() -> dict[str, object]:
    raise WorkerDied


# --- the page itself ---------------------------------------------------------------------------


def test_seven_runbooks_each_with_the_five_parts_in_order() -> None:
    sections = runbook_sections()
    assert sorted(sections) == [1, 2, 3, 4, 5, 6, 7]
    for number, fragment in RUNBOOK_TITLES.items():
        title, body = sections[number]
        assert fragment in title.lower(), f"runbook {number} is titled {title!r}"
        headings = re.findall(r"^#### (.+)$", body, re.MULTILINE)
        assert headings == list(PARTS), f"runbook {number} has parts {headings}"
        for part in PARTS:
            text_of_part = body.split(f"#### {part}\n", 1)[1].split("\n#### ", 1)[0]
            assert text_of_part.strip(), f"runbook {number}: {part} is empty"
        diagnose = body.split("#### Diagnose\n", 1)[1].split("\n#### ", 1)[0]
        assert f"<!-- runbook-check: {number} -->" in diagnose
        assert f"<!-- runbook-sql: {number} -->" in diagnose
        assert commands_of("runbook-check", number)
        assert sql_of(number)


def test_the_page_has_the_sections_it_promises_and_links_the_design() -> None:
    document = agents_md()
    assert "## Idempotency & Job Management" in document
    for heading in (
        "### Overview",
        "### Configuration",
        "### The command line",
        "### Best practices",
        "### Troubleshooting",
        "### Runbooks",
    ):
        assert f"\n{heading}\n" in document, heading
    assert re.search(r"\]\(src/docstokg/\S+\.py\)", document), "no link to the design's sources"
    assert "](docs/usage.md#" in document  # the reference pages, not a copy of them


_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_pages_link_only_files_a_clone_has() -> None:
    """README.md, AGENTS.md and docs/ are read in a clone: no link may lead outside it."""
    root = AGENTS_MD.parent
    for page in [root / "AGENTS.md", root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        document = page.read_text(encoding="utf-8")
        assert "../shared/" not in document, f"{page.name} points outside the repository"
        for target in _LINK.findall(document):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page} links {target}, a clone lacks"


def github_slug(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_the_links_into_the_reference_pages_name_headings_they_have() -> None:
    root = AGENTS_MD.parent
    anchors = re.findall(r"\]\(((?:README|docs/\w+)\.md)#([^)]+)\)", agents_md())
    assert anchors, "AGENTS.md links no section of the README or docs/"
    for page, anchor in anchors:
        text = (root / page).read_text(encoding="utf-8")
        slugs = {github_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}
        assert anchor in slugs, f"{page} has no section #{anchor}"


def test_every_setting_and_its_environment_variable_is_in_the_configuration_table() -> None:
    document = agents_md()
    rows = {
        match.group(1): match.group(0)
        for match in re.finditer(r"^\| `(\w+)` \|.*$", document, re.MULTILINE)
    }
    for key in KEYS:
        assert key in rows, f"setting {key} is missing from the configuration table"
        assert env_var(key) in rows[key], f"{env_var(key)} is not in the row of {key}"
        default = IdempotencyConfig.model_fields[key].default
        shown = {None: "null", False: "false"}.get(default)
        if shown is None:
            shown = str(int(default)) if isinstance(default, float) else str(default)
        assert f"`{shown}`" in rows[key], f"{key}: default {shown} not in {rows[key]}"
    assert ENABLE_ENV in rows["enabled"]


def test_the_busy_error_points_at_runbook_5() -> None:
    """The message of LedgerBusy names a phrase of AGENTS.md: runbook 5's title has it."""
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = sqlite3.SQLITE_BUSY
    wrapped = DBAPIError.instance("BEGIN IMMEDIATE", (), locked, sqlite3.Error)
    assert isinstance(wrapped, DBAPIError)
    message = str(database_error(parse_url("sqlite:////srv/ledger.sqlite3"), wrapped))
    pointer = re.search(r"see '([^']+)' in AGENTS\.md", message)
    assert pointer is not None, message
    title, _ = runbook_sections()[5]
    assert pointer.group(1) in title


# --- runbook 1: jobs stuck in a leased state ---------------------------------------------------


def test_runbook_1_finds_the_dead_workers_expired_lease_and_its_open_op(
    backend: str, db_url: str, tmp_path: Path
) -> None:
    dead_url, live_url = "https://example.org/dead.pdf", "https://example.org/live.pdf"
    with Ledger.connect(db_url, clock=TickingClock(time.time() - HOUR)) as ledger:
        plan_jobs(ledger, [("W1", "pdf", dead_url)])
        plan_jobs(ledger, [("W2", "pdf", live_url)])
        dead = lease_next_job(ledger, owner=DEAD_OWNER, ttl_s=120)
        assert dead is not None
        assert dead.canonical_url == dead_url
        run_effect(
            ledger,
            dead,
            kind="HEAD",
            opkey=op_key("HEAD", dead.job_id),
            effect_fn=lambda: {"status": 200},
            advance_to=JobState.HEAD_DONE,
            allowed_from=[JobState.LEASED],
        )
        with pytest.raises(WorkerDied):  # killed half-way through the download
            run_effect(
                ledger,
                dead,
                kind="STREAM",
                opkey=op_key("STREAM", dead.job_id),
                effect_fn=_die,
                advance_to=JobState.STREAMING,
                allowed_from=[JobState.HEAD_DONE],
            )
        live = lease_next_job(ledger, owner=LIVE_OWNER, ttl_s=HOUR + 600)
        assert live is not None
        assert live.canonical_url == live_url

    seen = run_runbook(
        "runbook-check", 1, tmp_path=tmp_path, db=db_url, out=tmp_path / "out", job=dead.job_id
    )

    status = seen.json("job status")
    assert status["counts"]["HEAD_DONE"] == 1
    assert status["counts"]["LEASED"] == 1
    leases = seen.json("job leases")
    assert (leases["total"], leases["live"], leases["expired"]) == (2, 1, 1)
    by_owner = {lease["owner"]: lease for lease in leases["leases"]}
    assert by_owner[DEAD_OWNER]["job_id"] == dead.job_id
    assert by_owner[DEAD_OWNER]["state"] == "HEAD_DONE"
    assert by_owner[DEAD_OWNER]["seconds_left"] < -HOUR + 200
    assert by_owner[LIVE_OWNER]["seconds_left"] > 0
    assert leases["leases"][0]["owner"] == DEAD_OWNER  # soonest expiry first
    shown = seen.json("job show")
    assert shown["job"]["lease_owner"] == DEAD_OWNER
    ops = {op["kind"]: op for op in shown["ops"]}
    assert ops["HEAD"]["status"] == "SUCCEEDED"
    assert ops["STREAM"]["status"] == "IN_PROGRESS"
    assert ops["STREAM"]["epoch"] == shown["job"]["lease_epoch"] == dead.epoch
    assert abs(float(seen.of("date +%s").stdout) - time.time()) < 60
    dry = seen.json("job cleanup")
    assert dry == {
        "dry_run": True,
        "expired_leases": 1,
        "abandoned_ops": 1,
        "stale_parts": [],
        "jobs_requeued": [],
    }

    leased, open_ops = run_sql(1, db_url)
    assert [(row["lease_owner"], row["state"]) for row in leased] == [
        (DEAD_OWNER, "HEAD_DONE"),
        (LIVE_OWNER, "LEASED"),
    ]
    assert [(row["job_id"], row["op_type"], row["status"]) for row in open_ops] == [
        (dead.job_id, "STREAM", "IN_PROGRESS")
    ]
    assert open_ops[0]["op_epoch"] == open_ops[0]["job_epoch"]

    if backend != "sqlite":
        return  # see REPAIRS below
    # The dry run changed nothing; the repair clears the dead lease, not the live one.
    fixed = run_runbook("runbook-fix", 1, tmp_path=tmp_path, db=db_url, out=tmp_path / "out")
    cleanup = fixed.json("job cleanup")
    assert (cleanup["dry_run"], cleanup["expired_leases"], cleanup["abandoned_ops"]) == (
        False,
        1,
        1,
    )
    after = fixed.json("job leases")
    assert (after["total"], after["live"], after["expired"]) == (1, 1, 0)
    assert after["leases"][0]["owner"] == LIVE_OWNER
    # ... and, as the Resolution says, the next worker resumes the job where it stopped.
    with Ledger.connect(db_url) as ledger:
        resumed = lease_next_job(ledger, owner="worker-9:1:run:w0", ttl_s=60)
    assert resumed is not None
    assert resumed.job_id == dead.job_id
    assert resumed.state is JobState.HEAD_DONE
    assert resumed.epoch == dead.epoch + 1
    # The Cause says it: the dead worker's lease cost the job an attempt, and names the step.
    with Ledger.connect(db_url) as ledger, ledger.unit_of_work(read_only=True) as uow:
        record = uow.jobs.get(dead.job_id)
    assert record is not None
    assert (record.attempts, record.last_error) == (1, "worker lost during STREAM (lease expired)")


# --- runbook 2: the same artifact downloaded twice ---------------------------------------------


def test_runbook_2_shows_which_jobs_share_content_and_why(
    db_url: str, tmp_path: Path, server: ArtifactServer
) -> None:
    paper = generated_body("paper-1", 48 * KiB)
    url = server.add("/papers/1.pdf", Artifact(paper))
    mirror = server.add("/mirror/1.pdf", Artifact(paper))
    other = server.add("/papers/2.pdf", Artifact(generated_body("paper-2", 16 * KiB)))
    rows = [("W1", "pdf", url), ("W1", "mirror", mirror), ("W9", "pdf", url), ("W2", "pdf", other)]
    manifest = write_jsonl(tmp_path / "papers.jsonl", rows)
    out = tmp_path / "store"
    env = shell_env(tmp_path)
    args = ("run", str(manifest), "--out", str(out), "--db", db_url, "--idempotency", "--json")

    first = cli(*args, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.explain()
    assert first.json()["counts"] == {
        "stored": 2,
        "duplicates": 2,
        "failed": 0,
        "unfinished": 0,
        "jobs": 4,
    }
    assert server.stats("/papers/1.pdf").get_requests == 2  # two jobs: W1/pdf and W9/pdf
    assert server.stats("/mirror/1.pdf").get_requests == 1  # same bytes, another URL
    assert server.total().get_requests == 4

    jobs = {(job["work_id"], job["artifact_id"]): job for job in first.json()["jobs"]}
    same = [jobs[("W1", "pdf")], jobs[("W1", "mirror")], jobs[("W9", "pdf")]]
    [owner] = [job for job in same if job["state"] == "DEDUPED"]
    duplicate = next(job for job in same if job["state"] == "SKIPPED_DUPLICATE")

    seen = run_runbook(
        "runbook-check", 2, tmp_path=tmp_path, db=db_url, out=out, job=duplicate["job_id"]
    )
    settings = seen.json("config show")["settings"]
    assert settings["enabled"] == {"value": False, "source": "default"}
    status = seen.json("job status")
    assert (status["counts"]["DEDUPED"], status["counts"]["SKIPPED_DUPLICATE"]) == (2, 2)
    shown = seen.json("job show")
    assert shown["job"]["state"] == "SKIPPED_DUPLICATE"
    assert shown["job"]["final_path"] == owner["final_path"]
    [dedupe] = [op for op in shown["ops"] if op["kind"] == "DEDUPE"]
    assert json.loads(dedupe["result"]) == {
        "outcome": "SKIPPED_DUPLICATE",
        "duplicate_of": owner["job_id"],
    }

    shared, jobs_sharing, urls, streamed_again = run_sql(2, db_url)
    assert shared == [
        {"sha256": owner["sha256"], "jobs": 3, "final_path": owner["final_path"], "files": 1}
    ]
    assert sorted((row["job_id"], row["state"]) for row in jobs_sharing) == sorted(
        (job["job_id"], job["state"]) for job in same
    )
    assert sorted(row["state"] for row in jobs_sharing) == [
        "DEDUPED",
        "SKIPPED_DUPLICATE",
        "SKIPPED_DUPLICATE",
    ]
    assert {row["final_path"] for row in jobs_sharing} == {owner["final_path"]}
    assert urls == [{"canonical_url": url, "jobs": 2}]
    assert streamed_again == []  # no lease was lost: each STREAM body ran once


def test_runbook_2_tells_that_the_ledger_was_off(tmp_path: Path, server: ArtifactServer) -> None:
    url = server.add("/papers/1.pdf", Artifact(generated_body("paper-1", 32 * KiB)))
    manifest = write_jsonl(tmp_path / "papers.jsonl", [("W1", "pdf", url)])
    out = tmp_path / "store"
    env = shell_env(tmp_path)
    for _ in range(2):
        plain = cli("run", str(manifest), "--out", str(out), "--json", cwd=tmp_path, env=env)
        assert plain.returncode == 0, plain.explain()
        assert plain.json()["ledger"] is False
        assert "Idempotency system disabled" in plain.stderr
    assert server.stats("/papers/1.pdf").get_requests == 2  # downloaded twice
    assert not (out / "manifest.sqlite3").exists()

    config_show = [
        command for command in commands_of("runbook-check", 2) if "config show" in command
    ]
    assert config_show, "runbook 2 no longer checks whether the ledger is on"
    seen = run_commands(config_show, cwd=tmp_path, env=shell_env(tmp_path, OUT=str(out)))
    assert seen.json("config show")["settings"]["enabled"] == {"value": False, "source": "default"}


# --- runbook 3: stale .part files accumulating -------------------------------------------------


def test_runbook_3_lists_the_stale_parts_no_live_lease_owns(
    backend: str, db_url: str, tmp_path: Path
) -> None:
    urls = {name: f"https://example.org/{name}.pdf" for name in ("failed", "live", "young", "dead")}
    ids = {name: job_id(name, "pdf", url) for name, url in urls.items()}
    with Ledger.connect(db_url, clock=TickingClock(time.time() - HOUR)) as past:
        for name in ("dead", "failed", "live", "young"):  # claimed in this order
            plan_jobs(past, [(name, "pdf", urls[name])])
        dead = lease_next_job(past, owner=DEAD_OWNER, ttl_s=120)
        assert dead is not None
        assert dead.job_id == ids["dead"]
        failed = lease_next_job(past, owner=LIVE_OWNER, ttl_s=120)
        assert failed is not None
        assert failed.job_id == ids["failed"]
        fail_job(
            past, failed, error="ReadTimeout fetching … (transient: retried later)", retryable=True
        )
        live = lease_next_job(past, owner=LIVE_OWNER, ttl_s=HOUR + 600)
        assert live is not None
        assert live.job_id == ids["live"]

    out = tmp_path / "store"
    staging = out / ".staging"
    staging.mkdir(parents=True)
    orphan = str(uuid.UUID(int=0xDEAD))
    two_hours_ago = time.time() - 2 * HOUR
    for name in (*ids.values(), orphan):
        (staging / f"{name}.part").write_bytes(b"x" * 1000)
        if name != ids["young"]:
            os.utime(staging / f"{name}.part", (two_hours_ago, two_hours_ago))
    stale = {f"{ids['failed']}.part", f"{ids['dead']}.part", f"{orphan}.part"}

    seen = run_runbook("runbook-check", 3, tmp_path=tmp_path, db=db_url, out=out)
    listed = seen.of("find").stdout
    for name in (*stale, f"{ids['live']}.part"):
        assert name in listed, listed
    assert f"{ids['young']}.part" not in listed
    assert str(staging) in seen.of("du -sh").stdout
    assert seen.json("config show")["settings"]["stale_file_age_s"]["value"] == HOUR
    dry = seen.json("job cleanup")
    assert dry["dry_run"] is True
    assert {Path(path).name for path in dry["stale_parts"]} == stale
    assert all(Path(path).parent == staging for path in dry["stale_parts"])
    leases = seen.json("job leases")
    assert [(lease["job_id"], lease["seconds_left"] > 0) for lease in leases["leases"]] == [
        (ids["dead"], False),
        (ids["live"], True),
    ]
    assert len(list(staging.glob("*.part"))) == 5  # the dry run deleted nothing

    [unfinished] = run_sql(3, db_url)
    assert {row["job_id"]: row["state"] for row in unfinished} == {
        ids["dead"]: "LEASED",
        ids["failed"]: "FAILED",
        ids["live"]: "LEASED",
        ids["young"]: "PLANNED",
    }
    assert orphan not in {row["job_id"] for row in unfinished}

    if backend != "sqlite":
        return  # see REPAIRS below
    fixed = run_runbook("runbook-fix", 3, tmp_path=tmp_path, db=db_url, out=out)
    assert {Path(path).name for path in fixed.json("job cleanup")["stale_parts"]} == stale
    assert sorted(path.name for path in staging.glob("*.part")) == sorted(
        [f"{ids['live']}.part", f"{ids['young']}.part"]
    )


# --- runbook 4: a high job failure rate --------------------------------------------------------


def test_runbook_4_names_the_top_failure_reason_and_the_retry_repairs_the_budget(
    backend: str, db_url: str, tmp_path: Path, server: ArtifactServer
) -> None:
    rows = []
    for number in range(4):
        url = server.add(f"/ok/{number}.pdf", Artifact(generated_body(f"ok{number}", 8 * KiB)))
        rows.append((f"OK{number}", "pdf", url))
    rows += [(f"GONE{number}", "pdf", server.url(f"/gone/{number}.pdf")) for number in range(8)]
    for number in range(2):
        url = server.add(f"/down/{number}.pdf", Artifact(b"", status=503))
        rows.append((f"DOWN{number}", "pdf", url))
    rows.append(("REFUSED", "pdf", f"http://127.0.0.1:{free_port()}/x.pdf"))
    manifest = write_jsonl(tmp_path / "papers.jsonl", rows)
    out = tmp_path / "store"
    env = shell_env(
        tmp_path,
        DOCSTOKG_IDEMPOTENCY_MAX_ATTEMPTS="2",
        DOCSTOKG_IDEMPOTENCY_BACKOFF_BASE_S="0.01",
        DOCSTOKG_IDEMPOTENCY_BACKOFF_MAX_S="0.02",
        DOCSTOKG_IDEMPOTENCY_LEASE_TTL_S="1",  # workers poll every ttl/4
    )
    run = cli(
        "run",
        str(manifest),
        "--out",
        str(out),
        "--db",
        db_url,
        "--idempotency",
        "--workers",
        "4",
        "--json",
        cwd=tmp_path,
        env=env,
    )
    assert run.returncode == 1, run.explain()
    assert run.json()["counts"]["failed"] == 11
    gone = job_id("GONE0", "pdf", server.url("/gone/0.pdf"))

    seen = run_runbook("runbook-check", 4, tmp_path=tmp_path, db=db_url, out=out, job=gone)
    status = seen.json("job status")
    assert (status["failed_exhausted"], status["failed_retrying"]) == (11, 0)
    assert status["counts"]["DEDUPED"] == 4
    stats = seen.json("job stats")
    top = stats["top_failures"][0]
    assert (top["reason"], top["count"], top["exhausted"]) == ("http_404", 8, 8)
    assert top["example"].startswith("HTTP 404 Not Found for ")
    assert {(f["reason"], f["count"]) for f in stats["top_failures"][1:]} == {
        ("http_503", 2),
        ("connection", 1),
    }
    metrics = seen.of("job metrics").stdout
    assert 'docstokg_failed_jobs{reason="http_404"} 8.0' in metrics
    assert "docstokg_step_failures_total" in metrics
    assert "docstokg_jobs_exhausted 11.0" in metrics
    assert "docstokg_retries_total" in metrics
    shown = seen.json("job show")
    assert shown["job"]["state"] == "FAILED"
    assert shown["job"]["attempts"] == shown["job"]["max_attempts"] == 2
    assert "HTTP 404" in shown["job"]["last_error"]
    assert "permanent" in shown["job"]["last_error"]

    by_start, recent = run_sql(4, db_url)
    assert by_start[0]["error_start"].startswith("HTTP 404 Not Found for ")
    assert (by_start[0]["jobs"], by_start[0]["out_of_attempts"]) == (8, 8)
    assert sum(row["jobs"] for row in by_start) == 11
    assert len(recent) == 11
    assert {row["job_id"] for row in recent} >= {gone}

    if backend != "sqlite":
        return  # see REPAIRS below
    fixed = run_runbook("runbook-fix", 4, tmp_path=tmp_path, db=db_url, out=out)
    retried = fixed.json("job retry")
    assert len(retried["retried"]) == 11
    assert gone in retried["retried"]
    assert retried["skipped"] == {}
    after = fixed.json("job status")
    assert (after["failed_exhausted"], after["failed_retrying"]) == (0, 11)


def step_failures_total(ledger: Ledger) -> dict[str, float]:
    samples = {}
    for line in exposition(ledger).decode().splitlines():
        found = re.fullmatch(r'docstokg_step_failures_total\{kind="(\w+)"\} (\S+)', line)
        if found:
            samples[found.group(1)] = float(found.group(2))
    return samples


def test_runbook_4_alerts_on_a_failures_counter_that_never_goes_down(db_url: str) -> None:
    """Prevention says: alert on the rate of docstokg_step_failures_total.  It must not fall.

    A failure that will be retried is a failure all the same; when its step
    runs again (and succeeds) the counter has to keep it, or rate() and
    increase() read the drop as a reset and report a burst of failures.
    """
    clock = TickingClock(time.time())

    def refused() -> dict[str, Any]:
        raise RuntimeError("HTTP 503 Service Unavailable (transient: retried later)")

    with Ledger.connect(db_url, clock=clock) as ledger:
        plan_jobs(ledger, [("W1", "pdf", "https://example.org/1.pdf")])
        lease = lease_next_job(ledger, owner=LIVE_OWNER, ttl_s=60)
        assert lease is not None
        head = op_key("HEAD", lease.job_id)
        with pytest.raises(RuntimeError):
            run_effect(ledger, lease, kind="HEAD", opkey=head, effect_fn=refused)
        fail_job(ledger, lease, error="HTTP 503 Service Unavailable", retryable=True)
        before = step_failures_total(ledger)
        assert before == {"HEAD": 1.0}
        assert 'docstokg_failed_jobs{reason="http_503"} 1.0' in exposition(ledger).decode()
        clock.now += HOUR  # the backoff is over: a worker takes the job again
        again = lease_next_job(ledger, owner=LIVE_OWNER, ttl_s=60)
        assert again is not None
        run_effect(ledger, again, kind="HEAD", opkey=head, effect_fn=lambda: {"status": 200})
        after = step_failures_total(ledger)
        text_after = exposition(ledger).decode()
    assert after == before, f"docstokg_step_failures_total moved from {before} to {after}"
    assert "docstokg_failed_jobs{" not in text_after  # the gauge did fall: no job FAILED now


# --- runbook 5: many workers on one SQLite file ------------------------------------------------


PROCESSES, THREADS, JOBS_EACH = 4, 4, 2


def test_runbook_5_shows_the_writers_and_the_wal_of_a_busy_sqlite_ledger(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'store' / 'manifest.sqlite3'}"
    workers = PROCESSES * THREADS
    with Ledger.connect(db_url) as ledger:
        ledger.upgrade()
        plan_jobs(
            ledger,
            [(f"W{n}", "pdf", f"https://example.org/{n}.pdf") for n in range(workers * JOBS_EACH)],
        )
        start = threading.Barrier(workers)

        def worker(process: int, thread: int) -> list[str]:
            start.wait(timeout=30)
            owner = f"host-a:{4000 + process}:run{process}:w{thread}"
            leases = [lease_next_job(ledger, owner=owner, ttl_s=HOUR) for _ in range(JOBS_EACH)]
            return [lease.job_id for lease in leases if lease is not None]

        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [
                pool.submit(worker, process, thread)
                for process in range(PROCESSES)
                for thread in range(THREADS)
            ]
            # result() re-raises: sixteen writers on one file, and no "database is locked".
            granted = [job for future in futures for job in future.result(timeout=60)]
        assert len(set(granted)) == workers * JOBS_EACH

        # A reader that keeps its transaction open, as a forgotten shell would.
        reader = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT COUNT(*) FROM artifact_jobs").fetchone()
            seen = run_runbook(
                "runbook-check", 5, tmp_path=tmp_path, db=db_url, out=tmp_path / "store"
            )
            [[counts]] = run_sql(5, db_url)
        finally:
            reader.close()

    leases = seen.json("job leases")
    assert (leases["total"], leases["live"], leases["expired"]) == (32, 32, 0)
    assert len({lease["owner"] for lease in leases["leases"]}) == workers
    assert seen.of("journal_mode").stdout.strip() == "wal"
    listing = seen.of("ls -l").stdout
    for suffix in ("manifest.sqlite3\n", "manifest.sqlite3-wal\n", "manifest.sqlite3-shm\n"):
        assert suffix in listing, listing
    holders = seen.of("lsof").stdout
    assert re.search(rf"^\S+\s+{os.getpid()}\s", holders, re.MULTILINE), holders
    processes = seen.of("ps -o").stdout
    assert re.search(rf"^\s*{os.getpid()}\s+\S+\s+\S+\s+\S*python", processes, re.MULTILINE), (
        processes
    )
    assert "Type" in seen.of("df -T").stdout
    assert counts == {"leased_jobs": 32, "workers": workers}


# --- the JSON documents shown in AGENTS.md -----------------------------------------------------

# Maps whose keys are data (step kinds, job ids), not part of the shape.
DATA_KEYED = {"op_durations", "skipped"}


def shape(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        if key in DATA_KEYED:
            return {"*": shape(next(iter(value.values())))} if value else {}
        return {name: shape(item, name) for name, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return "scalar"


def same_shape(documented: Any, printed: Any, where: str = "") -> None:
    if isinstance(documented, dict) and documented != {}:
        assert isinstance(printed, dict), f"{where}: {printed!r} is not an object"
        assert set(documented) == set(printed), (
            f"{where}: AGENTS.md shows keys {sorted(documented)}, the command prints "
            f"{sorted(printed)}"
        )
        for name in documented:
            same_shape(documented[name], printed[name], f"{where}.{name}")
    elif isinstance(documented, list) and documented and printed:
        same_shape(documented[0], printed[0], f"{where}[]")
    else:
        assert type(documented) is type(printed) or "scalar" in (documented, printed), (
            f"{where}: AGENTS.md shows {documented!r}, the command prints {printed!r}"
        )


def documented_shape(command: str) -> Any:
    [block] = blocks("json-shape", command)
    return shape(json.loads(block.body))


def test_the_json_documents_in_agents_md_are_what_the_commands_print(
    tmp_path: Path, server: ArtifactServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = server.add("/ok.pdf", Artifact(generated_body("ok", 8 * KiB)))
    gone = server.url("/gone.pdf")
    manifest = write_jsonl(tmp_path / "m.jsonl", [("W1", "pdf", good), ("W2", "pdf", gone)])
    out = tmp_path / "store"
    db = f"sqlite:///{out / 'manifest.sqlite3'}"
    run = cli("run", str(manifest), "--out", str(out), "--idempotency", cwd=tmp_path,
              env=shell_env(tmp_path))  # fmt: skip
    assert run.returncode == 1, run.explain()
    stored, failed = job_id("W1", "pdf", good), job_id("W2", "pdf", gone)
    with Ledger.connect(db) as ledger:
        plan_jobs(ledger, [("W3", "pdf", "https://example.org/3.pdf")])
        assert lease_next_job(ledger, owner=LIVE_OWNER, ttl_s=600) is not None
    stray = out / ".staging" / f"{uuid.UUID(int=7)}.part"
    stray.write_bytes(b"x")
    os.utime(stray, (0, 0))
    [artifact] = [path for path in (out / "artifacts").rglob("*") if path.is_file()]
    artifact.write_bytes(b"\0" * artifact.stat().st_size)  # for job verify to find

    # In this process (the runbook tests run the same commands as subprocesses).
    for name in [name for name in os.environ if name.startswith("DOCSTOKG_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args: str) -> Ran:
        result = runner.invoke(app, list(args))
        return Ran(" ".join(args), result.exit_code, result.stdout, result.stderr)

    ledger_of_out = ("--out", str(out), "--json")
    printed: dict[str, Ran] = {
        "config show": invoke("config", "show", "--json"),
        "db upgrade": invoke("db", "upgrade", "--db", f"sqlite:///{tmp_path / 'new.sqlite3'}",
                             "--json"),
        "db current": invoke("db", "current", "--db", db, "--json"),
        "job status": invoke("job", "status", *ledger_of_out),
        "job leases": invoke("job", "leases", *ledger_of_out),
        "job stats": invoke("job", "stats", *ledger_of_out),
        "job show": invoke("job", "show", stored, *ledger_of_out),
        "job cleanup": invoke("job", "cleanup", "--staging", str(out / ".staging"), "--dry-run",
                              *ledger_of_out),
        "job retry": invoke("job", "retry", failed, str(uuid.UUID(int=0)), *ledger_of_out),
        "job vacuum": invoke("job", "vacuum", "--older-than", "1s", *ledger_of_out),
        "job verify": invoke("job", "verify", *ledger_of_out),
    }  # fmt: skip
    for command, result in printed.items():
        failing = command in ("job retry", "job verify")
        assert result.returncode == (1 if failing else 0), result.explain()
        document = result.json()
        assert document, result.explain()
        same_shape(documented_shape(command), shape(document), command)
    # The examples were filled: every list and data-keyed map above had an element.
    assert printed["job leases"].json()["leases"]
    assert printed["job stats"].json()["top_failures"]
    assert printed["job stats"].json()["op_durations"]
    assert printed["job show"].json()["ops"]
    assert printed["job cleanup"].json()["stale_parts"]
    assert printed["job retry"].json()["retried"] == [failed]
    assert printed["job retry"].json()["skipped"]
    assert printed["job verify"].json()["bad"]


# --- runbook 6: a stored file missing or corrupt ------------------------------------------------


def test_runbook_6_finds_the_damaged_files_and_the_repair_lets_a_run_restore_them(
    backend: str, db_url: str, tmp_path: Path, server: ArtifactServer
) -> None:
    bodies = [generated_body(f"rb6-{n}", 4 * KiB + n) for n in range(3)]
    rows = [("W", str(n), server.add(f"/rb6-{n}.pdf", Artifact(body))) for n, body in
            enumerate(bodies)]  # fmt: skip
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    out = tmp_path / "store"
    ran = cli("run", str(manifest), "--out", str(out), "--db", db_url, "--idempotency",
              cwd=tmp_path, env=shell_env(tmp_path))  # fmt: skip
    assert ran.returncode == 0, ran.explain()
    ids = [job_id(*row) for row in rows]
    with Ledger.connect(db_url) as ledger, ledger.unit_of_work(read_only=True) as uow:
        final_paths = {job.job_id: str(job.final_path) for job in uow.jobs.get_many(ids)}
    corrupt, missing = (out / final_paths[ids[n]] for n in (0, 1))
    corrupt.write_bytes(b"\0" * corrupt.stat().st_size)
    missing.unlink()

    seen = run_runbook("runbook-check", 6, tmp_path=tmp_path, db=db_url, out=out, job=ids[0])
    verified = json.loads(seen.of("job verify").stdout.split("job verify exit")[0])
    problems = {bad["job_id"]: bad["problem"] for bad in verified["bad"]}
    assert problems.keys() == {ids[0], ids[1]}
    assert problems[ids[0]].startswith("sha256 ")
    assert problems[ids[1]] == "missing"
    assert "job verify exit 1" in seen.of("job verify").stdout
    shown = seen.json("job show")
    assert shown["job"]["sha256"] == hashlib.sha256(bodies[0]).hexdigest()
    assert len(seen.of("cat").stdout.strip()) == 32
    [stored] = run_sql(6, db_url)
    assert {row["job_id"] for row in stored} == set(ids)

    if backend != "sqlite":
        return  # see REPAIRS above
    fixed = run_runbook("runbook-fix", 6, tmp_path=tmp_path, db=db_url, out=out)
    repaired = json.loads(fixed.of("job verify").stdout.split("requeued the jobs listed")[0])
    assert sorted(repaired["requeued"]) == sorted(ids[:2])
    assert fixed.json("job status")["counts"]["FAILED"] == 2
    again = cli("run", str(manifest), "--out", str(out), "--db", db_url, "--idempotency",
                cwd=tmp_path, env=shell_env(tmp_path))  # fmt: skip
    assert again.returncode == 0, again.explain()
    assert corrupt.read_bytes() == bodies[0]
    assert missing.read_bytes() == bodies[1]
    assert [server.stats(f"/rb6-{n}.pdf").get_requests for n in range(3)] == [2, 2, 1]


# --- runbook 7: the ledger database went away mid-run ------------------------------------------

OUTAGE_BODY = "/rb7/large.bin"
OUTAGE_BYTES = 2 * 1024 * 1024
OUTAGE_PAUSE_AT = 1024 * 1024


def test_runbook_7_a_run_whose_database_stopped_ends_cleanly_and_the_next_run_finishes(
    tmp_path: Path, server: ArtifactServer
) -> None:
    """PostgreSQL stopped mid-download: exit 1, one line, parts kept; once back, a run ends it.

    The cluster is the test's own (the session's is shared by other tests),
    stopped with ``pg_ctl stop -m fast`` while the large body is held at the
    server's pause point, so the outage always falls inside its STREAM step.
    The checks that need no database are run while it is down, all of them
    once it is back, as an operator would.
    """
    body = generated_body("rb7", OUTAGE_BYTES)
    large = server.add(OUTAGE_BODY, Artifact(body, pause_after=OUTAGE_PAUSE_AT))
    rows = [("W-large", "bin", large)]
    rows += [(f"W{n}", "pdf", server.add(f"/rb7/{n}.pdf", Artifact(generated_body(f"rb7-{n}",
             8 * KiB)))) for n in range(3)]  # fmt: skip
    manifest = write_jsonl(tmp_path / "papers.jsonl", rows)
    out = tmp_path / "store"
    big = job_id(*rows[0])
    with ThrowawayPostgres() as cluster:
        db = cluster.create_database("ledger")
        env = shell_env(tmp_path, DOCSTOKG_IDEMPOTENCY_DB_OUTAGE_S="1",
                        DOCSTOKG_IDEMPOTENCY_LEASE_TTL_S="2")  # fmt: skip
        args = [sys.executable, "-m", "docstokg", "run", str(manifest), "--out", str(out),
                "--db", db, "--idempotency", "--json"]  # fmt: skip
        with subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) as running:  # fmt: skip
            try:
                assert server.wait_paused(OUTAGE_BODY, timeout=30), "the download never paused"
                cluster.pause()
            finally:
                server.release(OUTAGE_BODY)
            stdout, stderr = running.communicate(timeout=COMMAND_TIMEOUT_S)
        stopped = Ran("run", running.returncode, stdout, stderr)

        # The symptom: a summary, exit 1, and one error line naming the database.
        assert stopped.returncode == 1, stopped.explain()
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, stopped.explain()
        where = f"127.0.0.1:{cluster.port}/ledger"
        assert re.match(rf"error: the ledger database \S*{re.escape(where)} stayed unreachable "
                        r"for \d+ s \(db_outage_s = 1\)", errors[0]), errors[0]  # fmt: skip
        summary = stopped.json()
        assert "stayed unreachable" in summary["ledger_error"]
        assert (summary["exit_code"], summary["interrupted"]) == (1, False)
        [large_job] = [job for job in summary["jobs"] if job["job_id"] == big]
        assert large_job["ended"] is False

        # While it is down: the database is named, the kept part is seen.
        while_down = [command for command in commands_of("runbook-check", 7)
                      if "db current" in command or "ls -l" in command]  # fmt: skip
        down = run_commands(while_down, cwd=tmp_path, env=shell_env(tmp_path, DB=db, OUT=str(out)))
        assert "db current exit 1" in down.of("db current").stdout
        assert where in down.of("db current").stderr
        assert f"{big}.1.part\n" in down.of("ls -l").stdout

        cluster.restart()  # the database is back, as it was
        seen = run_runbook("runbook-check", 7, tmp_path=tmp_path, db=db, out=out, job=big)
        assert seen.json("db current")["is_current"] is True
        assert f"{big}.1.part.json\n" in seen.of("ls -l").stdout
        assert seen.json("config show")["settings"]["db_outage_s"]["value"] == 120.0
        leases = seen.json("job leases")
        held = {lease["job_id"]: lease["owner"] for lease in leases["leases"]}
        assert f":{running.pid}:" in held[big]  # the stopped run could not hand it back
        shown = seen.json("job show")
        assert (shown["job"]["state"], shown["job"]["attempts"]) == ("HEAD_DONE", 0)
        assert [(op["kind"], op["status"]) for op in shown["ops"]] == [
            ("HEAD", "SUCCEEDED"),
            ("STREAM", "IN_PROGRESS"),
        ]
        unfinished, lost = run_sql(7, db)
        assert big in {row["job_id"] for row in unfinished}
        assert lost == []

        fixed = run_runbook("runbook-fix", 7, tmp_path=tmp_path, db=db, out=out)
        assert fixed.json("db current")["is_current"] is True
        assert fixed.json("job status")["total"] == 4
        # ... and the run the Resolution shows finishes the work.
        again = cli("run", str(manifest), "--out", str(out), "--db", db, "--idempotency",
                    "--json", cwd=tmp_path, env=shell_env(tmp_path))  # fmt: skip
        assert again.returncode == 0, again.explain()
        assert again.json()["counts"]["stored"] == 4
        unfinished, lost = run_sql(7, db)

    assert unfinished == []
    # The job the stopped run held was taken over when its lease expired: one attempt.
    assert {row["job_id"]: (row["attempts"], row["last_error"]) for row in lost}[big] == (
        1,
        "worker lost during STREAM (lease expired)",
    )
    stored = [path for path in (out / "artifacts").rglob("*") if path.is_file()]
    assert hashlib.sha256(body).hexdigest() in {path.name for path in stored}
    assert list((out / ".staging").glob("*.part")) == []
    stats = server.stats(OUTAGE_BODY)
    assert (stats.full_gets, len(stats.range_headers)) == (1, 1)  # resumed, not fetched again
