# Everything a fresh machine with only Python needs: `make up` runs surgegate,
# `make test` runs the test suite. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: up test bench install clean

$(BIN)/surgegate: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/surgegate

up: install
	$(BIN)/surgegate up --demo

test: install
	$(BIN)/pytest -q

bench: install
	$(BIN)/python benchmarks/ingest_throughput.py

clean:
	rm -rf $(VENV) *.egg-info
