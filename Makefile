# Everything installs into .venv on first use; nothing needs to be installed by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: demo test lint unit integration bench broker install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

## demo: start the embedded broker (or use $$KAFKA_BOOTSTRAP_SERVERS), produce, consume, summarise
demo: $(STAMP)
	$(BIN)/python examples/demo.py

## test: lint, type-check, then the whole suite against a real broker
test: lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration

## bench: throughput of the per-record path against a raw aiokafka loop, same run
bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

## broker: the embedded broker in the foreground
broker: $(STAMP)
	$(BIN)/asyncconsumer broker

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
