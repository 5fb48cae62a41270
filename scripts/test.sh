#!/bin/sh
# Set up and run every check on a fresh machine: Debian's chromium for the dashboard test, a virtual
# environment installed from requirements.lock, then lint (ruff), types (mypy) and the tests (pytest).
# PYTHON picks the interpreter (default python3), VENV the environment's folder (default .venv).
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
sh scripts/browser-deps.sh
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q -c requirements.lock -e '.[test]'
echo "checks on $("$VENV/bin/python" --version)"
"$VENV/bin/ruff" check .
VENV="$VENV" sh scripts/typecheck.sh
"$VENV/bin/pytest" "$@"
