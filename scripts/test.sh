#!/usr/bin/env bash
# Install uidhub with its test extras into ./.venv and run every test, lint included.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
