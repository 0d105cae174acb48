# Every target creates .venv from pyproject.toml first when it is missing or stale.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed

.PHONY: run test unit integration lint fmt bench bench-durability clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,embedded,bench]'
	touch $(STAMP)

# The whole pipeline: API on http://127.0.0.1:8000 and one worker, against DATABASE_URL and
# REDIS_URL, or, unset, a SQLite file and a Redis of its own under var/. Ctrl-C stops it all.
run: $(STAMP)
	$(BIN)/eventpipe run

# The whole suite. Integration tests run when Redis and PostgreSQL answer (and are required,
# never skipped, when EVENTPIPE_REQUIRE_SERVICES=1, as in CI).
test: $(STAMP)
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP)
	$(BIN)/pytest tests/integration

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Figures, not a test: eventpipe against a bare Starlette ceiling and a one-job-per-event RQ
# peer, under wrk, against BENCH_DATABASE_URL and BENCH_REDIS_URL (see bench/run.py).
bench: $(STAMP)
	$(BIN)/python bench/run.py

# Figures, not a test: accepted events/s and latency with REDIS_DURABILITY=aof and =fsync,
# against a private Valkey with AOF on (see bench/durability.py).
bench-durability: $(STAMP)
	$(BIN)/python bench/durability.py

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
