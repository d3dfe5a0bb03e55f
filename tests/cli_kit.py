"""Helpers for the tests that run ``docstokg`` as a user does: its environment, its errors.

One clean environment for every command line a test starts (in-process or as
a subprocess, the e2e tests and the chaos rounds alike), so that a developer's
``DOCSTOKG_*`` variables or colour settings never change what a test sees.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

# rich's switches that would colour or reflow the output a test reads.
RICH_SWITCHES = frozenset({"FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"})


def cli_env(*, columns: int = 200, **overrides: str) -> dict[str, str]:
    """os.environ without any DOCSTOKG_* variable nor rich's switches, plus ``overrides``.

    No colour, and a console ``columns`` wide: 200 keeps rich's tables whole,
    400 keeps each message of a run on one line of stderr.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("DOCSTOKG_") and name not in RICH_SWITCHES
    }
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = str(columns)
    env.update(overrides)
    return env


def explain(result: subprocess.CompletedProcess[str]) -> str:
    """Exit status and both outputs of a finished command: the message of a failed assert."""
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def error_line(result: subprocess.CompletedProcess[str], exit_code: int | None = None) -> str:
    """The one-line error a failed command prints on stderr (no traceback); returns it.

    ``exit_code`` None: any failing status will do.
    """
    if exit_code is None:
        assert result.returncode != 0, explain(result)
    else:
        assert result.returncode == exit_code, explain(result)
    assert "Traceback" not in result.stderr, explain(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, explain(result)
    assert lines[0].startswith("error: "), explain(result)
    return lines[0]


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///`` URL."""
    return Path(url.removeprefix("sqlite:///"))


def free_port() -> int:
    """A loopback port that was free a moment ago and has no listener now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
