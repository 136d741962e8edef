#!/usr/bin/env bash
# Install uidhub with its test extras into ./.venv and run every check: lint, format, types, then the tests.
# The install is repeated only when pyproject.toml changed since the last one (or there is no venv yet).
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.installed-pyproject.toml
if [ ! -x .venv/bin/python ] || ! cmp -s pyproject.toml "$stamp"; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  cp pyproject.toml "$stamp"
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python scripts/typecheck.py
# Two pytest-xdist workers (CI has 2 cores; the suite mostly waits on servers and databases). Each worker has
# its own PostgreSQL database and SQLite files and its own free ports; the tests of the shared Redis take
# turns (tests/support/db.py redis_lock). UIDHUB_TEST_WORKERS=0 runs in one process.
.venv/bin/python -m pytest -q -p no:cacheprovider -n "${UIDHUB_TEST_WORKERS:-2}" "$@"
