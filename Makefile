# The two commands a newcomer runs: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-tools lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/product_reviews/demo.py

# Two workers (pytest-xdist), a test file each at a time: most e2e time is spent waiting on processes,
# so two workers nearly halve the suite on 2 cores. Each worker has its own shared server; tests that
# need a server of their own start one. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2

test: $(STAMP) test-tools
	$(BIN)/ruff check src tests bench examples
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# System tools some tests drive for real: a Prometheus server scrapes GET /metrics; a throwaway
# PostgreSQL (tests/postgres_support.py) holds the store and the cluster tests' shared database; a
# headless chromium (driven by Playwright) loads the dashboard's pages.
# Installed with apt-get when missing and we are root; otherwise those tests skip and say why.
test-tools:
	@command -v prometheus >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) \
		|| echo "prometheus is not installed: tests/test_metrics_prometheus.py will skip"; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
		|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
		|| echo "PostgreSQL is not installed: the PostgreSQL store and cluster tests will skip"; }
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium is not installed: the dashboard's browser tests will skip"; }

# lint-imports: the layers of src/moorage/ and the other import contracts in pyproject.toml
lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/lint-imports
	$(BIN)/ruff format --check src tests bench examples

bench: $(STAMP)
	$(BIN)/python bench/serving.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
