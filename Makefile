# adcache: `make demo` shows it working, `make test` runs the whole suite. Both install what they
# need first (a venv in .venv with the Python deps, and a redis-server >= 7 if there is none).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test lint render check-render bench soak clean redis deps

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

test: $(STAMP) redis
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check python_client loader tests benchmarks
	$(BIN)/mypy

render: $(STAMP)
	$(BIN)/adcache render

check-render: $(STAMP)
	$(BIN)/adcache render --check

bench: $(STAMP) redis
	$(BIN)/python -m benchmarks

soak: $(STAMP) redis
	ADCACHE_SOAK_SECONDS=600 $(BIN)/pytest -q tests/reliability -k soak

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
