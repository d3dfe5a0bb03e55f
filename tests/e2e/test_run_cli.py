"""``docstokg run`` end to end: real subprocesses, a real loopback server, real databases.

Every run is its own process (``python -m docstokg run MANIFEST --out DIR``)
started from ``tmp_path`` (so the repository's ``config/idempotency.yaml`` is
never picked up) with the test process's environment minus every
``DOCSTOKG_*`` variable, plus what the test sets.  The artifacts come from an
:class:`~docstokg.testing.server.ArtifactServer` in the test process, whose
counters say exactly what each run fetched; its pause gate tells a test that
a download is half-way, so nothing here sleeps to synchronise.

Tests about crashes, signals and concurrent runs take ``backend`` and run on
the default SQLite ledger (``OUT/manifest.sqlite3``) and on the throwaway
PostgreSQL of ``tests/conftest.py`` (passed with ``--db``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from docstokg import JobState, Ledger
from docstokg.download import ArtifactStore
from docstokg.keys import job_id_for, job_key
from docstokg.run.runner import ENABLED_MESSAGE
from docstokg.testing.server import Artifact, ArtifactServer, generated_body
from tests.cli_kit import cli_env
from tests.manifests import write_jsonl
from tests.runner_kit import part_files

pytestmark = pytest.mark.slow

KiB = 1024
MiB = 1024 * KiB
LARGE = "/large/dataset.bin"
LARGE_BYTES = 4 * MiB
# Where the server holds the large body.  1 MiB is far more than one read of
# the client, so by the time its .part holds most of it the download is
# unmistakably mid-way, and a resume must ask for bytes=N- with N > 0.
PAUSE_AT = 1 * MiB
#: The lease epoch of a job's first grant: the first run's worker stages it in ``<job_id>.1.part``.
FIRST_GRANT = 1
RUN_TIMEOUT_S = 60.0
ONE_LINE = 400  # console columns that keep each message on one line of stderr
ENABLE_ENV = "DOCSTOKG_ENABLE_IDEMPOTENCY"
LEASE_TTL_ENV = "DOCSTOKG_IDEMPOTENCY_LEASE_TTL_S"
JOB_KEYS = {
    "job_id",
    "work_id",
    "artifact_id",
    "url",
    "state",
    "sha256",
    "size_bytes",
    "final_path",
    "error",
    "attempts",
    "ended",
}
SUMMARY_KEYS = {
    "ledger",
    "db_url",
    "out_dir",
    "counts",
    "skipped_rows",
    "duplicate_rows",
    "bytes_fetched",
    "elapsed_s",
    "interrupted",
    "ledger_error",
    "lost_jobs",
    "exit_code",
    "jobs",
}


# --- running the command line ------------------------------------------------------------


def run_env(**overrides: str) -> dict[str, str]:
    """A run's clean environment (:func:`tests.cli_kit.cli_env`), each message on one line."""
    return cli_env(columns=ONE_LINE, **overrides)


# Still imported under this name by tests/integration/test_paused_worker.py.
write_manifest = write_jsonl


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str

    def explain(self) -> str:
        return f"exit {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"

    def summary(self) -> dict[str, Any]:
        """The --json summary: the whole of stdout is one JSON document."""
        try:
            document: dict[str, Any] = json.loads(self.stdout)
        except json.JSONDecodeError as error:  # pragma: no cover - shown on failure only
            raise AssertionError(
                f"stdout is not one JSON document ({error})\n{self.explain()}"
            ) from None
        return document


class Running:
    """A ``docstokg`` process; its output goes to files so no pipe can fill up and stall it."""

    _numbers = iter(range(1_000_000))
    started: ClassVar[list[Running]] = []

    def __init__(self, args: Sequence[str], *, cwd: Path, env: dict[str, str]) -> None:
        number = next(self._numbers)
        logs = cwd / "logs"
        logs.mkdir(exist_ok=True)
        self._stdout = logs / f"{number}.out"
        self._stderr = logs / f"{number}.err"
        with self._stdout.open("wb") as out, self._stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "docstokg", *args],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        Running.started.append(self)

    def finish(self, timeout: float = RUN_TIMEOUT_S) -> Finished:
        try:
            returncode = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"docstokg did not exit within {timeout} s\n{self._read(self._stderr)}"
            ) from None
        return Finished(returncode, self._read(self._stdout), self._read(self._stderr))

    def stderr_so_far(self) -> str:
        return self._read(self._stderr)

    @staticmethod
    def _read(path: Path) -> str:
        return path.read_text(encoding="utf-8", errors="replace")


@pytest.fixture(autouse=True)
def _no_process_left_behind() -> Iterator[None]:
    """A test that failed half-way must not leave a docstokg process running."""
    yield
    while Running.started:
        process = Running.started.pop().process
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def start(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Running:
    return Running(args, cwd=cwd, env=run_env() if env is None else env)


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = RUN_TIMEOUT_S
) -> Finished:
    return start(*args, cwd=cwd, env=env).finish(timeout)


def cli_all(commands: Sequence[Sequence[str]], *, cwd: Path, env: dict[str, str]) -> list[Finished]:
    """Start every command at once, then wait for each: overlapping runs, and a faster file."""
    running = [start(*args, cwd=cwd, env=env) for args in commands]
    return [process.finish() for process in running]


def assert_clean_error(result: Finished, *fragments: str) -> None:
    assert result.returncode == 2, result.explain()
    assert "Traceback" not in result.stderr, result.explain()
    assert "error:" in result.stderr, result.explain()
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in stderr\n{result.explain()}"


# --- artifacts and manifests --------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    path: str
    url: str
    body: bytes
    work_id: str
    artifact_id: str = "pdf"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    @property
    def job_id(self) -> str:
        return job_id_for(job_key(self.work_id, self.artifact_id, self.url))

    def row(self) -> dict[str, str]:
        return {"work_id": self.work_id, "artifact_id": self.artifact_id, "url": self.url}


def serve(
    server: ArtifactServer, prefix: str, count: int, size: int, **artifact: Any
) -> list[Served]:
    served = []
    for number in range(count):
        path = f"/{prefix}/{number}.bin"
        body = generated_body(path, size)
        url = server.add(path, Artifact(body, **artifact))
        served.append(Served(path, url, body, work_id=f"{prefix}-{number}"))
    return served


def serve_large(server: ArtifactServer) -> Served:
    body = generated_body(LARGE, LARGE_BYTES)
    url = server.add(LARGE, Artifact(body, pause_after=PAUSE_AT))
    return Served(LARGE, url, body, work_id="W-large", artifact_id="dataset")


# --- ledgers ------------------------------------------------------------------------------


def ledger_url(backend: str, empty_db_url: str, out: Path) -> str:
    """SQLite: the run's default ledger in OUT; PostgreSQL: the test's database."""
    if backend == "sqlite":
        return f"sqlite:///{out.resolve()}/manifest.sqlite3"
    return empty_db_url


def db_args(backend: str, empty_db_url: str) -> list[str]:
    return [] if backend == "sqlite" else ["--db", empty_db_url]


@dataclass(frozen=True)
class JobView:
    state: JobState
    lease_owner: str | None
    finalize_successes: int


def ledger_jobs(url: str, job_ids: Sequence[str]) -> dict[str, JobView]:
    """Each job's state, lease holder and count of SUCCEEDED FINALIZE ops, read from the ledger."""
    views = {}
    with Ledger.connect(url) as ledger, ledger.unit_of_work(read_only=True) as uow:
        for job_id in job_ids:
            job = uow.jobs.get(job_id)
            assert job is not None, f"job {job_id} is not in the ledger"
            finalized = [
                op
                for op in uow.ops.list_for_job(job_id)
                if op.op_type == "FINALIZE" and op.status == "SUCCEEDED"
            ]
            views[job_id] = JobView(job.state, job.lease_owner, len(finalized))
    return views


def ledger_job_count(url: str) -> int:
    with Ledger.connect(url) as ledger, ledger.unit_of_work(read_only=True) as uow:
        return sum(uow.jobs.count_by_state().values())


def part_path(out: Path, served: Served, epoch: int) -> Path:
    """Where the holder of ``served``'s job with lease ``epoch`` stages it (the first grant: 1)."""
    return ArtifactStore(out).part_path(served.job_id, epoch)


def poll_child(check: Callable[[], bool], *, timeout: float, failure: Callable[[], str]) -> None:
    """Until ``check()`` holds, or fail with ``failure()`` after ``timeout`` seconds.

    For what only a child process's files show (the size of its .part, a line
    on its stderr): nothing in the child signals it, so this polls, with a
    deadline that only a failing test reaches.
    """
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(failure())
        time.sleep(0.01)


def wait_for_checkpoint(part: Path, at_least: int, *, timeout: float = 30.0) -> int:
    """Until the checkpoint beside the child's .part vouches for ``at_least`` bytes; returns them.

    Only bytes a checkpoint vouches for are resumed after a SIGKILL.
    """
    checkpoint = part.with_name(part.name + ".json")

    def length() -> int:
        try:
            recorded = json.loads(checkpoint.read_text(encoding="utf-8"))["length"]
        except (FileNotFoundError, ValueError, KeyError):  # not yet written, or mid-replace
            return 0
        return int(recorded)

    poll_child(
        lambda: length() >= at_least,
        timeout=timeout,
        failure=lambda: f"{checkpoint} vouched for {length():,} bytes after {timeout} s",
    )
    return length()


def wait_for_stderr(running: Running, text: str, *, timeout: float = 30.0) -> None:
    """Until the child has printed ``text`` on stderr."""
    poll_child(
        lambda: text in running.stderr_so_far(),
        timeout=timeout,
        failure=lambda: f"{text!r} not on stderr after {timeout} s:\n{running.stderr_so_far()}",
    )


def assert_stored_exactly(out: Path, summary: dict[str, Any], served: Sequence[Served]) -> None:
    """Every artifact is DEDUPED, and its file under OUT holds the server's bytes."""
    by_job = {job["job_id"]: job for job in summary["jobs"]}
    assert set(by_job) == {item.job_id for item in served}
    for item in served:
        job = by_job[item.job_id]
        assert job["state"] == "DEDUPED", job
        assert job["sha256"] == item.sha256, job
        assert job["size_bytes"] == len(item.body), job
        stored = out / job["final_path"]
        assert stored.parent.parent == out / "artifacts", stored
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == item.sha256, stored


# --- 1. SIGKILL mid-stream, then the same command again ---------------------------------


def test_sigkill_mid_stream_then_rerun_resumes_with_range_and_finalizes_once(
    backend: str, empty_db_url: str, server: ArtifactServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    small = serve(server, "small", 3, 64 * KiB)
    large = serve_large(server)
    manifest = write_jsonl(tmp_path / "manifest.jsonl", [s.row() for s in [*small, large]])
    args = [
        "run", str(manifest), "--out", str(out), "--idempotency", "--workers", "2", "--json",
        *db_args(backend, empty_db_url),
    ]  # fmt: skip
    # A 2 s lease: the rerun may take the dead worker's job over after at most 2 s.
    env = run_env(**{LEASE_TTL_ENV: "2"})

    first = start(*args, cwd=tmp_path, env=env)
    assert server.wait_paused(LARGE, timeout=30), first.finish(timeout=5).explain()
    # Let the child write all the bytes the server sent before the pause and
    # checkpoint them (one checkpoint per MiB), so the kill leaves a .part
    # worth resuming.
    vouched = wait_for_checkpoint(part_path(out, large, FIRST_GRANT), PAUSE_AT)
    first.process.kill()
    assert first.process.wait(timeout=10) == -signal.SIGKILL
    server.release(LARGE)
    kept = part_path(out, large, FIRST_GRANT).stat().st_size
    assert vouched == kept == PAUSE_AT

    second = cli(*args, cwd=tmp_path, env=env)
    assert second.returncode == 0, second.explain()
    summary = second.summary()
    assert summary["exit_code"] == 0
    assert summary["counts"]["stored"] == 4
    assert_stored_exactly(out, summary, [*small, large])

    stats = server.stats(LARGE)
    assert stats.range_headers == (f"bytes={kept}-",), stats
    assert stats.full_gets == 1, stats  # the killed run's; the rerun only asked for the rest
    assert stats.range_gets == 1, stats
    assert part_files(out) == []

    views = ledger_jobs(
        ledger_url(backend, empty_db_url, out), [job["job_id"] for job in summary["jobs"]]
    )
    for job_id, view in views.items():
        assert view.finalize_successes == 1, (job_id, view)
        assert view.state is JobState.DEDUPED, (job_id, view)
        assert view.lease_owner is None, (job_id, view)


# --- 2. four runs at once on one manifest, --out and ledger ------------------------------


def test_four_concurrent_runs_fetch_every_artifact_exactly_once(
    backend: str, empty_db_url: str, server: ArtifactServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    served = serve(server, "shared", 40, 64 * KiB)
    manifest = write_jsonl(tmp_path / "manifest.jsonl", [s.row() for s in served])
    args = [
        "run", str(manifest), "--out", str(out), "--idempotency", "--workers", "2", "--json",
        *db_args(backend, empty_db_url),
    ]  # fmt: skip

    results = cli_all([args] * 4, cwd=tmp_path, env=run_env())

    for result in results:
        assert result.returncode == 0, result.explain()
        summary = result.summary()
        assert summary["counts"]["jobs"] == 40
        assert {job["state"] for job in summary["jobs"]} == {"DEDUPED"}, summary["counts"]
        assert_stored_exactly(out, summary, served)
    for item in served:
        stats = server.stats(item.path)
        assert (stats.full_gets, stats.range_gets) == (1, 0), (item.path, stats)
    assert server.total().body_bytes_sent == sum(len(item.body) for item in served)
    assert sum(result.summary()["bytes_fetched"] for result in results) == 40 * 64 * KiB


# --- 3. exit codes ---------------------------------------------------------------------------


def test_all_good_exits_0(server: ArtifactServer, tmp_path: Path) -> None:
    served = serve(server, "good", 2, 8 * KiB)
    manifest = write_jsonl(tmp_path / "manifest.jsonl", [s.row() for s in served])
    result = cli("run", str(manifest), "--out", "out", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.explain()
    assert result.summary()["exit_code"] == 0


@pytest.mark.parametrize("ledger", ["--idempotency", "--no-idempotency"])
def test_a_404_exits_1_and_the_summary_shows_it_failed(
    ledger: str, server: ArtifactServer, tmp_path: Path
) -> None:
    good = serve(server, "good", 1, 8 * KiB)[0]
    gone_url = server.add("/gone.pdf", Artifact(b"", status=404))
    gone = Served("/gone.pdf", gone_url, b"", work_id="W-gone")
    manifest = write_jsonl(tmp_path / "manifest.jsonl", [good.row(), gone.row()])

    result = cli("run", str(manifest), "--out", "out", ledger, "--json", cwd=tmp_path)

    assert result.returncode == 1, result.explain()
    summary = result.summary()
    assert summary["exit_code"] == 1
    assert summary["counts"] == {
        "stored": 1, "duplicates": 0, "failed": 1, "unfinished": 0, "jobs": 2,
    }  # fmt: skip
    [failed] = [job for job in summary["jobs"] if job["url"] == gone_url]
    assert failed["state"] == "FAILED", failed
    assert failed["ended"] is True, failed
    assert "404" in failed["error"], failed
    assert server.stats("/gone.pdf").get_requests <= 1  # a permanent error is not retried


def test_an_unknown_option_exits_2(tmp_path: Path) -> None:
    manifest = write_jsonl(tmp_path / "manifest.jsonl", [])
    result = cli("run", str(manifest), "--out", "out", "--no-such-option", cwd=tmp_path)
    assert result.returncode == 2, result.explain()
    assert "No such option" in result.stderr, result.explain()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("out_arg", "message"),
    [
        ("a-file", "--out a-file cannot be the output folder (a-file is a file, not a folder)"),
        (
            "a-file/below",
            "--out a-file/below cannot be the output folder (a-file/below: Not a directory)",
        ),
        ("a-folder", "a-folder/.staging is not a folder; docstokg keeps its files there"),
    ],
)
def test_an_out_that_cannot_be_a_folder_exits_2_naming_it(
    out_arg: str, message: str, server: ArtifactServer, tmp_path: Path
) -> None:
    served = serve(server, "good", 1, 8 * KiB)
    manifest = write_jsonl(tmp_path / "manifest.jsonl", [s.row() for s in served])
    (tmp_path / "a-file").write_text("not a folder\n", encoding="utf-8")
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-folder" / ".staging").write_text("not a folder\n", encoding="utf-8")

    result = cli("run", str(manifest), "--out", out_arg, "--idempotency", cwd=tmp_path)

    assert_clean_error(result, message)
    assert server.stats(served[0].path).get_requests == 0


# --- 4. malformed manifests --------------------------------------------------------------


def test_malformed_rows_are_reported_with_line_numbers_and_skipped(
    server: ArtifactServer, tmp_path: Path
) -> None:
    first, second = serve(server, "ok", 2, 8 * KiB)
    write_jsonl(
        tmp_path / "manifest.jsonl",
        [
            first.row(),
            {"work_id": "W2", "url": server.url("/x")},  # no artifact_id
            {"work_id": "W3", "artifact_id": "pdf", "url": "not a url"},
            {"work_id": "W4", "artifact_id": "pdf", "url": "ftp://example.org/4.pdf"},
            second.row(),
        ],
    )

    result = cli("run", "manifest.jsonl", "--out", "out", "--idempotency", "--json", cwd=tmp_path)

    assert result.returncode == 1, result.explain()  # skipped rows are work not done
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 3, result.explain()
    assert skipped[0].startswith("skipped manifest.jsonl:2: "), skipped
    assert "missing field 'artifact_id'" in skipped[0], skipped
    assert skipped[1].startswith("skipped manifest.jsonl:3: "), skipped
    assert "invalid URL 'not a url'" in skipped[1], skipped
    assert skipped[2].startswith("skipped manifest.jsonl:4: "), skipped
    assert "scheme 'ftp' is not http or https" in skipped[2], skipped

    summary = result.summary()
    assert [row["line"] for row in summary["skipped_rows"]] == [2, 3, 4]
    assert_stored_exactly(tmp_path / "out", summary, [first, second])
    assert ledger_job_count(f"sqlite:///{tmp_path / 'out' / 'manifest.sqlite3'}") == 2
    assert server.stats("/x").get_requests == 0


def test_a_manifest_of_only_malformed_rows_exits_2(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "manifest.jsonl",
        [
            {"work_id": "W1", "artifact_id": "pdf"},
            {"work_id": "W2", "artifact_id": "pdf", "url": "ftp://example.org/2.pdf"},
        ],
    )
    result = cli("run", "manifest.jsonl", "--out", "out", "--idempotency", cwd=tmp_path)
    assert_clean_error(result, "manifest.jsonl:1:", "manifest.jsonl:2:", "has no valid row")
    assert not (tmp_path / "out").exists()


# --- 5. invalid configuration ----------------------------------------------------------------


def test_invalid_configuration_exits_2_naming_the_key_and_its_source(
    server: ArtifactServer, tmp_path: Path
) -> None:
    served = serve(server, "cfg", 1, KiB)
    write_jsonl(tmp_path / "manifest.jsonl", [s.row() for s in served])
    bad_pair = tmp_path / "pair.yaml"
    bad_pair.write_text("idempotency:\n  stale_file_age_s: 10\n  lease_ttl_s: 120\n")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("idempotency:\n  lease_ttl_seconds: 30\n")
    run_args = ["run", "manifest.jsonl", "--out", "out", "--idempotency"]

    env_zero, pair, typo = (
        start(*run_args, cwd=tmp_path, env=run_env(**{LEASE_TTL_ENV: "0"})),
        start(*run_args, "--config", str(bad_pair), cwd=tmp_path),
        start(*run_args, "--config", str(unknown), cwd=tmp_path),
    )

    assert_clean_error(env_zero.finish(), "lease_ttl_s", LEASE_TTL_ENV)
    assert_clean_error(pair.finish(), "stale_file_age_s", "lease_ttl_s", str(bad_pair))
    assert_clean_error(typo.finish(), "lease_ttl_seconds", str(unknown))
    assert not (tmp_path / "out").exists()
    assert server.total().get_requests == 0


# --- 6. what turns the ledger on -------------------------------------------------------------


def test_the_environment_enables_the_ledger_without_a_flag(
    server: ArtifactServer, tmp_path: Path
) -> None:
    served = serve(server, "env", 2, 8 * KiB)
    write_jsonl(tmp_path / "manifest.jsonl", [s.row() for s in served])
    result = cli(
        "run", "manifest.jsonl", "--out", "out", "--json",
        cwd=tmp_path, env=run_env(**{ENABLE_ENV: "true"}),
    )  # fmt: skip
    assert result.returncode == 0, result.explain()
    assert (tmp_path / "out" / "manifest.sqlite3").is_file()
    assert ENABLED_MESSAGE in result.stderr, result.explain()
    summary = result.summary()
    assert summary["ledger"] is True
    assert summary["db_url"] == f"sqlite:///{(tmp_path / 'out').resolve()}/manifest.sqlite3"


def test_no_idempotency_beats_the_environment(server: ArtifactServer, tmp_path: Path) -> None:
    served = serve(server, "flagoff", 2, 8 * KiB)
    write_jsonl(tmp_path / "manifest.jsonl", [s.row() for s in served])
    env = run_env(**{ENABLE_ENV: "true"})
    args = ["run", "manifest.jsonl", "--out", "out", "--no-idempotency", "--json"]

    first = cli(*args, cwd=tmp_path, env=env)
    second = cli(*args, cwd=tmp_path, env=env)

    for result in (first, second):
        assert result.returncode == 0, result.explain()
        assert result.summary()["ledger"] is False
        assert ENABLED_MESSAGE not in result.stderr
    assert not (tmp_path / "out" / "manifest.sqlite3").exists()
    for item in served:
        assert server.stats(item.path).full_gets == 2, item.path  # nothing was remembered


def test_a_config_file_enables_the_ledger_and_the_flag_beats_the_environment(
    server: ArtifactServer, tmp_path: Path
) -> None:
    served = serve(server, "cfgon", 1, 8 * KiB)
    write_jsonl(tmp_path / "manifest.jsonl", [s.row() for s in served])
    config = tmp_path / "on.yaml"
    config.write_text("idempotency:\n  enabled: true\n")
    env_off = run_env(**{ENABLE_ENV: "false"})
    cases = {  # --out: (extra arguments, environment, ledger expected on)
        "by-file": (["--config", str(config)], run_env(), True),
        "by-flag": (["--idempotency"], env_off, True),
        "env-beats-file": (["--config", str(config)], env_off, False),
    }

    running = {
        out: start("run", "manifest.jsonl", "--out", out, *extra, "--json", cwd=tmp_path, env=env)
        for out, (extra, env, _) in cases.items()
    }

    for out, process in running.items():
        result = process.finish()
        on = cases[out][2]
        assert result.returncode == 0, result.explain()
        assert result.summary()["ledger"] is on, (out, result.explain())
        assert (tmp_path / out / "manifest.sqlite3").is_file() is on, out
        assert (ENABLED_MESSAGE in result.stderr) is on, (out, result.explain())


# --- 7. the ledger off -----------------------------------------------------------------------


def test_without_the_ledger_every_run_downloads_everything_again(
    server: ArtifactServer, tmp_path: Path
) -> None:
    served = serve(server, "plain", 3, 16 * KiB)
    write_jsonl(tmp_path / "manifest.jsonl", [s.row() for s in served])
    out = tmp_path / "out"

    results = [cli("run", "manifest.jsonl", "--out", "out", "--json", cwd=tmp_path) for _ in "12"]

    for result in results:
        assert result.returncode == 0, result.explain()
        summary = result.summary()
        assert summary["ledger"] is False
        assert summary["db_url"] is None
        assert summary["bytes_fetched"] == 3 * 16 * KiB
        assert_stored_exactly(out, summary, served)
    for item in served:
        stats = server.stats(item.path)
        assert (stats.full_gets, stats.range_gets) == (2, 0), (item.path, stats)
        assert (out / "artifacts" / item.sha256[:2] / item.sha256).is_file()
    assert not (out / "manifest.sqlite3").exists()
    assert list(out.glob("*.sqlite3*")) == []
    assert part_files(out) == []


# --- 8. SIGTERM: a graceful stop, then an immediate rerun ----------------------------------


def test_sigterm_keeps_the_part_releases_the_lease_and_a_rerun_resumes_at_once(
    backend: str, empty_db_url: str, server: ArtifactServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    small = serve(server, "small", 2, 16 * KiB)
    large = serve_large(server)
    manifest = write_jsonl(tmp_path / "manifest.jsonl", [s.row() for s in [*small, large]])
    # The default lease (120 s): only a released lease lets the rerun start at once.
    args = [
        "run", str(manifest), "--out", str(out), "--idempotency", "--workers", "2", "--json",
        *db_args(backend, empty_db_url),
    ]  # fmt: skip

    first = start(*args, cwd=tmp_path)
    assert server.wait_paused(LARGE, timeout=30), first.finish(timeout=5).explain()
    # Every byte sent before the pause is in the part (a stop is checked before
    # each write, so bytes that arrive after it are not written).
    vouched = wait_for_checkpoint(part_path(out, large, FIRST_GRANT), PAUSE_AT)
    first.process.send_signal(signal.SIGTERM)
    server.release(LARGE)  # the next chunk arrives, and the download sees the stop request
    stopped = first.finish(timeout=30)

    assert stopped.returncode == 130, stopped.explain()
    assert "SIGTERM" in stopped.stderr, stopped.explain()
    summary = stopped.summary()
    assert summary["interrupted"] is True
    assert summary["exit_code"] == 130
    assert summary["counts"]["unfinished"] >= 1
    [large_job] = [job for job in summary["jobs"] if job["job_id"] == large.job_id]
    assert large_job["state"] not in {"DEDUPED", "SKIPPED_DUPLICATE", "FAILED"}, large_job
    part = part_path(out, large, FIRST_GRANT)
    assert part in part_files(out)
    kept = part.stat().st_size
    assert 0 < vouched <= kept < LARGE_BYTES
    url = ledger_url(backend, empty_db_url, out)
    assert ledger_jobs(url, [large.job_id])[large.job_id].lease_owner is None

    began = time.monotonic()
    second = cli(*args, cwd=tmp_path, timeout=30)
    assert second.returncode == 0, second.explain()
    assert time.monotonic() - began < 30  # far less than the 120 s lease it did not wait for
    assert_stored_exactly(out, second.summary(), [*small, large])
    stats = server.stats(LARGE)
    assert stats.range_headers == (f"bytes={kept}-",), stats
    assert (stats.full_gets, stats.range_gets) == (1, 1), stats
    assert part_files(out) == []
    views = ledger_jobs(url, [item.job_id for item in [*small, large]])
    assert all(view.finalize_successes == 1 for view in views.values()), views


@contextlib.contextmanager
def silent_server() -> Iterator[tuple[str, threading.Event]]:
    """A server that accepts connections and never answers.

    Yields its URL and an event set once a connection came in: its client is
    then waiting for an answer that never comes.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # the listener closed: the test is over
            while True:
                connection, _ = listener.accept()
                held.append(connection)
                accepted.set()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/never.pdf", accepted
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        listener.close()
        for connection in held:
            connection.close()
        thread.join(timeout=10)


def test_a_second_sigint_stops_at_once_even_while_a_request_hangs(tmp_path: Path) -> None:
    """The first asks for a clean stop, which a hanging request delays until its timeout (60 s)."""
    with silent_server() as (url, accepted):
        row = {"work_id": "W1", "artifact_id": "pdf", "url": url}
        manifest = write_jsonl(tmp_path / "manifest.jsonl", [row])
        running = start("run", str(manifest), "--out", "out", "--idempotency", cwd=tmp_path)
        assert accepted.wait(timeout=30), running.finish(timeout=5).explain()
        running.process.send_signal(signal.SIGINT)
        wait_for_stderr(running, "SIGINT: stopping")
        running.process.send_signal(signal.SIGINT)
        stopped = running.finish(timeout=30)

    assert stopped.returncode == 130, stopped.explain()
    assert "SIGINT again: stopping at once" in stopped.stderr, stopped.explain()
    assert stopped.stdout == ""  # no summary: it did not wait for the workers


# --- 9. config show and --help ---------------------------------------------------------------


def test_config_show_names_the_environment_and_run_help_documents_the_exit_codes(
    tmp_path: Path,
) -> None:
    show, help_text = cli_all(
        [["config", "show", "--json"], ["run", "--help"]],
        cwd=tmp_path,
        env=run_env(**{LEASE_TTL_ENV: "45"}),
    )

    assert show.returncode == 0, show.explain()
    document = show.summary()
    assert document["file"] is None
    assert document["settings"]["lease_ttl_s"] == {
        "value": 45.0,
        "source": f"env {LEASE_TTL_ENV}",
    }
    assert document["settings"]["enabled"] == {"value": False, "source": "default"}

    assert help_text.returncode == 0, help_text.explain()
    text = " ".join(help_text.stdout.split())
    assert "--idempotency" in text
    assert "--no-idempotency" in text
    assert "Exit code" in text
    for code in ("0 every valid row stored", "1 some failed", "2 usage", "130 stopped"):
        assert code in text, code


# --- 10. the --json summary ------------------------------------------------------------------


def test_the_json_summary_has_the_documented_shape(server: ArtifactServer, tmp_path: Path) -> None:
    one, two = serve(server, "shape", 2, 4 * KiB)
    mirror_url = server.add("/mirror/0.bin", Artifact(one.body))
    mirror = Served(
        "/mirror/0.bin", mirror_url, one.body, work_id=one.work_id, artifact_id="mirror"
    )
    manifest = write_jsonl(
        tmp_path / "manifest.jsonl",
        [one.row(), two.row(), one.row(), '{"work_id": "W", "artifact_id": "x"}', mirror.row()],
    )

    result = cli(
        "run",
        str(manifest),
        "--out",
        "out",
        "--idempotency",
        "--workers",
        "1",
        "--json",
        cwd=tmp_path,
    )

    assert result.returncode == 1, result.explain()  # line 4 was skipped
    summary = result.summary()
    assert set(summary) == SUMMARY_KEYS
    assert summary["ledger"] is True
    assert summary["db_url"] == f"sqlite:///{(tmp_path / 'out').resolve()}/manifest.sqlite3"
    assert summary["out_dir"] == "out"
    assert summary["ledger_error"] is None
    assert summary["lost_jobs"] == 0
    assert summary["counts"] == {
        "stored": 2, "duplicates": 1, "failed": 0, "unfinished": 0, "jobs": 3,
    }  # fmt: skip
    assert summary["skipped_rows"] == [{"line": 4, "reason": "missing field 'url'"}]
    assert summary["duplicate_rows"] == 1
    assert summary["bytes_fetched"] == 3 * 4 * KiB
    assert isinstance(summary["elapsed_s"], float)
    assert summary["elapsed_s"] >= 0
    assert summary["interrupted"] is False
    assert summary["exit_code"] == 1
    assert len(summary["jobs"]) == 3
    for job in summary["jobs"]:
        assert set(job) == JOB_KEYS, job
        assert isinstance(job["attempts"], int), job  # failed attempts, in the ledger
        assert job["ended"] is True, job
        assert job["error"] is None, job
    by_job = {job["job_id"]: job for job in summary["jobs"]}
    assert [job["job_id"] for job in summary["jobs"]] == [one.job_id, two.job_id, mirror.job_id]
    # The same bytes twice: whichever job stored them first is DEDUPED, the other a duplicate.
    assert sorted([by_job[one.job_id]["state"], by_job[mirror.job_id]["state"]]) == [
        "DEDUPED",
        "SKIPPED_DUPLICATE",
    ]
    by_job[one.job_id]["state"] = by_job[mirror.job_id]["state"] = "DEDUPED"
    for item in (one, two, mirror):
        job = by_job[item.job_id]
        assert job == {
            "job_id": item.job_id,
            "work_id": item.work_id,
            "artifact_id": item.artifact_id,
            "url": item.url,
            "state": "DEDUPED",
            "sha256": item.sha256,
            "size_bytes": len(item.body),
            "final_path": f"artifacts/{item.sha256[:2]}/{item.sha256}",
            "error": None,
            "attempts": job["attempts"],
            "ended": True,
        }


# --- 11. secrets and bad values ----------------------------------------------------------------

SECRETS = ("hunter2", "tok-abc123", "sig-xyz789", "s3cret-db")


def with_password(url: str, password: str) -> str:
    """``scheme://user@host...`` with ``password`` added to its userinfo."""
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{password}@{host}"


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} printed:\n{text}"


def test_no_secret_is_printed_by_a_run_or_the_job_commands(
    backend: str, empty_db_url: str, server: ArtifactServer, tmp_path: Path
) -> None:
    """Credentials in manifest URLs and in the ledger's URL show as ***, wherever printed."""
    body = generated_body("/secret/paper.pdf", 4 * KiB)
    server.add("/secret/paper.pdf", Artifact(body))
    server.add("/secret/gone.pdf", Artifact(b"", status=404))
    base = with_password(server.base_url.replace("://", "://reader@"), "hunter2")
    good = Served("/secret/paper.pdf", f"{base}/secret/paper.pdf?token=tok-abc123&v=1", body,
                  work_id="W-secret")  # fmt: skip
    gone = Served("/secret/gone.pdf", f"{base}/secret/gone.pdf?X-Amz-Signature=sig-xyz789",
                  b"", work_id="W-gone")  # fmt: skip
    manifest = write_jsonl(tmp_path / "manifest.jsonl", [good.row(), gone.row()])
    env = run_env()
    url = ledger_url(backend, empty_db_url, tmp_path / "out")
    if backend == "postgresql":  # the throwaway server trusts its user: any password works
        url = with_password(empty_db_url, "s3cret-db")
        env = run_env(DOCSTOKG_DB_URL=url)

    human = cli("run", str(manifest), "--out", "out", "--idempotency", cwd=tmp_path, env=env)
    scripted = cli("run", str(manifest), "--out", "out", "--idempotency", "--json",
                   cwd=tmp_path, env=env)  # fmt: skip

    assert human.returncode == 1, human.explain()  # the 404
    assert_no_secret(human.stdout, human.stderr, scripted.stderr)
    assert "http://reader:***@127.0.0.1" in human.stderr  # logged, masked
    assert "X-Amz-Signature=***" in human.stderr
    summary = scripted.summary()
    assert summary["db_url"] == (
        with_password(empty_db_url, "***") if backend == "postgresql" else url
    )
    by_job = {job["job_id"]: job for job in summary["jobs"]}
    assert by_job[good.job_id]["url"].endswith("/secret/paper.pdf?token=***&v=1")
    assert by_job[good.job_id]["state"] == "DEDUPED"  # the ledger kept the URL it fetches

    for args in (["show", gone.job_id], ["show", gone.job_id, "--json"], ["stats"],
                 ["stats", "--json"], ["metrics"]):  # fmt: skip
        shown = cli("job", *args, "--db", url, cwd=tmp_path, env=run_env())
        assert shown.returncode == 0, shown.explain()
        assert_no_secret(shown.stdout, shown.stderr)
    document = json.loads(
        cli("job", "show", gone.job_id, "--json", "--db", url, cwd=tmp_path).stdout
    )
    assert document["job"]["url"] == f"http://reader:***@{server.base_url.split('://')[1]}" \
        "/secret/gone.pdf?X-Amz-Signature=***"  # fmt: skip
    # The error quotes the URL: masked too (last: it needs RunSummary.to_json's masking).
    assert "X-Amz-Signature=***" in by_job[gone.job_id]["error"]
    assert_no_secret(scripted.stdout)


def test_an_empty_out_is_a_usage_error(tmp_path: Path) -> None:
    manifest = write_jsonl(tmp_path / "manifest.jsonl", [])
    result = cli("run", str(manifest), "--out", "", "--idempotency", cwd=tmp_path)
    assert result.returncode == 2, result.explain()
    assert "Invalid value for '--out'" in result.stderr, result.explain()
    assert "is empty" in result.stderr, result.explain()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["logs", "manifest.jsonl"]
