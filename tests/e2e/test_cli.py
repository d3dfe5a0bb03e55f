"""The ``docstokg`` command line as a user runs it: real subprocesses, real databases.

Every command runs in its own process, through ``python -m docstokg`` or the
``docstokg`` console script installed next to the test interpreter, with an
environment the test controls (``DOCSTOKG_DB_URL`` only where a test sets it).
Tests that touch a database run on a SQLite file and on the throwaway
PostgreSQL of ``tests/conftest.py``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from docstokg.ledger.migrate import head_revision, upgrade
from docstokg.testing.server import generated_body
from tests.cli_kit import cli_env, error_line, explain, sqlite_path
from tests.dbtools import execute_sql, table_names

pytestmark = pytest.mark.slow

SCRIPT = Path(sys.executable).parent / "docstokg"
LAUNCHERS = {
    "python-m": [sys.executable, "-m", "docstokg"],
    "script": [str(SCRIPT)],
}
HEAD = head_revision()


def run(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    launcher: str = "python-m",
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LAUNCHERS[launcher], *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=cli_env() if env is None else env,
        check=False,
    )


def run_json(*args: str, cwd: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run(*args, "--json", cwd=cwd, env=env)
    assert result.returncode == 0, explain(result)
    document: dict[str, Any] = json.loads(result.stdout)
    return document


@pytest.fixture
def sql(empty_db_url: str) -> Callable[[str], list[tuple[Any, ...]]]:
    """Run SQL against the test database from the test process (setup and checks only)."""
    return functools.partial(execute_sql, empty_db_url)


# --- db upgrade / db current -------------------------------------------------------------


def test_upgrade_creates_the_schema_and_current_reports_head(
    empty_db_url: str, backend: str, tmp_path: Path
) -> None:
    first = run("db", "upgrade", "--db", empty_db_url, cwd=tmp_path)
    assert first.returncode == 0, explain(first)
    assert "Upgraded from an empty database" in first.stdout
    assert HEAD in first.stdout
    assert "schema_version: 9" in first.stdout

    current = run_json("db", "current", "--db", empty_db_url, cwd=tmp_path)
    assert current == {"revision": HEAD, "head": HEAD, "is_current": True, "schema_version": "9"}
    assert {"_meta", "artifact_jobs", "artifact_ops", "alembic_version"} <= table_names(
        empty_db_url
    )

    again = run("db", "upgrade", "--db", empty_db_url, cwd=tmp_path)
    assert again.returncode == 0, explain(again)
    assert "nothing to do" in again.stdout
    assert f"Already at revision {HEAD}" in again.stdout

    again_json = run_json("db", "upgrade", "--db", empty_db_url, cwd=tmp_path)
    assert again_json["from_revision"] == again_json["to_revision"] == HEAD
    assert again_json["adopted"] is False

    still = run_json("db", "current", "--db", empty_db_url, cwd=tmp_path)
    assert still == current
    if backend == "postgresql":  # the short form means psycopg 3
        short = empty_db_url.replace("postgresql+psycopg://", "postgresql://")
        assert short != empty_db_url
        assert run_json("db", "current", "--db", short, cwd=tmp_path) == current


def test_upgrade_json_output_shape(empty_db_url: str, tmp_path: Path) -> None:
    result = run("db", "upgrade", "--db", empty_db_url, "--json", cwd=tmp_path)
    assert result.returncode == 0, explain(result)
    document = json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert document == {
        "from_revision": None,
        "to_revision": HEAD,
        "schema_version": "9",
        "adopted": False,
    }


def test_upgrade_of_an_already_current_database_changes_nothing(
    db_url: str, tmp_path: Path
) -> None:
    before = run_json("db", "current", "--db", db_url, cwd=tmp_path)
    assert before["is_current"] is True
    document = run_json("db", "upgrade", "--db", db_url, cwd=tmp_path)
    assert document == {
        "from_revision": HEAD,
        "to_revision": HEAD,
        "schema_version": "9",
        "adopted": False,
    }
    assert run_json("db", "current", "--db", db_url, cwd=tmp_path) == before


def test_current_human_output_of_a_current_database(db_url: str, tmp_path: Path) -> None:
    result = run("db", "current", "--db", db_url, cwd=tmp_path, launcher="script")
    assert result.returncode == 0, explain(result)
    rows = {line.split()[0]: line.split()[-1] for line in result.stdout.splitlines() if line}
    assert rows["revision"] == HEAD
    assert rows["head"] == HEAD
    assert rows["up"] == "yes"
    assert rows["schema_version"] == "9"


def test_current_of_an_empty_database_reports_not_current_and_changes_nothing(
    empty_db_url: str, backend: str, tmp_path: Path
) -> None:
    if backend == "sqlite":
        sqlite3.connect(sqlite_path(empty_db_url)).close()  # an existing, empty database file
    document = run_json("db", "current", "--db", empty_db_url, cwd=tmp_path)
    assert document == {"revision": None, "head": HEAD, "is_current": False, "schema_version": None}

    human = run("db", "current", "--db", empty_db_url, cwd=tmp_path)
    assert human.returncode == 0, explain(human)
    assert "run `docstokg db upgrade`" in human.stdout
    assert table_names(empty_db_url) == set()


def test_upgrade_adopts_a_pre_alembic_v3_ledger_keeping_its_rows(
    empty_db_url: str, sql: Any, tmp_path: Path
) -> None:
    # What the hand-rolled v3 ledger left behind: the baseline's tables, no alembic_version.
    upgrade(empty_db_url, "0001_v3_baseline")
    sql("DROP TABLE alembic_version")
    sql(
        "INSERT INTO artifact_jobs (job_id, work_id, artifact_id, canonical_url, state, "
        "created_at, updated_at, idempotency_key) VALUES ('job-1', 'W001', 'A1', "
        "'https://example.org/1/1.pdf', 'FINALIZED', 1.0, 2.0, 'key-1')"
    )
    before = run_json("db", "current", "--db", empty_db_url, cwd=tmp_path)
    assert before["revision"] is None
    assert before["schema_version"] == "3"

    document = run_json("db", "upgrade", "--db", empty_db_url, cwd=tmp_path)
    assert document == {
        "from_revision": None,
        "to_revision": HEAD,
        "schema_version": "9",
        "adopted": True,
    }
    assert sql("SELECT job_id, state FROM artifact_jobs") == [("job-1", "FINALIZED")]
    assert run_json("db", "current", "--db", empty_db_url, cwd=tmp_path)["is_current"] is True


def test_upgrade_refuses_an_unknown_revision_and_changes_nothing(
    db_url: str, sql: Any, tmp_path: Path
) -> None:
    sql("UPDATE alembic_version SET version_num = '9999_from_a_newer_docstokg'")
    result = run("db", "upgrade", "--db", db_url, cwd=tmp_path)
    line = error_line(result, 1)
    assert "'9999_from_a_newer_docstokg'" in line
    assert "left unchanged" in line
    assert sql("SELECT version_num FROM alembic_version") == [("9999_from_a_newer_docstokg",)]


def test_upgrade_refuses_foreign_tables_of_the_ledgers_names(
    empty_db_url: str, backend: str, sql: Any, tmp_path: Path
) -> None:
    sql("CREATE TABLE artifact_jobs (id INTEGER PRIMARY KEY, payload TEXT)")
    sql("INSERT INTO artifact_jobs (id, payload) VALUES (1, 'not ours')")
    before = sqlite_path(empty_db_url).read_bytes() if backend == "sqlite" else b""

    result = run("db", "upgrade", "--db", empty_db_url, cwd=tmp_path)
    line = error_line(result, 1)
    assert "artifact_jobs" in line
    assert "left unchanged" in line
    assert table_names(empty_db_url) == {"artifact_jobs"}
    assert sql("SELECT id, payload FROM artifact_jobs") == [(1, "not ours")]
    if backend == "sqlite":
        assert sqlite_path(empty_db_url).read_bytes() == before


def test_current_of_a_database_from_a_newer_docstokg_advises_upgrading_docstokg(
    db_url: str, sql: Any, tmp_path: Path
) -> None:
    sql("UPDATE alembic_version SET version_num = '9999_from_a_newer_docstokg'")
    human = run("db", "current", "--db", db_url, cwd=tmp_path)
    assert human.returncode == 0, explain(human)
    text = " ".join(human.stdout.split())
    assert "revision 9999_from_a_newer_docstokg is newer than this docstokg knows" in text
    assert "upgrade docstokg itself" in text
    assert "docstokg db upgrade" not in text  # which would refuse that database
    refused = run("db", "upgrade", "--db", db_url, cwd=tmp_path)
    assert "upgrade docstokg" in error_line(refused, 1)  # the same advice


# --- errors a user meets -------------------------------------------------------------------


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_current_on_a_missing_sqlite_file_fails_and_creates_nothing(
    launcher: str, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "ledger.sqlite3"
    result = run("db", "current", "--db", f"sqlite:///{missing}", cwd=tmp_path, launcher=launcher)
    line = error_line(result, 1)
    assert str(missing) in line
    assert "point --db at the ledger your runs use" in line
    assert "db upgrade" not in line  # an empty ledger is not what a missing one needs
    assert result.stdout == ""
    assert not missing.exists()
    assert not missing.parent.exists()


@pytest.mark.parametrize("command", ["upgrade", "current"])
def test_a_file_that_is_not_sqlite_is_refused_byte_for_byte_unchanged(
    command: str, tmp_path: Path
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    impostor = folder / "ledger.sqlite3"
    content = b"%PDF-1.7\n" + bytes(range(256)) * 32 + b"\n%%EOF\n"
    impostor.write_bytes(content)

    # A narrow terminal: the error must still be one line.
    env = cli_env(columns=40)
    result = run("db", command, "--db", f"sqlite:///{impostor}", cwd=tmp_path, env=env)
    line = error_line(result, 1)
    assert str(impostor) in line
    assert "not a SQLite database" in line
    assert impostor.read_bytes() == content
    assert sorted(p.name for p in folder.iterdir()) == ["ledger.sqlite3"]  # no -wal, -journal


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("mysql://u@h/db", ["'mysql://u@h/db'", "'mysql'"]),
        ("postgresql+asyncpg://u@h/db", ["'asyncpg'", "postgresql+psycopg://"]),
        ("sqlite://", ["in-memory", "sqlite:///PATH"]),
        ("not a database url", ["'not a database url'"]),
    ],
)
def test_an_unsupported_url_is_a_usage_error(url: str, named: list[str], tmp_path: Path) -> None:
    for command in ("upgrade", "current"):
        result = run("db", command, "--db", url, cwd=tmp_path)
        line = error_line(result, 2)
        for fragment in named:
            assert fragment in line, explain(result)
    assert list(tmp_path.iterdir()) == []


def test_an_unsupported_url_does_not_print_its_password(tmp_path: Path) -> None:
    result = run("db", "upgrade", "--db", "mysql://user:hunter2@h/db", cwd=tmp_path)
    line = error_line(result, 2)
    assert "mysql://user:***@h/db" in line
    assert "hunter2" not in result.stdout + result.stderr


def test_an_unreachable_postgresql_server_is_a_clean_error(tmp_path: Path) -> None:
    # A port that is bound but not listening: connecting is refused at once.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        url = f"postgresql+psycopg://ledger:s3cret-pw@127.0.0.1:{port}/ledger"
        for command in ("upgrade", "current"):
            result = run("db", command, "--db", url, cwd=tmp_path)
            assert result.returncode == 1, explain(result)
            assert "Traceback" not in result.stderr, explain(result)
            assert result.stderr.startswith("error: cannot use the ledger database "), explain(
                result
            )
            assert f"ledger:***@127.0.0.1:{port}/ledger" in result.stderr
            assert "s3cret-pw" not in result.stdout + result.stderr


def test_a_password_in_the_query_of_an_unreachable_url_is_not_printed(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        url = f"postgresql+psycopg://ledger@127.0.0.1:{port}/ledger?password=s3cret-pw"
        for command in ("upgrade", "current"):
            result = run("db", command, "--db", url, cwd=tmp_path)
            line = error_line(result, 1)
            assert "s3cret-pw" not in result.stdout + result.stderr
            assert f"127.0.0.1:{port}/ledger?password=***" in line


def test_config_show_masks_the_database_password(tmp_path: Path) -> None:
    config = tmp_path / "idempotency.yaml"
    config.write_text(
        "idempotency:\n  db_url: postgresql+psycopg://ledger:from-file-pw@db/docstokg\n",
        encoding="utf-8",
    )
    from_file = run("config", "show", "--config", str(config), cwd=tmp_path)
    env = cli_env(DOCSTOKG_IDEMPOTENCY_DB_URL="postgresql://ledger@db/x?password=from-env-pw")
    from_env = run("config", "show", "--json", cwd=tmp_path, env=env)

    assert from_file.returncode == 0, explain(from_file)
    assert "postgresql+psycopg://ledger:***@db/docstokg" in from_file.stdout
    assert "from-file-pw" not in from_file.stdout + from_file.stderr
    assert from_env.returncode == 0, explain(from_env)
    assert json.loads(from_env.stdout)["settings"]["db_url"]["value"] == (
        "postgresql://ledger@db/x?password=***"
    )
    assert "from-env-pw" not in from_env.stdout + from_env.stderr


# --- where the URL comes from --------------------------------------------------------------


@pytest.mark.parametrize("command", ["upgrade", "current"])
def test_db_omitted_and_no_environment_variable_is_a_usage_error(
    command: str, tmp_path: Path
) -> None:
    result = run("db", command, cwd=tmp_path)
    assert result.returncode == 2, explain(result)
    assert "Traceback" not in result.stderr
    assert "--db" in result.stderr
    assert "DOCSTOKG_DB_URL" in result.stderr
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_db_url_from_the_environment(empty_db_url: str, tmp_path: Path) -> None:
    env = cli_env(DOCSTOKG_DB_URL=empty_db_url)
    upgraded = run_json("db", "upgrade", cwd=tmp_path, env=env)
    assert upgraded["from_revision"] is None
    assert upgraded["to_revision"] == HEAD

    from_env = run_json("db", "current", cwd=tmp_path, env=env)
    assert from_env["revision"] == HEAD
    assert from_env["is_current"] is True
    # The environment variable really named that database: --db agrees with it.
    assert run_json("db", "current", "--db", empty_db_url, cwd=tmp_path) == from_env


def test_db_option_wins_over_the_environment(db_url: str, tmp_path: Path) -> None:
    env = cli_env(DOCSTOKG_DB_URL="mysql://u@h/db")
    assert run("db", "current", cwd=tmp_path, env=env).returncode == 2
    document = run_json("db", "current", "--db", db_url, cwd=tmp_path, env=env)
    assert document["revision"] == HEAD


# --- demo and help -------------------------------------------------------------------------


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_demo_interrupts_resumes_and_stores_everything_once(launcher: str, tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    result = run("demo", "--dir", str(demo_dir), cwd=tmp_path, launcher=launcher)
    assert result.returncode == 0, explain(result)
    assert "Interrupting run 1" in result.stdout
    resumed = re.search(r"resumed with Range: bytes=(\d+)-", result.stdout)
    assert resumed is not None, result.stdout
    assert int(resumed.group(1)) > 0
    assert "Idempotency system enabled - initializing job tracking" in result.stderr
    assert "scheme 'ftp' is not http or https" in result.stdout  # the malformed row
    assert list((demo_dir / ".staging").glob("*.part")) == []

    ledger_file = demo_dir / "manifest.sqlite3"
    current = run_json("db", "current", "--db", f"sqlite:///{ledger_file}", cwd=tmp_path)
    assert current["is_current"] is True
    assert current["schema_version"] == "9"
    states = dict(
        execute_sql(
            f"sqlite:///{ledger_file}",
            "SELECT state, count(*) FROM artifact_jobs GROUP BY state",
        )
    )
    # Six distinct contents stored, one mirror of paper 2, one 404.
    assert states == {"DEDUPED": 7, "SKIPPED_DUPLICATE": 1, "FAILED": 1}
    finalized = execute_sql(
        f"sqlite:///{ledger_file}",
        "SELECT job_id, count(*) FROM artifact_ops WHERE op_type = 'FINALIZE' "
        "AND status = 'SUCCEEDED' GROUP BY job_id",
    )
    assert len(finalized) == 8
    assert {count for _, count in finalized} == {1}
    stored = sorted(path.name for path in (demo_dir / "artifacts").rglob("*") if path.is_file())
    assert len(stored) == 7  # the duplicate's bytes are not kept twice
    large = hashlib.sha256(generated_body("dataset", 8 * 1024 * 1024)).hexdigest()
    assert large in stored


def test_demo_default_directory_is_relative_to_the_working_directory(tmp_path: Path) -> None:
    result = run("demo", cwd=tmp_path, launcher="script")
    assert result.returncode == 0, explain(result)
    assert (tmp_path / "demo-output" / "manifest.sqlite3").is_file()


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_top_level_help(launcher: str, tmp_path: Path) -> None:
    result = run("--help", cwd=tmp_path, launcher=launcher)
    assert result.returncode == 0, explain(result)
    assert "Usage:" in result.stdout
    for command in ("db", "demo"):
        assert any(line.split()[1:2] == [command] for line in result.stdout.splitlines()), (
            f"{command!r} not listed:\n{result.stdout}"
        )


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
@pytest.mark.parametrize("command", ["upgrade", "current"])
def test_db_command_help_mentions_the_db_option(
    command: str, launcher: str, tmp_path: Path
) -> None:
    result = run("db", command, "--help", cwd=tmp_path, launcher=launcher)
    assert result.returncode == 0, explain(result)
    assert "--db" in result.stdout
    assert "DOCSTOKG_DB_URL" in result.stdout
    assert "--json" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_demo_refuses_a_folder_it_did_not_make_and_touches_nothing(tmp_path: Path) -> None:
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work\n", encoding="utf-8")

    result = run("demo", "--dir", str(precious), cwd=tmp_path)

    line = error_line(result, 2)
    assert f"--dir {precious} is not empty and was not made by `docstokg demo`" in line
    assert ".docstokg-demo" in line
    assert "give a new or empty folder" in line
    assert sorted(p.name for p in precious.iterdir()) == ["chapter1.tex"]
    empty = run("demo", "--dir", "", cwd=tmp_path)
    assert empty.returncode == 2, explain(empty)
    assert "Invalid value for '--dir'" in empty.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]


def test_demo_empties_a_folder_it_made_before(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    demo_dir.mkdir()
    (demo_dir / ".docstokg-demo").write_text("made by an earlier demo\n", encoding="utf-8")
    (demo_dir / "left-over.txt").write_text("from the earlier demo\n", encoding="utf-8")

    result = run("demo", "--dir", str(demo_dir), cwd=tmp_path)

    assert result.returncode == 0, explain(result)
    assert not (demo_dir / "left-over.txt").exists()
    assert (demo_dir / ".docstokg-demo").is_file()
    assert (demo_dir / "manifest.sqlite3").is_file()
