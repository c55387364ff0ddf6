# Two commands: `make serve` and `make test`. Both create .venv on first use.
# `make serve` installs only what serving needs; `make test` adds the dev extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SERVE_STAMP := $(VENV)/.installed
STAMP := $(VENV)/.installed-dev
LINTED := gateway providers tests $(wildcard benchmarks)

.PHONY: serve test lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(SERVE_STAMP)

# The dev extras include everything serving needs, so this stamp stands for both.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(SERVE_STAMP) $(STAMP)

serve: $(SERVE_STAMP)
	$(BIN)/llm-gateway serve $(if $(CONFIG),--config $(CONFIG),) $(if $(PORT),--port $(PORT),)

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest -q

# Requests (benchmarks.run, ~5 min), then many long paced streams (benchmarks.paced, ~15 min).
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.paced --chart benchmarks/results/paced-streams.png

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
