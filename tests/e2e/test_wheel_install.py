"""The migrations ship inside the built wheel.

In a fresh virtualenv, a non-editable ``pip install`` of the repository
followed by ``docstokg db upgrade --db sqlite:///x.db`` works from any
directory: the Alembic revisions are package data, not files of the checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from docstokg.ledger.migrate import head_revision

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO_MIGRATIONS = REPO_ROOT / "src" / "docstokg" / "migrations"

INSPECT_INSTALLED = """
import json
from importlib.resources import files

import docstokg

migrations = files("docstokg") / "migrations"
print(json.dumps({
    "package_file": docstokg.__file__,
    "migrations": str(migrations),
    "env_py_is_file": (migrations / "env.py").is_file(),
}))
"""


def clean_env() -> dict[str, str]:
    """No setting that could lead the fresh venv back to the checkout or to a database."""
    env = dict(os.environ)
    for name in ("DOCSTOKG_DB_URL", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSAFEPATH"):
        env.pop(name, None)
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "200"
    return env


def run(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=clean_env(),
        check=False,
    )
    assert result.returncode == 0, (
        f"{' '.join(argv)} exited {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


def shipped_files(folder: Path) -> set[str]:
    return {
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.mark.slow
def test_non_editable_install_upgrades_a_database_from_any_directory(tmp_path: Path) -> None:
    assert (REPO_ROOT / "pyproject.toml").is_file()
    venv = tmp_path / "venv"
    bin_dir = venv / "bin"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    run(
        [
            str(bin_dir / "pip"),
            "install",
            "--disable-pip-version-check",
            "-q",
            str(REPO_ROOT),
        ],
        cwd=tmp_path,
        timeout=600,
    )

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # The installed package is the wheel's copy, and its migrations came with it.
    installed = json.loads(
        run([str(bin_dir / "python"), "-c", INSPECT_INSTALLED], elsewhere).stdout
    )
    package_file = Path(installed["package_file"]).resolve()
    assert package_file.is_relative_to(venv.resolve()), package_file
    assert not package_file.is_relative_to(REPO_ROOT.resolve()), package_file
    migrations = Path(installed["migrations"])
    assert migrations.resolve().is_relative_to(venv.resolve()), migrations
    assert installed["env_py_is_file"] is True
    versions = sorted(p.name for p in (migrations / "versions").glob("*.py"))
    assert versions, f"no revision in {migrations / 'versions'}"
    assert versions == sorted(p.name for p in (REPO_MIGRATIONS / "versions").glob("*.py"))
    assert shipped_files(REPO_MIGRATIONS) <= shipped_files(migrations)

    docstokg = str(bin_dir / "docstokg")
    upgraded = run([docstokg, "db", "upgrade", "--db", "sqlite:///x.db"], elsewhere)
    assert "schema_version: 9" in upgraded.stdout
    assert (elsewhere / "x.db").is_file()

    current = run([docstokg, "db", "current", "--db", "sqlite:///x.db", "--json"], elsewhere)
    status = json.loads(current.stdout)
    assert status["revision"] == status["head"] == head_revision()
    assert status["is_current"] is True
    assert status["schema_version"] == "9"
    assert sorted(p.name for p in elsewhere.iterdir() if not p.name.startswith("x.db-")) == ["x.db"]
