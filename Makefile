# certctl developer entry points.
#   make run    install into .venv and start the server on SQLite (HTTPS, generated TLS cert, printed admin key)
#   make test   install everything (Python packages and the Debian packages the tests use), lint, run every test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JUNIT := $(VENV)/pytest-report.xml
export PYTHON

.PHONY: install run demo test lint system-deps bench clean

$(STAMP): pyproject.toml
	.ci/system-deps.sh venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/certctl server

demo: $(STAMP)
	$(BIN)/certctl server --demo

# openssl, curl, PostgreSQL server and client, and a reachable test database; fails if any is still missing.
system-deps:
	.ci/system-deps.sh test

lint: $(STAMP)
	$(BIN)/ruff check certctl tests bench .ci
	$(BIN)/mypy
	$(BIN)/lint-imports

# Every test runs (no markers deselected); a run that collects nothing or skips anything fails.
# Three workers on two cores: many tests wait on real servers and clients they start, and a third worker fills
# those waits (measured: 7.9 min with -n 3 against 11.8 min with -n 2).
test: $(STAMP) system-deps lint
	$(BIN)/pytest -q -n 3 -p no:cacheprovider --junitxml=$(JUNIT) tests
	$(BIN)/python .ci/no_skips.py $(JUNIT)

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) certctl-data .mypy_cache .ruff_cache
