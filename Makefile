# Every target creates .venv from the lock files first when it is missing or stale.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed
BENCH_STAMP = $(VENV)/.installed-bench
# --no-deps: the lock files name every package already (pip would only re-resolve them).
PIP_LOCKED = $(BIN)/pip install --quiet --require-hashes --no-deps

.PHONY: run test test-slow unit integration lint fmt lock bench bench-durability bench-client clean

# The client library (client/, a distribution of its own) is installed beside the server for
# its tests; its one dependency, httpx2, is already in requirements-dev.txt.
$(STAMP): requirements-dev.txt requirements-build.txt pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP_LOCKED) -r requirements-build.txt -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e . -e ./client
	touch $(STAMP)

# The whole pipeline: API on http://127.0.0.1:8000 and one worker, against DATABASE_URL and
# REDIS_URL, or, unset, a SQLite file and a Redis of its own under var/. Ctrl-C stops it all.
run: $(STAMP)
	$(BIN)/eventpipe run

# The whole suite. Integration tests run when Redis and PostgreSQL answer (and are required,
# never skipped, when EVENTPIPE_REQUIRE_SERVICES=1, as in CI).
test: $(STAMP)
	$(BIN)/pytest

# The tests left out of `make test` for their length (CI runs them too).
test-slow: $(STAMP)
	$(BIN)/pytest -m slow

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP)
	$(BIN)/pytest tests/integration

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy .ci/smoke.py
	$(BIN)/hadolint Dockerfile

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The lock: one resolution of every dependency (all extras and the build backend) for every
# platform and Python eventpipe supports, with hashes, naming no index and no local path.
# requirements-bench.txt is all of it; the others are its subsets at the same versions:
# requirements.txt (what the image and a buildpack install), requirements-dev.txt (make,
# CI), requirements-build.txt (the build backend, to build the wheel offline).
# `make lock` keeps every pin that still fits pyproject.toml and moves only what must move;
# `make lock UPGRADE=1` takes the newest release of everything within the caps.
UV_VERSION = 0.13.9
# --no-config: this machine's own pip or uv settings (a local index) stay out of the lock.
UV_COMPILE = $(BIN)/uv pip compile --quiet --no-config --universal --generate-hashes \
	--python-version 3.11 --index-url https://pypi.org/simple --custom-compile-command 'make lock' \
	$(if $(UPGRADE),--upgrade)
BUILD_REQUIRES = $(BIN)/python -c "import tomllib; \
	print(*tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires'], sep='\n')"

lock: $(STAMP)
	$(BIN)/pip install --quiet 'uv==$(UV_VERSION)'
	$(BUILD_REQUIRES) | $(UV_COMPILE) pyproject.toml --all-extras - -o requirements-bench.txt
	$(UV_COMPILE) pyproject.toml -c requirements-bench.txt -o requirements.txt
	$(UV_COMPILE) pyproject.toml --extra dev --extra embedded -c requirements-bench.txt \
		-o requirements-dev.txt
	$(BUILD_REQUIRES) | $(UV_COMPILE) - -c requirements-bench.txt -o requirements-build.txt

$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(PIP_LOCKED) -r requirements-bench.txt
	touch $(BENCH_STAMP)

# Figures, not a test: eventpipe against a bare Starlette ceiling and a one-job-per-event RQ
# peer, under wrk, against BENCH_DATABASE_URL and BENCH_REDIS_URL (see bench/run.py).
bench: $(BENCH_STAMP)
	$(BIN)/python bench/run.py

# Figures, not a test: accepted events/s and latency with REDIS_DURABILITY=aof, =fsync and
# =replicated, against a private Valkey with AOF on and a replica (see bench/durability.py).
bench-durability: $(STAMP)
	$(BIN)/python bench/durability.py

# Figures, not a test: the producer library's send() cost and events/s, and a 1,000,000-line
# backfill killed once and resumed (see bench/client.py), against BENCH_DATABASE_URL and
# BENCH_REDIS_URL.
bench-client: $(STAMP)
	$(BIN)/python -m bench.client

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info build dist
