# Two commands a newcomer needs, on Debian 12 as root. Each first installs the Debian packages it
# needs (scripts/install-deps.sh, lists in scripts/packages-demo.txt and packages-test.txt;
# quick when they are there, and no system daemon is started):
#   make demo   start a legacy Dovecot (MOVE hidden) and the proxy in front of it, on 127.0.0.1
#   make test   install everything into .venv and run the whole test suite
#   make check  the unit tier only (no IMAP server, no Debian packages): ruff, then the
#               server-free tests, in well under a minute
# Not Debian, or packages installed by hand: add SKIP_DEPS=1.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export SKIP_DEPS

.PHONY: test check lint demo bench clean deps-demo deps-test

deps-demo deps-test:
	@bash scripts/install-deps.sh $(@:deps-%=%)

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

lint: $(BIN)/.installed
	$(BIN)/ruff check imapmoveproxy tests bench scripts deploy
	$(BIN)/ruff format --check imapmoveproxy
	$(BIN)/mypy

# The packages first (python3-venv among them), then the venv: in this order even with -j.
test: deps-test
	@$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest

# The unit tier: tests/unit needs no IMAP server, no Debian package, no root.
UNIT_TESTS := tests/unit

check: $(BIN)/.installed
	$(BIN)/ruff check imapmoveproxy $(UNIT_TESTS)
	$(BIN)/python -m pytest -q $(UNIT_TESTS)

demo: deps-demo
	@$(MAKE) --no-print-directory $(BIN)/.installed
	$(BIN)/python scripts/demo.py

bench: $(BIN)/.installed
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
