# numfed — every target bootstraps what it needs on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf

.PHONY: test demo bench soak soak-trust fuzz proto proto-check proto-baseline breaking lint typecheck pytest browser portal-shots clean ops-pictures

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

$(BUF):
	npm install --no-save --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION) >/dev/null
	$(BUF) --version

# Regenerate the committed Python code and stubs from protos/.
proto: $(STAMP)
	PY=$(PY) scripts/genproto.sh

# Fail if the committed generated code differs from a fresh generation.
proto-check: $(STAMP)
	rm -rf build/gencheck
	PY=$(PY) scripts/genproto.sh build/gencheck
	diff -r -x __pycache__ -x __init__.py build/gencheck/numfed/v1 numfed/v1
	@echo "generated code is up to date"

# The contracts as released: a buf image (no source info) of protos/ at the last release of v1
# (main at 0c24533, when v1 had no tag yet). `make breaking` proves that protos/ is still
# wire- and source-compatible with it (buf's FILE rules), offline, on a fresh clone.
PROTO_BASELINE := protos/v1.binpb.gz

breaking: $(STAMP) $(BUF)
	$(PY) scripts/protodeps.py build/protodeps
	$(BUF) breaking protos --against $(PROTO_BASELINE)

# At a release of the contracts: make protos/ as it is now the baseline of `make breaking`.
proto-baseline: $(STAMP) $(BUF)
	$(PY) scripts/protodeps.py build/protodeps
	$(BUF) build protos --exclude-source-info -o $(PROTO_BASELINE)

lint: $(STAMP) $(BUF) breaking
	$(BUF) lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Debian's Chromium (and CJK fonts) for the holder's page's browser tests: installed when missing
# and this is root with apt; otherwise those tests skip, saying why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    export DEBIAN_FRONTEND=noninteractive; apt-get update -q && \
	    apt-get install -y -q chromium fonts-noto-cjk; \
	  else \
	    echo "chromium is missing: the browser tests will skip (apt-get install chromium fonts-noto-cjk)"; \
	  fi; }

# No run hangs for good: each test has a ceiling (pytest-timeout, pyproject.toml), and the run
# as a whole gets PYTEST_CEILING; then SIGINT (pytest stops and reports, with the stuck test's
# traceback), and SIGKILL a minute later if even that does not end it. Exit status 124 then.
# The tests run in PYTEST_WORKERS processes (pytest-xdist), a test file to one worker, each
# worker with its own PostgreSQL server; PYTEST_WORKERS=0 runs them in this process.
PYTEST_CEILING ?= 45m
PYTEST_WORKERS ?= 2
pytest: $(STAMP) browser
	timeout --signal=INT --kill-after=60 $(PYTEST_CEILING) $(VENV)/bin/pytest -q \
	  -n $(PYTEST_WORKERS) --dist loadfile

# The screenshots docs/portal.md shows: the browser tests' steps, copied to docs/img/portal/.
portal-shots: $(STAMP) browser
	rm -rf build/screenshots
	NUMFED_REQUIRE_BROWSER=1 $(VENV)/bin/pytest -q tests/carrier_adapters/web/test_browser.py
	scripts/portal-shots.sh build/screenshots docs/img/portal

test: proto-check lint typecheck pytest

demo: $(STAMP)
	$(VENV)/bin/numfed demo

# Benchmarks beside their references (not part of `make test`); see docs/benchmarks.md.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

bench: $(BENCH_STAMP)
	$(PY) -m bench.suite

# Launch day: 10x the sustainable rate of a realistic mix for 5 minutes (not part of `make test`
# or `make bench`); see docs/benchmarks.md. Fails if anything that must hold did not.
SOAK_SECONDS ?= 300
soak: $(BENCH_STAMP)
	$(PY) -m bench.soak --seconds $(SOAK_SECONDS)

# The Grafana dashboard (docs/grafana/numfed.json) and a picture of each of its panels from a
# real run scraped by Prometheus (docs/img/ops/*.png); needs /usr/bin/prometheus. About 3 min.
ops-pictures: $(STAMP)
	$(PY) scripts/ops_pictures.py

# The long fuzz run (make test runs the same tests with a few examples each); see docs/fuzzing.md.
FUZZ_EXAMPLES ?= 700
fuzz: $(STAMP)
	NUMFED_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) NUMFED_FUZZ_STATS=build/fuzz-stats.json \
		$(VENV)/bin/pytest -q tests/fuzz
	@echo "calls and status codes per RPC: build/fuzz-stats.json"

# The long trust soak (make test runs a short one): a federation of processes under load while a
# carrier key rotates, the root rotates twice and a key is revoked; docs/trust-operations.md.
# SOAK_ARGS=--postgres puts the gateway on a throwaway PostgreSQL.
SOAK_DURATION ?= 600
soak-trust: $(STAMP)
	$(PY) -m numfed.testing.soak --duration $(SOAK_DURATION) $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .tools build .mypy_cache .pytest_cache .ruff_cache
