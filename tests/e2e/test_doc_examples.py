"""Every Python example in the README and docs/ runs as written, and ends.

Each ```python block is run in a fresh interpreter in an empty folder; a
block that raises, or that does not end within a minute (an example that
leases the same job forever did once), fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "AGENTS.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def examples() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for number, match in enumerate(_BLOCK.finditer(page.read_text(encoding="utf-8"))):
            found.append((f"{page.name}#{number + 1}", match.group(1)))
    return found


def test_the_docs_have_python_examples() -> None:
    assert len(examples()) >= 2


@pytest.mark.parametrize(("where", "code"), examples(), ids=[w for w, _ in examples()])
def test_each_python_example_runs_and_ends(where: str, code: str, tmp_path: Path) -> None:
    ran = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, f"{where} failed:\n{ran.stderr[-2000:]}"
