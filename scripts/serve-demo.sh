#!/usr/bin/env bash
# Install uidhub into ./.venv and serve it with the demo data set on http://127.0.0.1:8000/graphql.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
exec .venv/bin/uidhub serve --demo "$@"
