"""The hostile-input catalogue: one table of bad inputs, and the machinery it needs.

Each :class:`Case` is one row: what is fed in (files, a misbehaving loopback
server, environment), the command line, the exit code and message expected,
and what must be on disk afterwards.  ``test_hostile_catalogue.py`` runs them.

Commands run in-process (``docstokg.cli.main`` under Click's output capture)
because 150 subprocesses would cost minutes; ``main`` is the console entry
point itself, so docstokg's own errors are turned into one line and an exit
code exactly as for a user.  An exception escaping ``main`` is recorded as
exit code :data:`CRASHED` with its traceback in the output, so a case fails
with the traceback in view instead of aborting the test.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from docstokg.cli import main
from docstokg.cli.output import err, out
from docstokg.keys import job_id_for, job_key
from docstokg.testing.server import Artifact, ArtifactServer, Fault, generated_body
from tests.cli_kit import free_port
from tests.runner_kit import sha256_of

CRASHED = -1
"""The exit code recorded when an exception escaped the command (a traceback)."""

ENV_PREFIX = "DOCSTOKG_"
FAST_ENV: Mapping[str, str] = {
    # Retries within a case take milliseconds, not the default seconds.
    "DOCSTOKG_IDEMPOTENCY_BACKOFF_BASE_S": "0.01",
    "DOCSTOKG_IDEMPOTENCY_BACKOFF_MAX_S": "0.05",
    "DOCSTOKG_IDEMPOTENCY_MAX_ATTEMPTS": "3",
    "DOCSTOKG_IDEMPOTENCY_READ_TIMEOUT_S": "10",
}
OK_BODY = generated_body("ok", 4096)
OTHER_BODY = generated_body("other", 4096)
MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class Result:
    """What one command did: its exit code and everything it printed."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def explain(self) -> str:
        return f"exit {self.exit_code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"

    def summary(self) -> dict[str, Any]:
        """The ``--json`` document on stdout."""
        document: dict[str, Any] = json.loads(self.stdout)
        return document


@dataclass
class World:
    """One case's folder, server and remembered values; ``invoke`` runs the command line."""

    tmp: Path
    server: ArtifactServer
    env: dict[str, str | None]
    values: dict[str, str] = field(default_factory=dict)
    digests: dict[str, str | None] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    @property
    def artifacts(self) -> Path:
        return self.out / "artifacts"

    def fill(self, text: str) -> str:
        """``text`` with {base}, {tmp}, {out}, {db} and remembered values put in.

        Plain replacement, not ``str.format``: manifests are full of JSON braces.
        """
        tokens = {
            "base_host": self.server.base_url.removeprefix("http://"),
            "base": self.server.base_url,
            "tmp": str(self.tmp),
            "out": str(self.out),
            "db": f"sqlite:///{self.tmp / 'ledger.sqlite3'}",
            **self.values,
        }
        for name, value in tokens.items():
            text = text.replace("{" + name + "}", value)
        return text

    def invoke(self, args: Sequence[str], env: Mapping[str, str] | None = None) -> Result:
        """Run ``docstokg ARGS`` in this process, as its console entry point would."""
        runner = CliRunner()
        merged = {**self.env, **(env or {})}
        with runner.isolation(env=merged) as (stdout, stderr, _), _wide_consoles():
            argv = sys.argv
            sys.argv = ["docstokg", *(self.fill(arg) for arg in args)]
            code = 0
            try:
                main()
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except BaseException:  # noqa: BLE001 - a crash is a result the case reports
                code = CRASHED
                sys.stderr.write(traceback.format_exc())
            finally:
                sys.argv = argv
            sys.stdout.flush()
            sys.stderr.flush()
            return Result(code, _text(stdout.getvalue()), _text(stderr.getvalue()))

    def job_id(self, work_id: str, artifact_id: str, path: str) -> str:
        return job_id_for(job_key(work_id, artifact_id, self.server.url(path)))

    def stored_files(self) -> list[Path]:
        if not self.artifacts.is_dir():
            return []
        return sorted(p for p in self.artifacts.rglob("*") if p.is_file() or p.is_symlink())


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="backslashreplace")


@contextmanager
def _wide_consoles() -> Iterator[None]:
    """Wide, colourless consoles: one message per line, and any ESC seen came from input."""
    saved = [(console, console._width, console._color_system) for console in (out, err)]
    for console in (out, err):
        console._width = 400
        console._color_system = None
    try:
        yield
    finally:
        for console, width, colours in saved:
            console._width = width
            console._color_system = colours


Step = Callable[[World], None]
Check = Callable[[World, Result], None]


@dataclass(frozen=True)
class Case:
    """One hostile input: what is set up, the command, and what must come of it.

    ``exit_codes`` is one code except where the spec only rules out 0.
    ``fragments`` must each appear in stdout+stderr (after ``World.fill``);
    ``forbidden`` must not.  ``checks`` say what must be on disk afterwards.
    """

    id: str
    category: str
    argv: tuple[str, ...]
    exit_codes: frozenset[int]
    fragments: tuple[str, ...] = ()
    forbidden: tuple[str, ...] = ()
    setup: tuple[Step, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()
    fast: bool = True  # apply FAST_ENV; off for cases that test those very keys


# --- setup steps ---------------------------------------------------------------------------


def serve(path: str, artifact: Artifact) -> Step:
    def step(world: World) -> None:
        world.server.add(path, artifact)

    return step


def write(name: str, content: str | bytes) -> Step:
    """Write a file under the case's folder; text has {base} etc. filled in."""

    def step(world: World) -> None:
        target = world.tmp / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(world.fill(content), encoding="utf-8", newline="")

    return step


def jsonl(*rows: Mapping[str, object] | str, name: str = MANIFEST) -> Step:
    """A JSON Lines manifest; a str row is written as it is (for broken lines)."""
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    return write(name, "".join(line + "\n" for line in lines))


def row(work_id: object, path: str = "/ok", artifact_id: object = "pdf", **extra: object) -> str:
    """One manifest line as JSON text ({base} left for ``World.fill``)."""
    document = {"work_id": work_id, "artifact_id": artifact_id, "url": "{base}" + path, **extra}
    return json.dumps(document)


def raw_row(work_id: str, url: str, artifact_id: str = "pdf", **extra: object) -> str:
    """A manifest line whose url is taken as written (no server base)."""
    document = {"work_id": work_id, "artifact_id": artifact_id, "url": url, **extra}
    return json.dumps(document)


def command(*args: str, env: Mapping[str, str] | None = None) -> Step:
    """Run an earlier command (a first run, a repair) as part of the setup; it must not crash."""

    def step(world: World) -> None:
        result = world.invoke(args, env)
        assert result.exit_code != CRASHED, f"setup command {args} crashed\n{result.explain()}"

    return step


def remember_job(name: str, work_id: str, artifact_id: str, path: str) -> Step:
    def step(world: World) -> None:
        world.values[name] = world.job_id(work_id, artifact_id, path)

    return step


def keep(name: str) -> Step:
    """Remember the sha256 of a file (None: absent) so a check can say it is unchanged."""

    def step(world: World) -> None:
        target = world.tmp / name
        world.digests[name] = sha256_of(target.read_bytes()) if target.is_file() else None

    return step


def symlink(name: str, target: str) -> Step:
    def step(world: World) -> None:
        link = world.fill(name)
        where = world.tmp / link
        where.parent.mkdir(parents=True, exist_ok=True)
        where.symlink_to(world.tmp / world.fill(target))

    return step


def mkdir(name: str) -> Step:
    def step(world: World) -> None:
        (world.tmp / world.fill(name)).mkdir(parents=True, exist_ok=True)

    return step


def edit(name: str, change: Callable[[bytes], bytes]) -> Step:
    def step(world: World) -> None:
        target = world.tmp / world.fill(name)
        target.write_bytes(change(target.read_bytes()))

    return step


def delete(name: str) -> Step:
    def step(world: World) -> None:
        (world.tmp / world.fill(name)).unlink()

    return step


def sql(database: str, statement: str) -> Step:
    """Change a SQLite ledger behind docstokg's back (stdlib sqlite3, as an operator could)."""

    def step(world: World) -> None:
        import sqlite3

        connection = sqlite3.connect(world.tmp / database)
        try:
            connection.execute(statement)
            connection.commit()
        finally:
            connection.close()

    return step


# --- checks of what is on disk afterwards --------------------------------------------------


def stored(*bodies: bytes) -> Check:
    """artifacts/ holds exactly these bodies, each a regular file named by its sha256."""

    def check(world: World, result: Result) -> None:
        files = world.stored_files()
        expected = {sha256_of(body) for body in bodies}
        assert {p.name for p in files} == expected, (
            f"artifacts/ holds {[p.name for p in files]}, expected {sorted(expected)}"
        )
        for path in files:
            assert not path.is_symlink(), f"{path} is a link, not a regular file"
            assert path.is_file(), f"{path} is not a regular file"
            assert sha256_of(path.read_bytes()) == path.name, f"{path} does not hold its own hash"
            assert path.parent.name == path.name[:2], f"{path} is not under artifacts/<sha[:2]>/"

    return check


def nothing_stored(world: World, result: Result) -> None:
    files = world.stored_files()
    assert not files, f"artifacts/ should hold nothing, holds {files}"


def no_out(world: World, result: Result) -> None:
    assert not world.out.exists(), f"{world.out} was created although the command was refused"


def unchanged(name: str) -> Check:
    def check(world: World, result: Result) -> None:
        target = world.tmp / name
        now = sha256_of(target.read_bytes()) if target.is_file() else None
        assert now == world.digests[name], f"{name} changed (or vanished)"

    return check


def is_regular(name: str) -> Check:
    def check(world: World, result: Result) -> None:
        target = world.tmp / world.fill(name)
        assert not target.is_symlink(), f"{name} is still a link"

    return check


def folder_holds(name: str, *entries: str) -> Check:
    """The folder holds exactly these names (nothing written into it, nothing deleted)."""

    def check(world: World, result: Result) -> None:
        folder = world.tmp / name
        assert folder.is_dir(), f"{name} is gone"
        assert sorted(p.name for p in folder.iterdir()) == sorted(entries)

    return check


def no_controls(world: World, result: Result) -> None:
    """No raw control character from the input reached a human-readable line."""
    for char in ("\x00", "\x1b", "\r", "\x9b", "\x07"):
        assert char not in result.output, f"{char!r} printed raw\n{result.explain()}"
    for line in result.output.splitlines():
        assert not line.startswith("FORGED"), f"a forged line was printed: {line!r}"


def output_under(limit: int) -> Check:
    def check(world: World, result: Result) -> None:
        assert len(result.output) < limit, f"{len(result.output):,} characters printed"

    return check


def counts(**expected: int) -> Check:
    """The ``--json`` summary's counts."""

    def check(world: World, result: Result) -> None:
        found = result.summary()["counts"]
        for key, value in expected.items():
            assert found[key] == value, f"counts[{key!r}] is {found[key]}, expected {value}"

    return check


def no_link_followed_outside(world: World, result: Result) -> None:
    """Nothing was written through a link: the bait folder outside --out is still empty."""
    bait = world.tmp / "outside"
    assert not any(bait.iterdir()), f"written outside --out: {list(bait.iterdir())}"


def env_without_docstokg() -> dict[str, str | None]:
    """Every DOCSTOKG_* variable of this process unset (a developer's shell must not leak in)."""
    return {name: None for name in os.environ if name.startswith(ENV_PREFIX)}


# --- the table -----------------------------------------------------------------------------

RUN = ("run", MANIFEST, "--out", "{out}")
RUN_JSON = (*RUN, "--json")
LEDGER = ("--idempotency", "--db", "{db}")
GOOD = row("W-good", "/ok", "good")
SERVE_OK = serve("/ok", Artifact(OK_BODY))


def one(code: int) -> frozenset[int]:
    return frozenset({code})


def _bad_row_case(
    case_id: str, bad_line: str, *fragments: str, checks: tuple[Check, ...] = ()
) -> Case:
    """A bad row (line 1) and a good one: the bad one skipped, naming line 1, the good one stored.

    Exit 1: a skipped row is work the manifest asked for and the run did not do.
    """
    return Case(
        case_id,
        "manifest",
        RUN,
        one(1),
        (f"{MANIFEST}:1", *fragments),
        setup=(SERVE_OK, jsonl(bad_line, GOOD)),
        checks=(stored(OK_BODY), *checks),
    )


def _whole_file_case(case_id: str, content: str | bytes, *fragments: str, name: str) -> Case:
    return Case(
        case_id,
        "manifest",
        ("run", name, "--out", "{out}"),
        one(2),
        ("error:", *fragments),
        setup=(write(name, content),),
        checks=(no_out,),
    )


CSV_HEADER = "work_id,artifact_id,url\n"
# An id with a control character is skipped as malformed (exit 1) or run with the
# character escaped in every line (exit 0): the spec allows either, never raw output.
CONTROL_CHAR_CODES = frozenset({0, 1})
MANIFEST_CASES: list[Case] = [
    Case(
        "manifest-missing-file",
        "manifest",
        ("run", "absent.jsonl", "--out", "{out}"),
        one(2),
        ("absent.jsonl", "does not exist"),
        checks=(no_out,),
    ),
    Case(
        "manifest-is-a-directory",
        "manifest",
        ("run", "folder.jsonl", "--out", "{out}"),
        one(2),
        ("folder.jsonl", "directory"),
        setup=(mkdir("folder.jsonl"),),
        checks=(no_out,),
    ),
    _whole_file_case("manifest-empty-jsonl", b"", "empty", name="empty.jsonl"),
    _whole_file_case("manifest-empty-csv", b"", "empty", name="empty.csv"),
    _whole_file_case("manifest-only-blank-lines", "\n \n\t\n", "empty", name="blank.jsonl"),
    _whole_file_case(
        "manifest-not-utf8-latin1",
        b'{"work_id": "W1", "artifact_id": "a", "url": "http://x.org/a"}\n'
        b'{"work_id": "caf\xe9", "artifact_id": "a", "url": "http://x.org/b"}\n',
        "UTF-8",
        "line 2",
        name="latin1.jsonl",
    ),
    _whole_file_case(
        "manifest-utf16-with-bom", CSV_HEADER.encode("utf-16"), "UTF-8", name="utf16.csv"
    ),
    Case(
        "manifest-utf8-bom-jsonl-is-read",
        "manifest",
        RUN,
        one(0),
        setup=(SERVE_OK, write(MANIFEST, "\ufeff" + GOOD + "\n")),
        checks=(stored(OK_BODY),),
    ),
    Case(
        "manifest-utf8-bom-csv-header-is-read",
        "manifest",
        ("run", "m.csv", "--out", "{out}"),
        one(0),
        setup=(SERVE_OK, write("m.csv", "\ufeff" + CSV_HEADER + "W1,pdf,{base}/ok\n")),
        checks=(stored(OK_BODY),),
    ),
    _whole_file_case(
        "csv-header-without-url-column",
        "work_id,artifact_id,link\nW1,pdf,http://x.org/a\n",
        "'url'",
        name="nourl.csv",
    ),
    _whole_file_case("csv-header-only", CSV_HEADER, "no rows below", name="header.csv"),
    _whole_file_case(
        "csv-column-named-twice",
        "work_id,artifact_id,url,url\nW1,pdf,http://x.org/a,http://x.org/b\n",
        "more than once",
        name="twice.csv",
    ),
    Case(
        "csv-stray-quote-swallows-later-rows",
        "manifest",
        ("run", "m.csv", "--out", "{out}"),
        frozenset({1, 2}),  # the spec: never exit 0 while rows were lost
        ("m.csv", "line 3"),
        setup=(
            SERVE_OK,
            serve("/ok2", Artifact(OTHER_BODY)),
            write(
                "m.csv",
                CSV_HEADER
                + "W1,pdf,{base}/ok\n"
                + '"W2,pdf,{base}/ok2\n'  # opens a quoted cell that never closes
                + "".join(f"W{n},pdf,{{base}}/ok2\n" for n in range(3, 9)),
            ),
        ),
    ),
    Case(
        "csv-field-with-line-breaks-is-malformed",
        "manifest",
        ("run", "m.csv", "--out", "{out}", "--json"),
        one(1),
        ("line",),
        setup=(
            SERVE_OK,
            serve("/ok2", Artifact(OTHER_BODY)),
            write("m.csv", CSV_HEADER + '"W\n1",pdf,{base}/ok2\nW2,pdf,{base}/ok\n'),
        ),
        checks=(stored(OK_BODY), counts(jobs=1)),
    ),
    Case(
        "csv-short-row-skipped",
        "manifest",
        ("run", "m.csv", "--out", "{out}"),
        one(1),
        ("m.csv:2", "cells"),
        setup=(SERVE_OK, write("m.csv", CSV_HEADER + "W1,pdf\nW2,pdf,{base}/ok\n")),
        checks=(stored(OK_BODY),),
    ),
    Case(
        "csv-unquoted-comma-extra-cell-skipped",
        "manifest",
        ("run", "m.csv", "--out", "{out}"),
        one(1),
        ("m.csv:2", "quote values"),
        setup=(
            SERVE_OK,
            write("m.csv", CSV_HEADER + "W1,pdf,{base}/ok,extra\nW2,pdf,{base}/ok\n"),
        ),
        checks=(stored(OK_BODY),),
    ),
    Case(
        "csv-crlf-line-endings-are-read",
        "manifest",
        ("run", "m.csv", "--out", "{out}"),
        one(0),
        setup=(SERVE_OK, write("m.csv", "work_id,artifact_id,url\r\nW1,pdf,{base}/ok\r\n")),
        checks=(stored(OK_BODY),),
    ),
    _bad_row_case("jsonl-array-not-object", "[1, 2, 3]", "not a JSON object"),
    _bad_row_case("jsonl-string-not-object", '"http://x.org/a"', "not a JSON object"),
    _bad_row_case("jsonl-null-line", "null", "not a JSON object"),
    _bad_row_case("jsonl-invalid-json", '{"work_id": "W1",', "invalid JSON"),
    _bad_row_case("jsonl-deeply-nested", "[" * 100_000 + "]" * 100_000, "invalid JSON"),
    _bad_row_case("jsonl-integer-of-5000-digits", "9" * 5000, "invalid JSON"),
    _bad_row_case("jsonl-missing-url", '{"work_id": "W1", "artifact_id": "a"}', "'url'"),
    _bad_row_case(
        "jsonl-url-is-an-object",
        '{"work_id": "W1", "artifact_id": "a", "url": {"href": "http://x.org"}}',
        "'url'",
    ),
    _bad_row_case("jsonl-work-id-is-a-list", row(["W1"]), "'work_id'"),
    _bad_row_case("jsonl-work-id-blank", row("   "), "'work_id'"),
    _bad_row_case("lone-surrogate-in-work-id", row("\ud800", "/ok2")),
    _bad_row_case("lone-surrogate-in-url", raw_row("W1", "http://x.org/\udfff")),
    Case(
        "nul-in-work-id-never-printed-raw",
        "manifest",
        RUN,
        CONTROL_CHAR_CODES,
        setup=(SERVE_OK, jsonl(row("W\x001", "/ok"), GOOD)),
        checks=(no_controls, stored(OK_BODY)),
    ),
    Case(
        "cr-lf-in-work-id-forges-no-log-line",
        "manifest",
        RUN,
        CONTROL_CHAR_CODES,
        forbidden=("\nFORGED",),
        setup=(SERVE_OK, jsonl(row("W1\r\nFORGED ERROR all jobs failed", "/ok"), GOOD)),
        checks=(no_controls, stored(OK_BODY)),
    ),
    Case(
        "lf-in-artifact-id-forges-no-log-line",
        "manifest",
        RUN,
        CONTROL_CHAR_CODES,
        forbidden=("\nFORGED",),
        setup=(SERVE_OK, jsonl(row("W1", "/ok", "a\nFORGED INFO stored everything"), GOOD)),
        checks=(no_controls, stored(OK_BODY)),
    ),
    Case(
        "esc-in-work-id-reaches-no-terminal",
        "manifest",
        RUN,
        CONTROL_CHAR_CODES,
        setup=(SERVE_OK, jsonl(row("W1\x1b[2J\x1b]0;pwned\x07", "/ok"), GOOD)),
        checks=(no_controls, stored(OK_BODY)),
    ),
    Case(
        "c1-csi-in-artifact-id-reaches-no-terminal",
        "manifest",
        RUN,
        CONTROL_CHAR_CODES,
        setup=(SERVE_OK, jsonl(row("W1", "/ok", "a\x9b31m"), GOOD)),
        checks=(no_controls, stored(OK_BODY)),
    ),
    _bad_row_case(
        "url-over-8-kib-is-malformed",
        row("W1", "/" + "a" * 1_000_000),
        checks=(output_under(20_000),),
    ),
    _bad_row_case("url-scheme-ftp", raw_row("W1", "ftp://x.org/a.pdf"), "http"),
    _bad_row_case("url-scheme-file", raw_row("W1", "file:///etc/passwd"), "http"),
    _bad_row_case("url-scheme-javascript", raw_row("W1", "javascript:alert(1)"), "http"),
    _bad_row_case("url-scheme-data", raw_row("W1", "data:text/plain,hello"), "http"),
    _bad_row_case("url-without-scheme", raw_row("W1", "x.org/a.pdf"), "no scheme"),
    _bad_row_case("url-without-host", raw_row("W1", "http:///a.pdf"), "no host"),
    _bad_row_case("url-with-a-space", raw_row("W1", "http://x.org/a b.pdf"), "%20"),
    _bad_row_case("url-with-port-99999", raw_row("W1", "http://x.org:99999/a"), "port"),
    Case(
        "url-userinfo-password-never-printed",
        "manifest",
        RUN,
        one(0),
        forbidden=("hunter2-secret",),
        setup=(
            SERVE_OK,
            write(MANIFEST, raw_row("W1", "http://user:hunter2-secret@{base_host}/ok") + "\n"),
        ),
        checks=(stored(OK_BODY),),
    ),
    Case(
        "url-userinfo-password-not-in-json-summary",
        "manifest",
        RUN_JSON,
        one(0),
        ("***",),
        forbidden=("hunter2-secret",),
        setup=(
            SERVE_OK,
            write(MANIFEST, raw_row("W1", "http://user:hunter2-secret@{base_host}/ok") + "\n"),
        ),
        checks=(stored(OK_BODY),),
    ),
    Case(
        "url-userinfo-password-of-a-failed-job-never-printed",
        "manifest",
        RUN,
        one(1),
        ("404",),
        forbidden=("hunter2-secret",),
        setup=(write(MANIFEST, raw_row("W1", "http://u:hunter2-secret@{base_host}/gone") + "\n"),),
        checks=(nothing_stored,),
    ),
    Case(
        "duplicate-rows-planned-once",
        "manifest",
        RUN_JSON,
        one(0),
        ('"duplicate_rows": 2',),
        setup=(SERVE_OK, jsonl(GOOD, GOOD, GOOD)),
        checks=(stored(OK_BODY), counts(jobs=1, stored=1)),
    ),
    Case(
        "same-url-two-artifact-ids-stored-once",
        "manifest",
        (*RUN_JSON, *LEDGER),
        one(0),
        ("SKIPPED_DUPLICATE",),
        setup=(SERVE_OK, jsonl(row("W1", "/ok", "a"), row("W1", "/ok", "b"))),
        checks=(stored(OK_BODY), counts(jobs=2, stored=1, duplicates=1)),
    ),
    Case(
        "every-row-malformed-is-a-usage-error",
        "manifest",
        RUN,
        one(2),
        ("no valid row",),
        setup=(jsonl(raw_row("W1", "ftp://x.org/a"), "[]"),),
        checks=(no_out,),
    ),
    Case(
        "twenty-five-bad-rows-summarised",
        "manifest",
        RUN,
        one(1),
        ("more malformed rows",),
        setup=(SERVE_OK, jsonl(*(["[]"] * 25), GOOD)),
        checks=(stored(OK_BODY),),
    ),
    _bad_row_case("sha256-not-hex", row("W1", "/ok2", sha256="z" * 64), "sha256"),
    _bad_row_case("sha256-63-digits", row("W1", "/ok2", sha256="a" * 63), "sha256"),
    _bad_row_case("sha256-65-digits", row("W1", "/ok2", sha256="a" * 65), "sha256"),
    _bad_row_case("sha256-is-a-number", row("W1", "/ok2", sha256=12345), "sha256"),
    Case(
        "sha256-mismatch-fails-with-both-hashes-ledger-off",
        "manifest",
        RUN,
        one(1),
        (sha256_of(OK_BODY), "b" * 64),
        setup=(SERVE_OK, jsonl(row("W1", "/ok", sha256="b" * 64))),
        checks=(nothing_stored,),
    ),
    Case(
        "sha256-mismatch-fails-with-both-hashes-ledger-on",
        "manifest",
        (*RUN_JSON, *LEDGER),
        one(1),
        (sha256_of(OK_BODY), "c" * 64),
        setup=(SERVE_OK, jsonl(row("W1", "/ok", sha256="c" * 64))),
        checks=(nothing_stored, counts(failed=1, stored=0)),
    ),
    Case(
        "sha256-mismatch-in-csv-column",
        "manifest",
        ("run", "m.csv", "--out", "{out}"),
        one(1),
        (sha256_of(OK_BODY), "d" * 64),
        setup=(
            SERVE_OK,
            write("m.csv", "work_id,artifact_id,url,sha256\nW1,pdf,{base}/ok," + "d" * 64 + "\n"),
        ),
        checks=(nothing_stored,),
    ),
    Case(
        "sha256-matching-is-stored",
        "manifest",
        (*RUN, *LEDGER),
        one(0),
        setup=(SERVE_OK, jsonl(row("W1", "/ok", sha256=sha256_of(OK_BODY)))),
        checks=(stored(OK_BODY),),
    ),
]


def dead_port(world: World) -> None:
    """Remember a loopback port nobody listens on: connecting is refused at once."""
    world.values["dead_port"] = str(free_port())


def _server_case(
    case_id: str,
    artifact: Artifact,
    code: int,
    *fragments: str,
    body: bytes | None = None,
    env: Mapping[str, str] | None = None,
    extra: tuple[Step, ...] = (),
    ledger: bool = False,
) -> Case:
    """One row fetched from ``/x`` served as ``artifact``; ``body`` is what must be stored."""
    return Case(
        case_id,
        "server",
        (*RUN, *LEDGER) if ledger else RUN,
        one(code),
        fragments,
        setup=(serve("/x", artifact), *extra, jsonl(row("W1", "/x"))),
        env=env or {},
        checks=(stored(body) if body is not None else nothing_stored,),
    )


def _planted_part(
    content: bytes, *, ledger_off_job: tuple[str, str, str] = ("W1", "pdf", "/x")
) -> Step:
    """Put ``content`` at .staging/<job_id>.part as if an earlier run had left it."""

    def step(world: World) -> None:
        part = world.out / ".staging" / f"{world.job_id(*ledger_off_job)}.part"
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(content)

    return step


BIG = generated_body("big", 256 * 1024)
BIG_B = generated_body("big-version-b", 256 * 1024)
MAX_1000 = {"DOCSTOKG_IDEMPOTENCY_MAX_BYTES": "1000"}
SERVER_CASES: list[Case] = [
    _server_case("http-404", Artifact(b"", status=404), 1, "404"),
    _server_case("http-410-gone", Artifact(b"", status=410), 1, "410"),
    _server_case("http-403", Artifact(b"", status=403), 1, "403"),
    _server_case("http-500-every-time", Artifact(b"", status=500), 1, "500"),
    _server_case("http-500-then-success", Artifact(OK_BODY, faults=[Fault(500)]), 0, body=OK_BODY),
    _server_case(
        "http-503-twice-then-success-ledger-on",
        Artifact(OK_BODY, faults=[Fault(503), Fault(503)]),
        0,
        body=OK_BODY,
        ledger=True,
    ),
    _server_case(
        "http-429-with-retry-after-then-success",
        Artifact(OK_BODY, faults=[Fault(429, {"Retry-After": "1"})]),
        0,
        body=OK_BODY,
    ),
    _server_case(
        "http-429-retry-after-garbage",
        Artifact(OK_BODY, faults=[Fault(429, {"Retry-After": "soon, maybe"})]),
        0,
        body=OK_BODY,
    ),
    _server_case(
        "http-503-retry-after-1e300",
        Artifact(OK_BODY, faults=[Fault(503, {"Retry-After": "1e300"})]),
        0,
        body=OK_BODY,
    ),
    _server_case(
        "http-503-retry-after-99999999999999999999",
        Artifact(OK_BODY, faults=[Fault(503, {"Retry-After": "9" * 20})]),
        0,
        body=OK_BODY,
    ),
    _server_case(
        "http-503-retry-after-negative",
        Artifact(OK_BODY, faults=[Fault(503, {"Retry-After": "-5"})]),
        0,
        body=OK_BODY,
    ),
    _server_case(
        "http-503-retry-after-date-in-year-9999",
        Artifact(OK_BODY, faults=[Fault(503, {"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"})]),
        0,
        body=OK_BODY,
    ),
    _server_case(
        "truncated-body-every-time-stores-nothing",
        Artifact(OK_BODY, truncate_at=1000),
        1,
        "W1",
    ),
    _server_case(
        "truncated-body-ledger-on-stores-nothing",
        Artifact(OK_BODY, truncate_at=1000),
        1,
        "W1",
        ledger=True,
    ),
    _server_case(
        "head-with-conflicting-content-length-then-success",
        Artifact(OK_BODY, faults=[Fault(200, {"Content-Length": "999999"})]),
        0,
        body=OK_BODY,
    ),
    _server_case("head-refused-405-get-works", Artifact(OK_BODY, head_status=405), 0, body=OK_BODY),
    _server_case(
        "server-ignores-range-restarts-from-zero",
        Artifact(BIG, ranges=False),
        0,
        body=BIG,
        extra=(_planted_part(BIG[:1000]),),
    ),
    _server_case(
        "range-reply-capped-still-right-bytes",
        Artifact(BIG, range_cap=4096),
        0,
        body=BIG,
        extra=(_planted_part(BIG[:5000]),),
    ),
    _server_case(
        "etag-changed-since-part-was-written-no-splice",
        Artifact(BIG_B, etag='"B"'),
        0,
        body=BIG_B,
        extra=(_planted_part(BIG[:100_000]),),
    ),
    _server_case(
        "part-longer-than-the-resource",
        Artifact(OK_BODY),
        0,
        body=OK_BODY,
        extra=(_planted_part(OTHER_BODY + OTHER_BODY),),
    ),
    _server_case("redirect-loop", Artifact(b"", redirect_to="/x"), 1, "redirect"),
    _server_case(
        "too-many-redirects",
        Artifact(b"", redirect_to="/hop1"),
        1,
        "max_redirects",
        env={"DOCSTOKG_IDEMPOTENCY_MAX_REDIRECTS": "1"},
        extra=(
            serve("/hop1", Artifact(b"", redirect_to="/hop2")),
            serve("/hop2", Artifact(b"", redirect_to="/ok")),
            SERVE_OK,
        ),
    ),
    _server_case(
        "redirect-to-ftp-not-followed",
        Artifact(b"", redirect_to="ftp://127.0.0.1/a"),
        1,
        "ftp",
    ),
    _server_case(
        "redirect-without-location",
        Artifact(b"", faults=[Fault(302)] * 10),
        1,
        "302",
    ),
    _server_case(
        "one-redirect-followed",
        Artifact(b"", redirect_to="/ok"),
        0,
        body=OK_BODY,
        extra=(SERVE_OK,),
    ),
    _server_case("body-over-max-bytes-announced", Artifact(OK_BODY), 1, "max_bytes", env=MAX_1000),
    _server_case(
        "body-over-max-bytes-without-length",
        Artifact(OK_BODY, close_delimited=True, head_status=405),
        1,
        "max_bytes",
        env=MAX_1000,
    ),
    _server_case(
        "close-delimited-body-stored", Artifact(OK_BODY, close_delimited=True), 0, body=OK_BODY
    ),
    _server_case("empty-body-stored", Artifact(b""), 0, body=b""),
    _server_case(
        "drip-slower-than-min-speed",
        Artifact(OK_BODY[:2000], bytes_per_s=200),
        1,
        "speed",
        env={
            "DOCSTOKG_IDEMPOTENCY_MIN_SPEED_BYTES_S": "1000",
            "DOCSTOKG_IDEMPOTENCY_MIN_SPEED_WINDOW_S": "1",
            "DOCSTOKG_IDEMPOTENCY_MAX_ATTEMPTS": "1",
        },
    ),
    _server_case(
        "drip-past-the-attempt-deadline",
        Artifact(OK_BODY[:2000], bytes_per_s=400),
        1,
        "deadline",
        env={
            "DOCSTOKG_IDEMPOTENCY_ATTEMPT_DEADLINE_S": "1",
            "DOCSTOKG_IDEMPOTENCY_MAX_ATTEMPTS": "1",
        },
    ),
    Case(
        "connection-refused",
        "server",
        RUN,
        one(1),
        ("127.0.0.1:{dead_port}",),
        setup=(dead_port, jsonl(raw_row("W1", "http://127.0.0.1:{dead_port}/a"))),
        checks=(nothing_stored,),
    ),
    Case(
        "one-bad-server-row-does-not-sink-the-others",
        "server",
        RUN_JSON,
        one(1),
        ('"failed": 1',),
        setup=(SERVE_OK, serve("/x", Artifact(b"", status=404)), jsonl(row("W1", "/x"), GOOD)),
        checks=(stored(OK_BODY), counts(stored=1, failed=1)),
    ),
]


CONFIG_FILE = "settings.yaml"
RUN_WITH_CONFIG = (*RUN, "--idempotency", "--config", CONFIG_FILE)
# Bounds are checked where the file is read, so `config show` refuses them too;
# a run with them would only be slower to say the same (or hang, on broken code).
CONFIG_SHOW = ("config", "show", "--config", CONFIG_FILE)
NUMERIC_KEYS = (
    "lease_ttl_s",
    "stale_file_age_s",
    "reconciliation_interval_s",
    "max_attempts",
    "max_bytes",
    "connect_timeout_s",
    "read_timeout_s",
    "max_redirects",
    "backoff_base_s",
    "backoff_max_s",
    "min_speed_bytes_s",
    "min_speed_window_s",
    "attempt_deadline_s",
)
DURATION_KEYS = tuple(key for key in NUMERIC_KEYS if key.endswith("_s") and "bytes" not in key)
# 0 is a valid value here: no redirect followed; no speed floor or deadline (rule off).
ZERO_ALLOWED = frozenset({"max_redirects", "min_speed_bytes_s", "attempt_deadline_s"})


def _config_case(
    case_id: str,
    *fragments: str,
    yaml_text: str | None = None,
    env: Mapping[str, str] | None = None,
    argv: tuple[str, ...] = RUN_WITH_CONFIG,
) -> Case:
    """A run refused for its configuration: exit 2 naming the culprit, --out never created."""
    setup: list[Step] = [SERVE_OK, jsonl(GOOD)]
    if yaml_text is not None:
        setup.append(write(CONFIG_FILE, yaml_text))
    elif "--config" in argv:
        setup.append(write(CONFIG_FILE, "idempotency: {}\n"))
    return Case(
        case_id,
        "config",
        argv,
        one(2),
        fragments,
        setup=tuple(setup),
        env=env or {},
        checks=(no_out,),
        fast=False,
    )


def _in_file(key: str, value: str) -> str:
    return f"idempotency:\n  {key}: {value}\n"


def _env(key: str, value: str) -> dict[str, str]:
    return {f"DOCSTOKG_IDEMPOTENCY_{key.upper()}": value}


def _numeric_config_cases() -> list[Case]:
    cases = []
    for key in NUMERIC_KEYS:
        cases.append(
            _config_case(
                f"config-{key}-1e23", key, yaml_text=_in_file(key, "1.0e+23"), argv=CONFIG_SHOW
            )
        )
        cases.append(_config_case(f"config-{key}-minus-1-env", key, env=_env(key, "-1")))
        if key not in ZERO_ALLOWED:
            cases.append(_config_case(f"config-{key}-0", key, yaml_text=_in_file(key, "0")))
        cases.append(_config_case(f"config-{key}-true", key, yaml_text=_in_file(key, "true")))
        cases.append(_config_case(f"config-{key}-abc-env", key, env=_env(key, "abc")))
    for key in DURATION_KEYS:
        cases.append(
            _config_case(
                f"config-{key}-1e300", key, yaml_text=_in_file(key, "1.0e+300"), argv=CONFIG_SHOW
            )
        )
    return cases


CONFIG_CASES: list[Case] = [
    *_numeric_config_cases(),
    _config_case(
        "config-user-agent-with-crlf",
        "user_agent",
        yaml_text=_in_file("user_agent", '"docstokg\\r\\nX-Injected: 1"'),
    ),
    _config_case(
        "config-user-agent-with-lf-env", "user_agent", env=_env("user_agent", "ua\nX-Evil: 1")
    ),
    _config_case("config-user-agent-empty", "user_agent", yaml_text=_in_file("user_agent", '""')),
    _config_case("config-unknown-key", "lease_ttl", yaml_text=_in_file("lease_ttl", "60")),
    _config_case(
        "config-unknown-env-variable",
        "DOCSTOKG_IDEMPOTENCY_LEASE_TTL",
        env={"DOCSTOKG_IDEMPOTENCY_LEASE_TTL": "60"},
    ),
    _config_case("config-unknown-top-level-section", "downloads", yaml_text="downloads:\n  a: 1\n"),
    _config_case(
        "config-db-url-and-db-path-together",
        "db_url",
        "db_path",
        yaml_text="idempotency:\n  db_url: sqlite:///a.sqlite3\n  db_path: b.sqlite3\n",
    ),
    _config_case("config-yaml-is-a-list", "mapping", yaml_text="- idempotency\n- enabled\n"),
    _config_case("config-yaml-is-a-string", "mapping", yaml_text="just some words\n"),
    _config_case("config-section-is-a-list", "mapping", yaml_text="idempotency:\n  - 1\n"),
    _config_case("config-yaml-syntax-error", "YAML", yaml_text="idempotency: [unclosed\n"),
    _config_case(
        "config-stale-age-below-lease-ttl",
        "stale_file_age_s",
        "lease_ttl_s",
        yaml_text="idempotency:\n  lease_ttl_s: 600\n  stale_file_age_s: 60\n",
    ),
    _config_case(
        "config-file-missing",
        "absent.yaml",
        argv=(*RUN, "--config", "absent.yaml"),
    ),
    _config_case(
        "config-enable-switch-garbage",
        "DOCSTOKG_ENABLE_IDEMPOTENCY",
        env={"DOCSTOKG_ENABLE_IDEMPOTENCY": "maybe"},
        argv=RUN,
    ),
    Case(
        "config-out-empty",
        "config",
        ("run", MANIFEST, "--out", ""),
        one(2),
        ("--out",),
        setup=(SERVE_OK, jsonl(GOOD)),
        checks=(folder_holds("", MANIFEST),),
    ),
    _config_case("config-db-empty", "--db", argv=(*RUN, "--idempotency", "--db", "")),
    _config_case("config-workers-0", "--workers", argv=(*RUN, "--workers", "0")),
    _config_case("config-workers-100000", "--workers", argv=(*RUN, "--workers", "100000")),
    _config_case("config-metrics-port-0", "--metrics-port", argv=(*RUN, "--metrics-port", "0")),
    _config_case(
        "config-metrics-port-without-ledger", "--metrics-port", argv=(*RUN, "--metrics-port", "9")
    ),
    Case(
        "config-show-refuses-lease-ttl-1e23",
        "config",
        ("config", "show", "--config", CONFIG_FILE),
        one(2),
        ("lease_ttl_s",),
        setup=(write(CONFIG_FILE, _in_file("lease_ttl_s", "1.0e+23")),),
        checks=(no_out,),
        fast=False,
    ),
]


PG_WITH_PASSWORD = "postgresql+psycopg://ledger:pw-hunter2@127.0.0.1:{dead_port}/ledger"
SECRET = "pw-hunter2"
RUN_LEDGER = (*RUN, *LEDGER)


def _secret_case(case_id: str, argv: tuple[str, ...], code: int, **kwargs: Any) -> Case:
    """A command given a database password: the password is never printed, ``***`` is."""
    setup: tuple[Step, ...] = (dead_port, SERVE_OK, jsonl(GOOD), *kwargs.pop("setup", ()))
    return Case(
        case_id,
        "database",
        argv,
        one(code),
        ("***",),
        forbidden=(SECRET,),
        setup=setup,
        checks=(nothing_stored,),
        **kwargs,
    )


def _ledger_run_first(*extra: Step) -> tuple[Step, ...]:
    """A manifest run once with the ledger in {db}, so the case meets a used ledger."""
    return (SERVE_OK, jsonl(GOOD), command(*RUN_LEDGER), *extra)


DATABASE_CASES: list[Case] = [
    _secret_case("db-password-in-db-flag", (*RUN, "--idempotency", "--db", PG_WITH_PASSWORD), 1),
    _secret_case(
        "db-password-in-env-db-url",
        (*RUN, "--idempotency"),
        1,
        env={"DOCSTOKG_DB_URL": "postgresql+psycopg://ledger:pw-hunter2@127.0.0.1:1/ledger"},
    ),
    _secret_case(
        "db-password-in-config-db-url",
        (*RUN, "--idempotency", "--config", CONFIG_FILE),
        1,
        setup=(write(CONFIG_FILE, _in_file("db_url", PG_WITH_PASSWORD)),),
    ),
    _secret_case(
        "db-password-in-config-show",
        ("config", "show", "--config", CONFIG_FILE),
        0,
        setup=(write(CONFIG_FILE, _in_file("db_url", PG_WITH_PASSWORD)),),
    ),
    _secret_case(
        "db-password-in-config-show-json",
        ("config", "show", "--json"),
        0,
        env={"DOCSTOKG_IDEMPOTENCY_DB_URL": "postgresql+psycopg://u:pw-hunter2@db/x"},
    ),
    _secret_case("db-password-in-db-current", ("db", "current", "--db", PG_WITH_PASSWORD), 1),
    _secret_case("db-password-in-job-status", ("job", "status", "--db", PG_WITH_PASSWORD), 1),
    _secret_case(
        "db-password-in-unsupported-url",
        ("db", "current", "--db", "mysql://root:pw-hunter2@127.0.0.1/x"),
        2,
    ),
    Case(
        "db-newer-revision-current-gives-no-upgrade-advice",
        "database",
        ("db", "current", "--db", "{db}"),
        frozenset({0, 1}),
        ("9999_from_the_future",),
        forbidden=("run `docstokg db upgrade`",),
        setup=_ledger_run_first(
            sql("ledger.sqlite3", "UPDATE alembic_version SET version_num='9999_from_the_future'")
        ),
        checks=(stored(OK_BODY),),
    ),
    Case(
        "db-newer-revision-run-refused",
        "database",
        RUN_LEDGER,
        one(2),  # a ledger no run can use is refused at start like a bad option
        ("9999_from_the_future",),
        forbidden=("run `docstokg db upgrade`",),
        setup=_ledger_run_first(
            sql("ledger.sqlite3", "UPDATE alembic_version SET version_num='9999_from_the_future'"),
            keep("ledger.sqlite3"),
        ),
        checks=(unchanged("ledger.sqlite3"),),
    ),
    Case(
        "db-folder-whose-ledger-lives-elsewhere",
        "database",
        ("job", "status", "--out", "{out}"),
        one(1),
        ("--db",),
        forbidden=("db upgrade",),
        setup=_ledger_run_first(),
        checks=(lambda world, result: _absent(world.out / "manifest.sqlite3"),),
    ),
    # A read-only ledger file is a fault of the ledger's own database: test_database_outage.py.
    Case(
        "db-ledger-used-with-a-second-out",
        "database",
        ("run", MANIFEST, "--out", "{tmp}/out2", *LEDGER),
        one(2),
        ("{out}", "{tmp}/out2"),
        setup=_ledger_run_first(),
        checks=(lambda world, result: _no_files(world.tmp / "out2" / "artifacts"),),
    ),
    Case(
        "db-file-that-is-not-sqlite",
        "database",
        ("db", "current", "--db", "sqlite:///{tmp}/notes.txt"),
        frozenset({1, 2}),
        ("notes.txt",),
        setup=(write("notes.txt", "not a database\n" * 100), keep("notes.txt")),
        checks=(unchanged("notes.txt"),),
    ),
    Case(
        "db-job-status-on-a-folder-without-ledger-creates-none",
        "database",
        ("job", "status", "--out", "{out}"),
        one(1),
        ("manifest.sqlite3",),
        setup=(mkdir("out"),),
        checks=(lambda world, result: _absent(world.out / "manifest.sqlite3"),),
    ),
]


def _absent(path: Path) -> None:
    assert not path.exists(), f"{path} was created"


def _no_files(folder: Path) -> None:
    found = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    assert not found, f"{folder} holds {found}"


BIG_SHA = sha256_of(BIG)
OK_SHA = sha256_of(OK_BODY)
OK_STORED = f"out/artifacts/{OK_SHA[:2]}/{OK_SHA}"
X_PART = "out/.staging/{job}.part"
# The same job's part under the ledger's first grant (lease epoch 1).
X_PART_FIRST_GRANT = "out/.staging/{job}.1.part"
OUTSIDE_VICTIM = "outside/victim.txt"


def _flip_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def _bait(*extra: Step) -> tuple[Step, ...]:
    """A folder outside --out holding one file, which nothing may change."""
    return (write(OUTSIDE_VICTIM, "precious, 21 bytes.\n"), keep(OUTSIDE_VICTIM), *extra)


def _fs_case(
    case_id: str,
    argv: tuple[str, ...],
    codes: frozenset[int],
    *fragments: str,
    setup: tuple[Step, ...],
    checks: tuple[Check, ...],
) -> Case:
    return Case(case_id, "filesystem", argv, codes, fragments, setup=setup, checks=checks)


SERVE_BIG = serve("/x", Artifact(BIG))
X_ROW = jsonl(row("W1", "/x"))
X_JOB = remember_job("job", "W1", "pdf", "/x")
OK_JOB = remember_job("job", "W-good", "good", "/ok")
TAMPER_SETUP: tuple[Step, ...] = (
    serve("/x", Artifact(BIG, truncate_at=100_000)),
    X_ROW,
    X_JOB,
    command(*RUN_LEDGER, env={"DOCSTOKG_IDEMPOTENCY_MAX_ATTEMPTS": "1"}),
    edit(X_PART_FIRST_GRANT, _flip_middle),
    SERVE_BIG,
    command("job", "retry", "--failed", "--db", "{db}"),
)
FILESYSTEM_CASES: list[Case] = [
    _fs_case(
        "symlink-at-staging-part-ledger-off",
        RUN,
        one(0),
        setup=_bait(SERVE_BIG, X_ROW, X_JOB, symlink(X_PART, OUTSIDE_VICTIM)),
        checks=(unchanged(OUTSIDE_VICTIM), stored(BIG)),
    ),
    _fs_case(
        "symlink-at-staging-part-ledger-on",
        RUN_LEDGER,
        one(0),
        setup=_bait(SERVE_BIG, X_ROW, X_JOB, symlink(X_PART, OUTSIDE_VICTIM)),
        checks=(unchanged(OUTSIDE_VICTIM), stored(BIG)),
    ),
    _fs_case(
        "symlink-at-artifact-path",
        RUN,
        one(0),
        setup=_bait(SERVE_OK, jsonl(GOOD), symlink(OK_STORED, OUTSIDE_VICTIM)),
        checks=(unchanged(OUTSIDE_VICTIM), is_regular(OK_STORED), stored(OK_BODY)),
    ),
    _fs_case(
        "symlinked-artifact-shard-folder",
        RUN,
        one(0),
        setup=_bait(SERVE_OK, jsonl(GOOD), symlink(f"out/artifacts/{OK_SHA[:2]}", "outside")),
        checks=(unchanged(OUTSIDE_VICTIM), folder_holds("outside", "victim.txt")),
    ),
    _fs_case(
        "staging-folder-is-a-symlink-outside",
        RUN,
        frozenset({0, 2}),
        setup=_bait(SERVE_OK, jsonl(GOOD), symlink("out/.staging", "outside")),
        checks=(unchanged(OUTSIDE_VICTIM), folder_holds("outside", "victim.txt")),
    ),
    _fs_case(
        "directory-planted-at-staging-part",
        RUN,
        one(0),
        setup=(SERVE_BIG, X_ROW, X_JOB, mkdir(X_PART)),
        checks=(stored(BIG),),
    ),
    _fs_case(
        "tampered-part-ledger-off-no-splice",
        RUN,
        one(0),
        setup=(SERVE_BIG, X_ROW, _planted_part(_flip_middle(BIG[:100_000]))),
        checks=(stored(BIG),),
    ),
    _fs_case(
        "tampered-part-between-runs-ledger-on",
        RUN_LEDGER,
        one(0),
        setup=TAMPER_SETUP,
        checks=(stored(BIG),),
    ),
    _fs_case(
        "stored-artifact-deleted-is-fetched-again",
        RUN_LEDGER,
        one(0),
        setup=(*_ledger_run_first(), delete(OK_STORED)),
        checks=(stored(OK_BODY),),
    ),
    _fs_case(
        "stored-artifact-truncated-is-fetched-again",
        RUN_LEDGER,
        one(0),
        setup=(*_ledger_run_first(), edit(OK_STORED, lambda data: data[:10])),
        checks=(stored(OK_BODY),),
    ),
    _fs_case(
        "stored-artifact-corrupted-verify-names-the-job",
        ("job", "verify", "--out", "{out}"),
        one(1),
        "{job}",
        setup=(
            SERVE_OK,
            jsonl(GOOD),
            OK_JOB,
            command(*RUN, "--idempotency"),
            edit(OK_STORED, _flip_middle),
            keep(OK_STORED),
        ),
        checks=(unchanged(OK_STORED),),
    ),
    _fs_case(
        "stored-artifact-missing-verify-json-names-the-job",
        ("job", "verify", "--out", "{out}", "--json"),
        one(1),
        "{job}",
        setup=(SERVE_OK, jsonl(GOOD), OK_JOB, command(*RUN, "--idempotency"), delete(OK_STORED)),
        checks=(nothing_stored,),
    ),
    _fs_case(
        "stored-artifact-corrupted-repair-then-run-restores",
        (*RUN, "--idempotency"),
        one(0),
        setup=(
            SERVE_OK,
            jsonl(GOOD),
            command(*RUN, "--idempotency"),
            edit(OK_STORED, _flip_middle),
            command("job", "verify", "--out", "{out}", "--repair"),
        ),
        checks=(stored(OK_BODY),),
    ),
    _fs_case(
        "stored-artifact-corrupted-same-size-ledger-off-rerun",
        RUN,
        one(0),
        setup=(SERVE_OK, jsonl(GOOD), command(*RUN), edit(OK_STORED, _flip_middle)),
        checks=(stored(OK_BODY),),
    ),
    _fs_case(
        "out-is-a-file",
        ("run", MANIFEST, "--out", "afile"),
        one(2),
        "afile",
        "is a file",
        setup=(SERVE_OK, jsonl(GOOD), write("afile", "keep me\n"), keep("afile")),
        checks=(unchanged("afile"),),
    ),
    _fs_case(
        "out-below-a-file",
        ("run", MANIFEST, "--out", "afile/out"),
        one(2),
        "afile",
        setup=(SERVE_OK, jsonl(GOOD), write("afile", "keep me\n"), keep("afile")),
        checks=(unchanged("afile"),),
    ),
]


def _demo_dir(world: World, result: Result) -> None:
    folder_holds("mine", "thesis.tex", "data")(world, result)
    assert (world.tmp / "mine" / "thesis.tex").read_text() == "years of work\n"


OPERATIONS_CASES: list[Case] = [
    Case(
        "job-show-unknown-id",
        "operations",
        ("job", "show", "no-such-job-0000", "--db", "{db}"),
        one(1),
        ("no-such-job-0000",),
        setup=_ledger_run_first(keep("ledger.sqlite3")),
        checks=(unchanged("ledger.sqlite3"),),
    ),
    Case(
        "job-show-id-with-escape-sequence",
        "operations",
        ("job", "show", "x\x1b[2Jy", "--db", "{db}"),
        one(1),
        setup=_ledger_run_first(),
        checks=(no_controls, stored(OK_BODY)),
    ),
    Case(
        "job-show-hides-url-credentials",
        "operations",
        ("job", "show", "{job}", "--db", "{db}"),
        one(0),
        ("***",),
        forbidden=("hunter2-secret",),
        setup=(
            SERVE_OK,
            write(MANIFEST, raw_row("W1", "http://u:hunter2-secret@{base_host}/ok") + "\n"),
            command(*RUN_LEDGER),
            lambda world: world.values.update(
                job=job_id_for(
                    job_key("W1", "pdf", f"http://u:hunter2-secret@{world.fill('{base_host}')}/ok")
                )
            ),
        ),
        checks=(stored(OK_BODY),),
    ),
    *(
        Case(
            f"job-vacuum-older-than-{label}",
            "operations",
            ("job", "vacuum", "--older-than", value, "--db", "{db}"),
            one(2),
            ("--older-than",),
            setup=_ledger_run_first(keep("ledger.sqlite3")),
            checks=(unchanged("ledger.sqlite3"),),
        )
        for label, value in (
            ("99999999999d", "99999999999d"),
            ("1e300s", "1e300s"),
            ("abc", "abc"),
            ("minus-5d", "-5d"),
        )
    ),
    Case(
        "job-retry-of-nothing",
        "operations",
        ("job", "retry", "--db", "{db}"),
        one(2),
        ("--failed",),
        setup=_ledger_run_first(keep("ledger.sqlite3")),
        checks=(unchanged("ledger.sqlite3"),),
    ),
    Case(
        "job-retry-failed-when-none-failed",
        "operations",
        ("job", "retry", "--failed", "--db", "{db}"),
        one(0),
        ("0 jobs",),
        setup=_ledger_run_first(),
        checks=(stored(OK_BODY),),
    ),
    Case(
        "job-retry-unknown-id",
        "operations",
        ("job", "retry", "no-such-job-0000", "--db", "{db}"),
        one(1),
        ("no-such-job-0000",),
        setup=_ledger_run_first(),
        checks=(stored(OK_BODY),),
    ),
    Case(
        "job-status-without-any-ledger",
        "operations",
        ("job", "status"),
        one(2),
        ("--db", "--out"),
        checks=(no_out,),
    ),
    Case(
        "job-leases-limit-0",
        "operations",
        ("job", "leases", "--limit", "0", "--db", "{db}"),
        one(2),
        ("--limit",),
        setup=_ledger_run_first(),
        checks=(stored(OK_BODY),),
    ),
    Case(
        "job-verify-jobs-0",
        "operations",
        ("job", "verify", "--out", "{out}", "--jobs", "0"),
        one(2),
        ("--jobs",),
        setup=(SERVE_OK, jsonl(GOOD), command(*RUN, "--idempotency")),
        checks=(stored(OK_BODY),),
    ),
    Case(
        "job-verify-of-a-folder-never-run",
        "operations",
        ("job", "verify", "--out", "{out}"),
        one(1),
        ("manifest.sqlite3",),
        setup=(mkdir("out"),),
        checks=(lambda world, result: _absent(world.out / "manifest.sqlite3"),),
    ),
    Case(
        "job-verify-of-a-healthy-store",
        "operations",
        ("job", "verify", "--out", "{out}"),
        one(0),
        setup=(SERVE_OK, jsonl(GOOD), command(*RUN, "--idempotency")),
        checks=(stored(OK_BODY),),
    ),
    Case(
        "demo-dir-non-empty-folder-refused",
        "operations",
        ("demo", "--dir", "mine"),
        one(2),
        ("mine",),
        setup=(write("mine/thesis.tex", "years of work\n"), mkdir("mine/data")),
        checks=(_demo_dir,),
    ),
    Case(
        "demo-dir-is-a-file-refused",
        "operations",
        ("demo", "--dir", "afile"),
        one(2),
        ("afile",),
        setup=(write("afile", "keep me\n"), keep("afile")),
        checks=(unchanged("afile"),),
    ),
]

CASES: list[Case] = [
    *MANIFEST_CASES,
    *SERVER_CASES,
    *CONFIG_CASES,
    *DATABASE_CASES,
    *FILESYSTEM_CASES,
    *OPERATIONS_CASES,
]
"""Every case of the catalogue, in the order the test runs them."""
