# Bulkhead's entry points. `make help` lists them. Needs only python3 >= 3.11:
# the first target that runs Python creates .venv and generates the protobuf
# modules.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
PROTO_STAMP := bulkhead/proto/.generated
PROTO_SOURCES := $(shell find protos -name '*.proto' 2>/dev/null)
PYTEST_ARGS ?=
# Limit for one test, fixtures included, so that a hang fails with a traceback
# (pytest-timeout) instead of stalling the run.
PYTEST_TIMEOUT_S ?= 180
PYTEST := $(PY) -m pytest --timeout=$(PYTEST_TIMEOUT_S)

# The benchmark's POST load comes from wrk (Debian package wrk). As root it is
# installed with apt-get when missing; otherwise the target stops and says so.
check_wrk = command -v wrk >/dev/null || \
	{ if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk; \
	else echo "bench: wrk is required: sudo apt-get install -y wrk" >&2; exit 1; fi; }

.DEFAULT_GOAL := help
.PHONY: help venv protos migrate up up-bg down test test-chaos lint fmt bench \
	bench-quick clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / \
		{printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: $(VENV_STAMP) ## Create .venv and install Bulkhead with its dev tools

$(VENV_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

protos: $(PROTO_STAMP) ## Lint protos/ with buf and generate bulkhead/proto/

$(PROTO_STAMP): $(VENV_STAMP) $(PROTO_SOURCES) buf.yaml scripts/gen_protos.py
	$(VENV)/bin/buf lint
	$(PY) scripts/gen_protos.py
	@touch $@

migrate: venv protos ## Apply database migrations (BULKHEAD_DATABASE_URL, default var/bulkhead.db)
	@mkdir -p var
	$(PY) -m chat_service.migrate

up: venv protos ## Run the whole stack in the foreground; Ctrl-C stops it
	$(PY) -m bulkhead.devstack up

up-bg: venv protos ## Start the whole stack in the background (stop it with make down)
	$(PY) -m bulkhead.devstack up --background

down: ## Stop the stack started by make up-bg
	@if [ -x $(PY) ]; then $(PY) -m bulkhead.devstack down; \
	else echo "no .venv: nothing to stop"; fi

test: venv protos ## Run unit, end-to-end and contract tests (starts what they need)
	$(PYTEST) tests -m "not chaos" $(PYTEST_ARGS)

# The crash suite sets its own per-test timeout (a few minutes per database)
# and prints its figures; CHAOS_SEED=<seed> replays a run.
test-chaos: venv protos ## Run the crash suite in tests/chaos (SQLite and PostgreSQL)
	$(PYTEST) tests/chaos -m chaos $(PYTEST_ARGS)

lint: venv ## Check style: ruff check, ruff format --check, buf lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/buf lint

fmt: venv ## Format the code and apply ruff's safe fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Needs PostgreSQL (BULKHEAD_BENCH_POSTGRES_URL, default postgres@127.0.0.1:5432)
# and installs the LangGraph peer into var/langgraph-venv on first use.
# BENCH_ARGS passes options, for example BENCH_ARGS="--sections ttft --repeats 1".
BENCH_ARGS ?=

bench: venv protos ## Run the full benchmark (about 25 min); writes docs/benchmarks.md
	@$(check_wrk)
	$(PY) -m bench $(BENCH_ARGS)

bench-quick: venv protos ## Run a short benchmark (under 2 min) for everyday checks
	@$(check_wrk)
	$(PY) -m bench --quick $(BENCH_ARGS)

clean: ## Remove generated code, caches and var/ (database, logs); keeps .venv
	@if [ -f var/devstack.pid ]; then $(MAKE) --no-print-directory down; fi
	rm -rf bulkhead/proto var .pytest_cache .ruff_cache .mypy_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
