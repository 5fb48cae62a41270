#!/bin/sh
# Set up and run every check on a fresh machine: Debian's packages some tests use, a virtual environment
# installed from requirements.lock (reused while the lock, pyproject.toml and the interpreter are unchanged),
# then lint (ruff), types (mypy), the fast tier (pure logic, `pytest -m "not slow"`) and the rest, several tests
# at a time (pytest-xdist).
# PYTHON picks the interpreter (default python3), VENV the environment's folder (default .venv); arguments,
# when given, go to one pytest run instead of the two tiers.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
sh scripts/system-deps.sh
stamp="$("$PYTHON" -c 'import sys; print(sys.version)' | head -1) $(cat requirements.lock pyproject.toml | cksum)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.surgegate-stamp" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q -c requirements.lock -e '.[test]'
  printf '%s\n' "$stamp" > "$VENV/.surgegate-stamp"
else
  echo "reusing $VENV (requirements.lock, pyproject.toml and $PYTHON unchanged)"
fi
echo "checks on $("$VENV/bin/python" --version)"
"$VENV/bin/ruff" check .
VENV="$VENV" sh scripts/typecheck.sh
if [ "$#" -gt 0 ]; then
  exec "$VENV/bin/pytest" "$@"
fi
"$VENV/bin/pytest" -m "not slow" -n 2
# The slow tier's tests mostly wait (on windows, processes, the broker), so TEST_WORKERS of them run side by
# side; the few that judge latency measured live (marked solo) run after them, alone.
"$VENV/bin/pytest" -m "slow and not solo" -n "${TEST_WORKERS:-4}" --durations=15  # where the time goes
"$VENV/bin/pytest" -m "slow and solo" --durations=5
