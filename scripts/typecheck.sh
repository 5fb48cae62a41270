#!/bin/sh
# Type-check the package as it is installed: surgegate/ links the design card's top-level folders
# (surgegate/streams -> ../streams, ...), so mypy reads the tree under the names it is imported by.
# Settings: [tool.mypy] in pyproject.toml.
set -eu
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
"$VENV/bin/mypy" --config-file pyproject.toml surgegate
