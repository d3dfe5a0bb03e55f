#!/usr/bin/env bash
# One entry point for a fresh clone:
#   ./run.sh demo    the main job: a demo on the embedded SQLite ledger
#   ./run.sh test    the whole test suite: ruff, mypy --strict, pytest on SQLite
#                    and on a throwaway PostgreSQL 15 and redis-server that the
#                    tests start and stop
# Each creates .venv and installs what it needs the first time (and again
# whenever pyproject.toml changes).  Extra arguments go to pytest / the demo.
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv

find_python() {
    local candidate
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return
        fi
    done
    echo "run.sh: docstokg needs Python >= 3.11 (python3.11, python3.12 ...) on PATH" >&2
    exit 2
}

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        echo "run.sh: creating $VENV" >&2
        "$(find_python)" -m venv "$VENV"
    fi
    local stamp="$VENV/.docstokg-installed" wanted
    wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
        echo "run.sh: installing docstokg and its test tools into $VENV" >&2
        "$VENV/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip
        "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e ".[test,bench]"
        echo "$wanted" >"$stamp"
    fi
}

pg_bindir() {
    # Where the PostgreSQL 15 server binaries are, as tests/pgcluster.py looks.
    local dir
    for dir in "${DOCSTOKG_PG_BINDIR:-}" /usr/lib/postgresql/15/bin \
        "$(command -v pg_config >/dev/null 2>&1 && pg_config --bindir)"; do
        if [ -n "$dir" ] && [ -x "$dir/initdb" ] && "$dir/initdb" --version | grep -q ' 15\.'; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

ensure_postgres() {
    # The tests start their own cluster from the server binaries; install them
    # if this machine lacks them and we may (root with apt, as in CI).
    if ! pg_bindir >/dev/null; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "run.sh: installing the PostgreSQL 15 server binaries" >&2
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
        fi
    fi
    if ! DOCSTOKG_PG_BINDIR=$(pg_bindir); then
        echo "run.sh: PostgreSQL 15 server binaries not found; install postgresql-15" \
            "or set DOCSTOKG_PG_BINDIR, or run DOCSTOKG_TEST_BACKENDS=sqlite ./run.sh test" >&2
        exit 2
    fi
    export DOCSTOKG_PG_BINDIR
}

ensure_redis() {
    # The host-politeness tests start their own redis-server (tests/redisserver.py);
    # install it if this machine lacks it and we may (root with apt, as in CI).
    if ! command -v "${DOCSTOKG_REDIS_SERVER:-redis-server}" >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "run.sh: installing redis-server" >&2
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
        fi
    fi
    if ! command -v "${DOCSTOKG_REDIS_SERVER:-redis-server}" >/dev/null 2>&1; then
        echo "run.sh: redis-server not found; install redis-server (Debian package)" \
            "or set DOCSTOKG_REDIS_SERVER to its path" >&2
        exit 2
    fi
}

case "${1:-}" in
demo)
    shift
    ensure_venv
    exec "$VENV/bin/docstokg" demo "$@"
    ;;
test)
    shift
    ensure_venv
    if [[ ",${DOCSTOKG_TEST_BACKENDS:-sqlite,postgresql}," == *,postgresql,* ]]; then
        ensure_postgres
    fi
    ensure_redis
    echo "== ruff" >&2
    "$VENV/bin/ruff" check src tests bench
    "$VENV/bin/ruff" format --check src tests bench
    echo "== mypy --strict" >&2
    "$VENV/bin/mypy"
    # Two test processes (the machines this runs on have 2 cores); each starts
    # its own throwaway PostgreSQL.  DOCSTOKG_TEST_WORKERS=0 runs in this process.
    echo "== pytest" >&2
    exec "$VENV/bin/pytest" -n "${DOCSTOKG_TEST_WORKERS:-2}" "$@"
    ;;
*)
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
