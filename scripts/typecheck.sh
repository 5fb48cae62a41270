#!/bin/sh
# Type-check the installed layout: setuptools installs streams/, agents/, api/, schemas/ (and the other
# top-level folders) as sub-packages of `surgegate`, which mypy cannot see in the source tree. Build that
# package tree from symlinks in a temporary folder and check it there. Settings: [tool.mypy] in pyproject.toml.
set -eu
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
view=$(mktemp -d)
trap 'rm -rf "$view"' EXIT
mkdir "$view/surgegate"
for entry in surgegate/*; do ln -s "$PWD/$entry" "$view/surgegate/$(basename "$entry")"; done
"$VENV/bin/python" - "$view" <<'PY'
import os, sys, tomllib
view = sys.argv[1]
dirs = tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"]["package-dir"]
for package, folder in dirs.items():
    if package != "surgegate":
        os.symlink(os.path.abspath(folder), os.path.join(view, *package.split(".")))
PY
"$VENV/bin/mypy" --config-file pyproject.toml "$view/surgegate"
