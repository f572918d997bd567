# Everything installs into .venv on first use; nothing needs to be installed by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
BENCH  := $(VENV)/.installed-bench

# The tests' broker: empty = the plugin's choice (Apache Kafka from Maven when java and
# mvn are there, else the embedded one); or embedded, apache-kafka, docker.
BROKER ?=
ARGS   ?=
# pytest-xdist workers for the suites on a broker: the tests wait (group joins, session
# timeouts, subprocesses starting) far more than they compute, so more workers than cores
# pay off; they share one broker, which the controller process starts. WORKERS=0: no xdist.
WORKERS  ?= 4
PARALLEL := -n $(WORKERS) --dist worksteal

.PHONY: demo test lint unit integration integration-embedded bench broker broker-kafka install clean chaos chaos-quick

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

## demo: start the embedded broker (or use $$KAFKA_BOOTSTRAP_SERVERS), produce, consume, summarise
demo: $(STAMP)
	$(BIN)/python examples/demo.py

## test: lint, type-check, then the whole suite against a real broker (Apache Kafka
## from Maven Central when java >= 17 and mvn are there: the first run downloads ~45 MB)
test: lint
	ASYNCCONSUMER_TEST_BROKER=$(BROKER) $(BIN)/python -m pytest $(PARALLEL) $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

integration: $(STAMP)
	ASYNCCONSUMER_TEST_BROKER=$(BROKER) $(BIN)/python -m pytest tests/integration $(PARALLEL) $(ARGS)

## integration-embedded: every integration module on the embedded broker, except the
## tests that need Apache Kafka (marked apache_kafka: `make test` ran them)
integration-embedded: $(STAMP)
	ASYNCCONSUMER_TEST_BROKER=embedded $(BIN)/python -m pytest tests/integration -m "not apache_kafka" $(PARALLEL) $(ARGS)

## chaos: the reliability suite (reliability/, not part of `make test`): members killed,
## stopped, cut off by a proxy and restarted, broker nodes killed, poison pills, sustained
## load, on a 3-node Apache Kafka; a checker proves no loss, order, safe commits and bounded
## duplicates from the logs and the broker (about 9 minutes); then
## `python -m reliability.figures --write` puts its figures into docs/reliability.md
chaos: $(STAMP)
	$(BIN)/python -m pytest reliability -p no:cacheprovider $(ARGS)

## chaos-quick: the suite's own tests and one case of scenarios 1, 2, 4, 5, 6 (about 3 minutes)
chaos-quick: $(STAMP)
	$(BIN)/python -m pytest reliability -p no:cacheprovider -m chaos_quick $(ARGS)

$(BENCH): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $(BENCH)

## bench: every benchmark against baselines in the same run; one table, JSON and a PNG chart
bench: $(BENCH)
	$(BIN)/python -m benchmarks.run $(if $(BROKER),--broker $(BROKER)) $(ARGS)

## broker: the embedded broker in the foreground
broker: $(STAMP)
	$(BIN)/asyncconsumer broker

## broker-kafka: Apache Kafka (from Maven Central) in the foreground
broker-kafka: $(STAMP)
	$(BIN)/asyncconsumer broker --apache-kafka $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info

.PHONY: wheel-check

## wheel-check: build wheel + sdist, twine check, install the wheel in a fresh venv, try CLI and plugin
wheel-check: $(STAMP)
	$(BIN)/python -m tests.wheel_check

DOCS := $(VENV)/.installed-docs

$(DOCS): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,docs]'
	touch $(DOCS)

.PHONY: docs

## docs: build the documentation site into site/ (warnings are errors)
docs: $(DOCS)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
