# The two commands a new user needs: `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000
export FLASK_APP := wsgi

.PHONY: run test lint format docs migrate clean services

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall only when the pinned requirements change.
$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

## run: install, migrate the embedded SQLite database, start a job worker and serve on http://127.0.0.1:5000
run: $(VENV)/.installed
	@if (exec 3<>/dev/tcp/$(HOST)/$(PORT)) 2>/dev/null; then \
	  echo "Something already answers on $(HOST):$(PORT): stop it, or run on another port (make run PORT=5001)" >&2; exit 1; fi
	FLASK_ENV=$${FLASK_ENV:-development} $(BIN)/flask db upgrade
	@# A job worker runs beside the server; the trap stops it (SIGTERM: graceful) when the server stops.
	@# The app keeps werkzeug's own "Running on" line out of the logs (it logs at INFO with the access log),
	@# so the URL is printed here, once the server answers.
	@export FLASK_ENV=$${FLASK_ENV:-development}; \
	$(BIN)/flask jobs worker & worker=$$!; \
	( for _ in $$(seq 600); do \
	    if (exec 3<>/dev/tcp/$(HOST)/$(PORT)) 2>/dev/null; then \
	      echo "Serving on http://$(HOST):$(PORT) (admin dashboard: http://$(HOST):$(PORT)/admin/)"; exit 0; fi; \
	    sleep 0.1; done ) & banner=$$!; \
	trap 'kill $$banner 2>/dev/null; kill -TERM $$worker 2>/dev/null; wait $$worker' EXIT; \
	$(BIN)/flask run --host $(HOST) --port $(PORT)

## chromium: Debian's Chromium for the browser tests (tests/system/test_browser_client.py; CI runs as root)
.PHONY: chromium
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

## test: install everything the tests need, then run lint and the whole suite
test: $(VENV)/.installed-dev chromium
	$(BIN)/ruff check backend tests config.py wsgi.py bench
	$(BIN)/python -m pytest $(PYTEST_ARGS)

.PHONY: test-unit test-fast
## test-unit: the unit tests only (no app, database, peer or other process; seconds)
test-unit: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

## test-fast: unit and integration tests (the app in-process with real databases and peers; no other process)
test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q tests/unit tests/integration $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check backend tests config.py wsgi.py bench

format: $(VENV)/.installed-dev
	$(BIN)/ruff format backend tests config.py wsgi.py bench
	$(BIN)/ruff check --fix backend tests config.py wsgi.py bench

## docs: regenerate docs/errors.md from the error catalog
docs: $(VENV)/.installed
	FLASK_ENV=development $(BIN)/flask error-catalog

migrate: $(VENV)/.installed
	FLASK_ENV=$${FLASK_ENV:-development} $(BIN)/flask db upgrade

clean:
	rm -rf $(VENV) instance .pytest_cache .ruff_cache

.PHONY: bench-stats
## bench-stats: GET .../errors/stats latency (p50/p95) with 1,000,000 error events on SQLite and PostgreSQL
bench-stats: $(VENV)/.installed-dev
	$(BIN)/python bench/bench_stats.py $(BENCH_STATS_ARGS)

.PHONY: bench-breaker
## bench-breaker: circuit-breaker overhead, concurrency and fail-fast figures (docs/BENCHMARKS.md)
bench-breaker: $(VENV)/.installed-dev
	$(BIN)/python bench/bench_breaker.py

.PHONY: bench bench-logging
## bench: every benchmark one after another, one report in bench/results/<UTC>.md (BENCH_RUN_ARGS="--quick" or "--only stats,jobs")
bench: $(VENV)/.installed-dev
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m bench.run_all $(BENCH_RUN_ARGS)

## bench-flood: log lines, bytes and error rows per rejected request, one client at 20x its limit (before vs after #14)
.PHONY: bench-flood
bench-flood: $(VENV)/.installed-dev
	$(BIN)/python -m bench.bench_flood $(BENCH_ARGS)

## bench-logging: requests/s under gunicorn with logging + error statistics on vs off (installs wrk)
bench-logging: $(VENV)/.installed-dev
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m bench.bench_logging $(BENCH_ARGS)

.PHONY: bench-error-stack
## bench-error-stack: req/s and server CPU per request, full app (also with rate limits on) vs bare Flask (200, 404, 401) under gunicorn (installs wrk)
bench-error-stack: $(VENV)/.installed-dev
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m bench.bench_error_stack $(BENCH_ERROR_STACK_ARGS)

.PHONY: bench-request-overhead
## bench-request-overhead: µs per request of the app over bare Flask, per hook and layer (in process, no server)
bench-request-overhead: $(VENV)/.installed-dev
	$(BIN)/python -m bench.bench_request_overhead $(BENCH_REQUEST_OVERHEAD_ARGS)

.PHONY: bench-log-throughput
## bench-log-throughput: log lines/s of the real logging set-up, one process and 4 on one LOG_DIR, every line counted back
bench-log-throughput: $(VENV)/.installed-dev
	$(BIN)/python -m bench.bench_log_throughput $(BENCH_LOG_THROUGHPUT_ARGS)

.PHONY: bench-jobs
## bench-jobs: no-op jobs/s through the job records (SQLite; Redis + PostgreSQL) and wait after a killed worker
bench-jobs: $(VENV)/.installed-dev
	$(BIN)/python bench/bench_jobs.py $(BENCH_JOBS_ARGS)

.PHONY: bench-observability
## bench-observability: metrics/SLO hook cost per request, fault-injection check, health with a hung dependency
bench-observability: $(VENV)/.installed-dev
	$(BIN)/python bench/bench_observability.py

.PHONY: bench-hung
## bench-hung: healthy req/s under gunicorn while Stripe hangs, breakers on vs off vs no outage (installs wrk)
bench-hung: $(VENV)/.installed-dev
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/bench_hung_dependency.py $(BENCH_HUNG_ARGS)

.PHONY: fault-load soak
## fault-load: storage, email, Stripe and PostgreSQL fail in turn under load, workers SIGKILLed (FAULT_LOAD_SECONDS, default 90)
fault-load: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -s tests/system/test_fault_under_load.py $(PYTEST_ARGS)

## soak: RSS, descriptors and threads of web and job workers under steady load (SOAK_SECONDS, default 75)
soak: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -s tests/system/test_soak.py $(PYTEST_ARGS)

.PHONY: fuzz security consistency
## fuzz: schemathesis against /api/openapi.json of gunicorn on PostgreSQL + Redis (FUZZ_EXAMPLES per operation, identity and mode; default 20, >= 5,000 requests)
fuzz: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -s tests/system/test_fuzz_api.py $(PYTEST_ARGS)

## security: forged/expired JWTs, admin matrix, brute force, error-report abuse, header injection, canary secrets
security: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q tests/integration/test_security_tokens.py tests/system/test_security_system.py tests/integration/test_admin_matrix.py $(PYTEST_ARGS)

## consistency: breakers, rate limits, error stats and metrics agree across 4 gunicorn workers + 2 job workers
consistency: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q tests/system/test_consistency_multiprocess.py $(PYTEST_ARGS)
