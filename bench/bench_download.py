"""Download speed against aria2c: the same files from nginx on loopback, in one run.

Two workloads (issue 15): 2,000 files of 64 KiB and 200 files of 4 MiB of
random bytes, served by an nginx this script starts itself (its own config,
port and prefix in a temporary folder; it works as root or not).  Each
workload is fetched, 8 at a time, by

* ``aria2c -j 8`` (one connection per file, no integrity check): the tool a
  user would pick instead;
* ``docstokg run --workers 8`` with the ledger off;
* ``docstokg run --workers 8 --idempotency`` with the ledger on (a fresh
  SQLite ledger in the output folder, the default).

Every tool runs as a command, as a user runs it, so its wall time includes
its start-up (the interpreter's imports for docstokg, measured apart as
"start-up" and printed so it can be subtracted).  Each round runs the three
tools on a fresh, empty output folder (deleted afterwards: the 4 MiB
workload writes 800 MiB per run), in an order that rotates from round to
round so that machine noise falls on all of them; the table shows each
tool's median wall time, its rate, its ratio to aria2c, and ledger on /
ledger off.  Every run is checked: exit code 0 and every file stored.

    .venv/bin/python bench/bench_download.py [--rounds 3] [--workers 8]
                                             [--workloads small,large] [--json]

Needs ``nginx`` and ``aria2c`` (Debian packages ``nginx`` and ``aria2``): run
as root, the script installs a missing one with ``apt-get install -y``;
otherwise it says what to install.  The files live under a temporary folder
(``--scratch`` to choose where; about 1 GiB free is needed).

Goal (issue 15): the ledger on at least as fast as aria2c on both workloads
(ratio to aria2c <= 1.00), and ledger on / ledger off <= 1.30.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCSTOKG = Path(sys.executable).parent / "docstokg"
TOOLS = ("aria2c", "docstokg off", "docstokg on")
_SERVE_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class Workload:
    """``count`` files of ``size`` bytes each, served from ``/<name>/<i>``."""

    name: str
    count: int
    size: int


WORKLOADS = {
    "small": Workload("small", 2_000, 64 * 1024),
    "large": Workload("large", 200, 4 * 1024 * 1024),
}


# --- the tools ------------------------------------------------------------------------


def require(binary: str, package: str) -> str:
    """The path of ``binary``; installed with apt-get when missing and running as root."""
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit(
            f"{binary} is not installed: run `sudo apt-get install -y {package}` (Debian "
            "package), or run this script as root and it installs it"
        )
    print(f"installing {package} (apt-get install -y {package}) ...", file=sys.stderr)
    command = ["apt-get", "install", "-y", "-q", package]
    if subprocess.run(command, stdout=subprocess.DEVNULL, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL, check=True)
        subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if not found:
        raise SystemExit(f"apt-get installed {package} but {binary} is still not on PATH")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


NGINX_CONF = """\
{user}worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
daemon off;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


@contextlib.contextmanager
def nginx(binary: str, root: Path, prefix: Path) -> Iterator[str]:
    """An nginx of our own serving ``root``; yields its base URL, stops it on exit."""
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # As root, nginx's workers would switch to "nobody", who cannot read a 0700 temp folder.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(user=user, prefix=prefix, port=port, root=root))
    command = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        _wait_listening(port, process, prefix)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait_listening(port: int, process: subprocess.Popen[str], prefix: Path) -> None:
    deadline = time.monotonic() + _SERVE_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            errors = process.stderr.read() if process.stderr else ""
            log = (prefix / "error.log").read_text(errors="replace") if prefix.exists() else ""
            raise SystemExit(f"nginx exited with {process.returncode}: {errors}{log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise SystemExit(f"nginx did not listen on 127.0.0.1:{port} within {_SERVE_TIMEOUT_S:g} s")


# --- the data ---------------------------------------------------------------------------


def make_files(root: Path, workload: Workload) -> None:
    """``workload.count`` files of random bytes under ``root/<name>/`` (each one distinct)."""
    folder = root / workload.name
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(workload.count):
        (folder / str(index)).write_bytes(os.urandom(workload.size))


def write_inputs(scratch: Path, base_url: str, workload: Workload) -> tuple[Path, Path]:
    """The docstokg manifest (JSON Lines) and the aria2c input file for ``workload``."""
    urls = [f"{base_url}/{workload.name}/{i}" for i in range(workload.count)]
    manifest = scratch / f"{workload.name}.jsonl"
    rows = (
        json.dumps({"work_id": f"W{i}", "artifact_id": "bin", "url": u}) for i, u in enumerate(urls)
    )
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    aria_input = scratch / f"{workload.name}.aria2"
    aria_input.write_text("".join(f"{u}\n  out={i}\n" for i, u in enumerate(urls)))
    return manifest, aria_input


# --- one run ------------------------------------------------------------------------


def command_for(tool: str, workers: int, manifest: Path, aria_input: Path, out: Path) -> list[str]:
    if tool == "aria2c":
        return [
            "aria2c", f"-j{workers}", "-i", str(aria_input), "-d", str(out),
            "--quiet", "--allow-overwrite=true", "--auto-file-renaming=false",
        ]  # fmt: skip
    command = [str(DOCSTOKG), "run", str(manifest), "--out", str(out), "--workers", str(workers)]
    command.append("--idempotency" if tool == "docstokg on" else "--no-idempotency")
    return [*command, "--json"]


@dataclass(frozen=True, slots=True)
class Timing:
    """One run: wall time, and CPU time (user + system) of the tool's process tree.

    On a shared machine the wall time carries the neighbours' noise; the CPU
    time is what the tool itself spent (nginx's share is in neither).
    """

    wall_s: float
    cpu_s: float


def timed(tool: str, workload: Workload, command: list[str], out: Path) -> Timing:
    """Run ``command``; check it succeeded and stored every file, then delete ``out``."""
    out.mkdir(parents=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    try:
        if done.returncode != 0:
            raise SystemExit(
                f"{tool} exited with {done.returncode} on the {workload.name} workload:\n"
                f"{done.stderr[-2000:]}{done.stdout[-2000:]}"
            )
        stored = _files_stored(out)
        if stored != workload.count:
            raise SystemExit(f"{tool} stored {stored} of {workload.count} files")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return Timing(elapsed, cpu)


def _files_stored(out: Path) -> int:
    artifacts = out / "artifacts"
    if artifacts.is_dir():  # docstokg: artifacts/<xx>/<sha256>
        return sum(1 for path in artifacts.rglob("*") if path.is_file())
    return sum(1 for path in out.iterdir() if path.is_file() and path.stat().st_size > 0)


def startup_s(rounds: int) -> float:
    """Median wall time of an interpreter importing ``docstokg run``'s modules: a fixed cost."""
    code = "import docstokg.cli, docstokg.run.runner"
    times = []
    for _ in range(max(rounds, 3)):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# --- the table ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    """Every run of every tool on one workload."""

    workload: Workload
    runs: dict[str, list[Timing]]

    def median_s(self, tool: str) -> float:
        return statistics.median(run.wall_s for run in self.runs[tool])

    def median_cpu_s(self, tool: str) -> float:
        return statistics.median(run.cpu_s for run in self.runs[tool])

    def to_json(self) -> dict[str, object]:
        aria, off = self.median_s("aria2c"), self.median_s("docstokg off")
        size_mib = self.workload.count * self.workload.size / 1024**2
        return {
            "workload": self.workload.name,
            "files": self.workload.count,
            "file_bytes": self.workload.size,
            "tools": {
                tool: {
                    "wall_s": [round(run.wall_s, 3) for run in runs],
                    "cpu_s": [round(run.cpu_s, 3) for run in runs],
                    "median_s": self.median_s(tool),
                    "median_cpu_s": self.median_cpu_s(tool),
                    "files_per_s": self.workload.count / self.median_s(tool),
                    "mib_per_s": size_mib / self.median_s(tool),
                    "vs_aria2c": self.median_s(tool) / aria,
                }
                for tool, runs in self.runs.items()
            },
            "on_over_off": self.median_s("docstokg on") / off,
        }


def print_table(results: list[Result], workers: int, rounds: int, start: float) -> None:
    print(f"\n{rounds} rounds, {workers} at a time, nginx on loopback; medians (each run in s)")
    header = (
        f"{'workload':<16} {'tool':<13} {'wall s':>7} {'cpu s':>7} {'files/s':>8} "
        f"{'MiB/s':>6} {'x aria2c':>8}  runs (wall s)"
    )
    print(header)
    print("-" * len(header))
    for result in results:
        workload = result.workload
        label = f"{workload.count:,} x {_size(workload.size)}"
        aria = result.median_s("aria2c")
        for tool in TOOLS:
            wall = result.median_s(tool)
            runs = " ".join(f"{run.wall_s:.2f}" for run in result.runs[tool])
            rate = workload.count * workload.size / 1024**2 / wall
            print(
                f"{label:<16} {tool:<13} {wall:>7.2f} {result.median_cpu_s(tool):>7.2f} "
                f"{workload.count / wall:>8,.0f} {rate:>6,.0f} {wall / aria:>8.2f}  {runs}"
            )
            label = ""
        ratio = result.median_s("docstokg on") / result.median_s("docstokg off")
        print(f"{'':<16} {'on / off':<13} {ratio:>7.2f}  (goal <= 1.30)")
    print(f"docstokg start-up (interpreter and imports), inside its times: {start:.2f} s")
    print("goal: docstokg on x aria2c <= 1.00 on both workloads; on / off <= 1.30")


def _size(size: int) -> str:
    return f"{size // 1024**2} MiB" if size >= 1024**2 else f"{size // 1024} KiB"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog=(__doc__ or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs per tool and workload")
    parser.add_argument("--workers", type=int, default=8, help="downloads at a time, every tool")
    parser.add_argument(
        "--workloads",
        default="small,large",
        help="comma-separated: small (2,000 x 64 KiB), large (200 x 4 MiB)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")
    parser.add_argument(
        "--scratch", type=Path, default=None, help="where the temporary folder goes"
    )
    args = parser.parse_args()
    try:
        chosen = [WORKLOADS[name.strip()] for name in args.workloads.split(",") if name.strip()]
    except KeyError as exc:
        raise SystemExit(f"unknown workload {exc}: choose among {', '.join(WORKLOADS)}") from None
    nginx_binary = require("nginx", "nginx")
    require("aria2c", "aria2")
    if not DOCSTOKG.exists():
        raise SystemExit(f"{DOCSTOKG} not found: run this with the project's .venv/bin/python")
    # SIGTERM unwinds like Ctrl-C: nginx is stopped and the temporary folder deleted.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    with tempfile.TemporaryDirectory(prefix="docstokg-bench-download-", dir=args.scratch) as tmp:
        scratch = Path(tmp)
        for workload in chosen:
            make_files(scratch / "www", workload)
        with nginx(nginx_binary, scratch / "www", scratch / "nginx") as base_url:
            results = [
                run_workload(workload, scratch, base_url, args.workers, args.rounds)
                for workload in chosen
            ]
        start = startup_s(args.rounds)
    if args.json:
        document = {
            "workers": args.workers,
            "rounds": args.rounds,
            "startup_s": start,
            "results": [result.to_json() for result in results],
        }
        print(json.dumps(document, indent=2))
    else:
        print_table(results, args.workers, args.rounds, start)


def run_workload(
    workload: Workload, scratch: Path, base_url: str, workers: int, rounds: int
) -> Result:
    """Every tool ``rounds`` times on ``workload``, the order rotating each round."""
    manifest, aria_input = write_inputs(scratch, base_url, workload)
    runs: dict[str, list[Timing]] = {tool: [] for tool in TOOLS}
    # One warm-up run: the files enter the page cache before anything is timed.
    warm = scratch / "warm"
    timed("aria2c", workload, command_for("aria2c", workers, manifest, aria_input, warm), warm)
    for number in range(rounds):
        for tool in TOOLS[number % 3 :] + TOOLS[: number % 3]:
            out = scratch / f"out-{workload.name}-{number}-{tool.replace(' ', '-')}"
            command = command_for(tool, workers, manifest, aria_input, out)
            runs[tool].append(timed(tool, workload, command, out))
        line = ", ".join(f"{tool} {runs[tool][-1].wall_s:.2f} s" for tool in TOOLS)
        print(f"  {workload.name} round {number + 1}: {line}", file=sys.stderr)
    return Result(workload, runs)


if __name__ == "__main__":
    main()
