"""The ledger URL's password never reaches a terminal or a log; its masked form does.

A mutation test turned off the masking of the ledger URL in the run's start
line ("Idempotency system enabled ... database %s") and no test noticed: the
command line masks every log record again, so only a program that uses
docstokg as a library (its own log handlers) saw the password.  Both are
checked here: the library's log records at INFO, and every line ``docstokg
run``, ``db current`` and ``job status`` print, including an error naming a
database that is not there.

PostgreSQL carries the password in the URL's userinfo (the test cluster
trusts local connections, so any password is accepted); SQLite carries it as
a ``password`` parameter of a URI filename, which SQLite ignores.
"""

from __future__ import annotations

import json
import logging
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from docstokg.redact import MASK, mask_url
from docstokg.run.runner import ENABLED_MESSAGE
from docstokg.testing.server import Artifact, ArtifactServer, generated_body
from tests.e2e.test_job_cli import docstokg
from tests.pgcluster import ThrowawayPostgres
from tests.runner_kit import make_config, run_download, write_manifest

SECRET = "Pw9f3c1bSECRETe7"
BODY = generated_body("no-password", 2_000)


def _with_password(url: str) -> str:
    return make_url(url).set(password=SECRET).render_as_string(hide_password=False)


def _sqlite_url(path: Path) -> str:
    return f"sqlite:///file:{path}?uri=true&password={SECRET}"


@pytest.fixture
def secret_db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A ledger URL (not yet upgraded) that carries ``SECRET`` as its password."""
    if backend == "sqlite":
        yield _sqlite_url(tmp_path / "ledger.sqlite3")
        return
    server: ThrowawayPostgres = request.getfixturevalue("postgres")
    name = f"secret_{uuid.uuid4().hex[:12]}"
    url = _with_password(server.create_database(name))
    yield url
    server.drop_database(name)


class _Records(logging.Handler):
    """Every record of the ``docstokg`` logger, as its handlers would format it (no filter)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def docstokg_log() -> Iterator[_Records]:
    """What a program using docstokg as a library logs at INFO, through its own handler."""
    logger = logging.getLogger("docstokg")
    handler = _Records()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _assert_no_secret(lines: list[str], where: str) -> None:
    leaks = [line for line in lines if SECRET in line]
    assert not leaks, f"the ledger password appears in {where}: {leaks}"


def test_a_library_run_logs_the_ledger_url_masked(
    server: ArtifactServer, tmp_path: Path, secret_db_url: str, docstokg_log: _Records
) -> None:
    url = server.add("/a.bin", Artifact(body=BODY))
    manifest = write_manifest(tmp_path / "manifest.jsonl", [("W1", "pdf", url)])

    summary = run_download(manifest, tmp_path / "out", make_config(), db_url=secret_db_url)

    assert summary.counts["stored"] == 1
    _assert_no_secret(docstokg_log.lines, "the log")
    start = [line for line in docstokg_log.lines if line.startswith(ENABLED_MESSAGE)]
    assert len(start) == 1, docstokg_log.lines
    assert f"database {mask_url(secret_db_url)})" in start[0]
    document = json.dumps(summary.to_json())
    assert SECRET not in document
    assert summary.to_json()["db_url"] == mask_url(secret_db_url)


def _output_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stdout.splitlines() + result.stderr.splitlines()


def test_no_command_prints_the_ledger_password(
    server: ArtifactServer, tmp_path: Path, secret_db_url: str, backend: str
) -> None:
    url = server.add("/a.bin", Artifact(body=BODY))
    write_manifest(tmp_path / "manifest.jsonl", [("W1", "pdf", url)])
    masked = mask_url(secret_db_url)
    assert MASK in masked
    assert SECRET not in masked

    run = docstokg(
        "run", "manifest.jsonl", "--out", "out", "--idempotency", "--db", secret_db_url,
        "--json", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["db_url"] == masked
    assert f"database {masked})" in run.stderr  # the start line, at INFO on stderr

    current = docstokg("db", "current", "--db", secret_db_url, cwd=tmp_path)
    status = docstokg("job", "status", "--db", secret_db_url, cwd=tmp_path)
    assert (current.returncode, status.returncode) == (0, 0), current.stderr + status.stderr

    missing = _missing_database(secret_db_url, backend, tmp_path)
    absent = docstokg("job", "status", "--db", missing, cwd=tmp_path)
    assert absent.returncode != 0, absent.stdout
    assert "Traceback" not in absent.stderr, absent.stderr

    for name, result in {"run": run, "db current": current, "job status": status,
                         "job status (missing database)": absent}.items():  # fmt: skip
        _assert_no_secret(_output_lines(result), f"the output of {name}")


def _missing_database(url: str, backend: str, tmp_path: Path) -> str:
    """A URL of the same kind, with the same password, naming a database that does not exist."""
    if backend == "sqlite":
        return _sqlite_url(tmp_path / "no-such-folder" / "ledger.sqlite3")
    return make_url(url).set(database="no_such_database").render_as_string(hide_password=False)
