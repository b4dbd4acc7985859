# Two commands a newcomer needs:
#   make demo   start a legacy Dovecot (MOVE hidden) and the proxy in front of it, on 127.0.0.1
#   make test   install everything into .venv and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test lint demo bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

lint: $(BIN)/.installed
	$(BIN)/ruff check imapmoveproxy tests bench scripts deploy
	$(BIN)/ruff format --check imapmoveproxy
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

demo: $(BIN)/.installed
	$(BIN)/python scripts/demo.py

bench: $(BIN)/.installed
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
