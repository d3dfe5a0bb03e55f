"""Manifest files as the tests write them: one JSON object per line.

Every test that needs a manifest on disk (in-process runs, command lines, the
runbooks, the chaos rounds) writes it here, so a change of the format is
made once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

Row = tuple[str, str, str]  # work_id, artifact_id, url


def write_jsonl(path: Path, rows: Sequence[Row | Mapping[str, str] | str]) -> Path:
    """Write ``rows`` at ``path`` as JSON Lines; returns ``path``.

    A tuple is ``(work_id, artifact_id, url)``, a mapping is written as it is
    (extra keys such as ``sha256`` included), and a str is written as the line
    itself, for the malformed rows a test wants.
    """
    lines = [_line(row) for row in rows]
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def _line(row: Row | Mapping[str, str] | str) -> str:
    if isinstance(row, str):
        return row
    if isinstance(row, tuple):
        work_id, artifact_id, url = row
        return json.dumps({"work_id": work_id, "artifact_id": artifact_id, "url": url})
    return json.dumps(dict(row))
