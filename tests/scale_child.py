"""Worker processes for the scale tests: many threads each, leasing one ledger's jobs.

Run as ``python -m tests.scale_child URL PREFIX THREADS``.  It opens the
ledger (and checks its schema, the slow part of a first unit of work) and
says ``ready`` on stdout.  Then, for each line ``go OUT`` read on stdin (a
round), it runs THREADS workers named ``PREFIX:rN:wM`` until no job is left,
writes every grant they got to OUT, one JSON :class:`~tests.scale_kit.Claim`
a line, and says ``done``.  It exits at the end of stdin.  The parent starts
every round of all its children at once, so they really race each other; a
child that fails writes its traceback to stderr and exits non-zero.

The parent side is :class:`Fleet`, which runs threads of its own meanwhile.
Importing docstokg takes about a second of CPU: one fleet serves several
rounds rather than paying that for each.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from docstokg import Ledger
from tests.scale_kit import Claim, run_threads

READY = "ready"
DONE = "done"
# A round that has not ended in this long is stuck, not slow: its children are killed.
ROUND_TIMEOUT_S = 600.0


def main(argv: list[str]) -> int:
    url, prefix, threads = argv
    workers = int(threads)
    with Ledger.connect(url, pool_size=workers + 2) as ledger:
        ledger.now()  # the schema check and a first connection, before the first round
        print(READY, flush=True)
        for number, line in enumerate(sys.stdin):
            _, out = line.split(maxsplit=1)
            claims = run_threads(ledger, f"{prefix}:r{number}", workers)
            text = "".join(claim.to_json() + "\n" for claim in claims)
            Path(out.strip()).write_text(text, encoding="utf-8")
            print(DONE, flush=True)
    return 0


class Fleet:
    """Child processes of this module on one ledger, started together for each round.

    Use as a context manager: the children are told to stop on the way out,
    and killed if a round failed.
    """

    def __init__(self, url: str, folder: Path, *, processes: int, threads: int) -> None:
        self._folder = folder
        self._rounds = 0
        self._children = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.scale_child", url, f"p{n}", str(threads)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=Path(__file__).resolve().parents[1],
            )
            for n in range(processes)
        ]
        self._expect(READY)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for child in self._children:
            if exc_type is not None:
                child.kill()
            for stream in (child.stdin, child.stdout, child.stderr):
                if stream is not None:
                    stream.close()  # stdin's end is the end of the rounds
            child.wait()

    def round(self, alongside: Callable[[], list[Claim]] = list) -> tuple[list[Claim], list[Claim]]:
        """Start a round in every child, run ``alongside()`` here meanwhile; both sides' grants.

        Returns (the children's grants, what ``alongside`` returned).
        """
        outputs = [
            self._folder / f"round{self._rounds}-p{n}.jsonl" for n in range(len(self._children))
        ]
        self._rounds += 1
        watchdog = threading.Timer(ROUND_TIMEOUT_S, self._kill)
        watchdog.start()
        try:
            for child, out in zip(self._children, outputs, strict=True):
                assert child.stdin is not None
                child.stdin.write(f"go {out}\n")
                child.stdin.flush()
            here = alongside()
            self._expect(DONE)
        finally:
            watchdog.cancel()
        children = [
            Claim.from_json(line)
            for out in outputs
            for line in out.read_text(encoding="utf-8").splitlines()
        ]
        return children, here

    def _expect(self, word: str) -> None:
        for child in self._children:
            assert child.stdout is not None
            line = child.stdout.readline().strip()
            if line != word:
                child.kill()
                _, errors = child.communicate()
                raise AssertionError(
                    f"a scale child said {line!r}, not {word!r} (exit status "
                    f"{child.returncode}): {errors.strip() or '(nothing on stderr)'}"
                )

    def _kill(self) -> None:
        for child in self._children:
            child.kill()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
