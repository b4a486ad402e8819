# The two commands of the README: `make serve` and `make test`. Both create .venv first
# (and recreate it when pyproject.toml changes); only python3 and make are needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 9000

.PHONY: serve test lint typecheck pytest docs bench clean

$(STAMP): pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet --editable . --group dev
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/python -m trioserve --tcp $(HOST):$(PORT)

test: lint typecheck pytest docs

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# The suite under coverage (see [tool.coverage] in pyproject.toml): subprocesses write their
# own data files, combined here; the branch coverage report is printed even when a test fails.
pytest: $(STAMP)
	rm -f .coverage .coverage.*
	$(BIN)/coverage run -m pytest; status=$$?; \
	$(BIN)/coverage combine --quiet && $(BIN)/coverage report; \
	exit $$status

docs: $(STAMP)
	$(BIN)/sphinx-build --fail-on-warning --keep-going --quiet --builder html docs docs/_build/html

bench: $(STAMP)
	$(BIN)/python -m bench

# CPython's own socketserver, http.server and xmlrpc.server tests, run against trioserve
# (compat/run.py, docs/porting.md). .ci/run runs it after `make test`.
.PHONY: compat
compat: $(STAMP)
	$(BIN)/python -m compat

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
