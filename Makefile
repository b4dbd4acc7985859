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

# The unit tier: tests that need no IMAP server (a file moved or renamed drops out here, never
# out of make test).
UNIT_TESTS := tests/unit $(wildcard tests/test_framing.py tests/test_inflight.py \
	tests/test_move_guarded.py tests/test_move_listing.py tests/test_move_preflight.py \
	tests/test_move_properties.py tests/test_move_recovery.py tests/test_move_request.py \
	tests/test_move_uidplus.py tests/test_engine_client.py tests/test_engine_moves.py \
	tests/test_engine_upstream.py tests/test_copyflags.py tests/test_rollback.py \
	tests/test_capabilities.py tests/test_clientview.py)

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
