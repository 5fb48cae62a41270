#!/bin/sh
# Refresh requirements.lock: install the newest versions pyproject.toml allows on the oldest Python the
# README names (3.11), then freeze them. Run `.ci/run` (both Pythons) before committing the new lock.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q -e '.[test]'
{
  echo "# Exact versions the tests passed with; pip installs them with -c requirements.lock."
  echo "# Refresh with: sh scripts/lock.sh (see the README)."
  # --all keeps setuptools (the packaging test builds the wheel with it); pip itself is the venv's own
  "$tmp/venv/bin/pip" freeze --all --exclude-editable | grep -v -e '^#' -e '^pip=='
} > requirements.lock
echo "wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages)"
