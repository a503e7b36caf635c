# certctl developer entry points. `make run` starts a working server; `make test` runs everything.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run demo test lint typecheck system-deps bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/certctl server

demo: $(STAMP)
	$(BIN)/certctl server --demo

# Debian packages the tests use (openssl and curl for the real-client checks).
system-deps:
	@command -v openssl >/dev/null && command -v curl >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl curl)

lint: $(STAMP)
	$(BIN)/ruff check certctl tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: $(STAMP) system-deps lint
	$(BIN)/pytest -q -n 2 -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python bench/cert_list.py

clean:
	rm -rf $(VENV) certctl-data .mypy_cache .ruff_cache
