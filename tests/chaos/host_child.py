"""One simulated machine of a fleet: ``docstokg run`` processes whose wall clock is off.

Started by :mod:`tests.chaos.test_multi_host` as the leader of a process
group of its own (a machine that can die whole): it starts ``--processes - 1``
copies of itself in its group, runs one download itself, waits for the copies
and exits with the worst exit code.  Each process builds its run as the CLI
does (:func:`docstokg.run.bootstrap.build_run`, settings from ``DOCSTOKG_*``),
except that it injects a :class:`~docstokg.ledger.clock.HostClock`
``--offset-s`` seconds off: what a machine whose clock drifted reads.  Lease
times must still come from the database's clock, so offsets change nothing.

Run as a script (it imports nothing of ``tests``): ``python host_child.py
MANIFEST --out PATH --db URL --offset-s S [--workers N] [--processes P]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from docstokg.cli.output import configure_logging
from docstokg.config import load_settings
from docstokg.ledger.clock import HostClock
from docstokg.manifest import read_manifest
from docstokg.run.bootstrap import build_run
from docstokg.run.reporting import LogReporter
from docstokg.run.runner import RunSettings


def main(argv: list[str]) -> int:
    args = _arguments(argv)
    copies = [
        subprocess.Popen([sys.executable, __file__, *_copy_argv(argv)], stdin=subprocess.DEVNULL)
        for _ in range(args.processes - 1)
    ]  # same process group: killing the machine kills them all
    code = run_once(args)
    return max([code, *(copy.wait() for copy in copies)])


def run_once(args: argparse.Namespace) -> int:
    """One download of the manifest, as ``docstokg run --idempotency --json`` does it."""
    settings = load_settings(None, enabled_flag=True)
    run_settings = RunSettings(
        out_dir=args.out, config=settings.config, workers=args.workers, db_url=args.db
    )
    configure_logging()
    download = build_run(
        read_manifest(args.manifest),
        run_settings,
        reporter=LogReporter(),
        clock=HostClock(args.offset_s),
    )
    summary = download.run()
    print(json.dumps(summary.to_json()), flush=True)
    return summary.exit_code


def _copy_argv(argv: list[str]) -> list[str]:
    """``argv`` for a copy: the same run, started by no one else."""
    return [*argv, "--processes", "1"]  # argparse keeps the last value


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--offset-s", type=float, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--processes", type=int, default=1)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
