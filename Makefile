# Two commands on a fresh machine with Python 3.11+ and make:
#   make serve   install into .venv and start the server on https://127.0.0.1:3000
#   make test    install into .venv (with test and dev extras), lint, type-check and run every test
# (make test-fast: the same without the tests marked `live`, which start processes)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install serve test test-fast lint completions bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

serve: install
	$(BIN)/specai server

# The tests start a few hundred Python processes (servers, the CLI): with PYTHONDONTWRITEBYTECODE set each would
# compile specai from source again (~3x slower to start), so compiled modules are cached, and compiled up front.
unexport PYTHONDONTWRITEBYTECODE
# Test processes run in parallel (pytest-xdist), each test module in one worker: most of the time is spent waiting
# on servers, so more workers than cores pays. PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= 4
PYTEST := $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile

# pytest exits 5 when it collected no tests: treat that as a failure, not a pass.
define run_pytest
	@$(BIN)/python -m compileall -q src tests >/dev/null
	@$(PYTEST) $(1) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc
endef

# The gate CI runs (.ci/run): lint, format, types, then every test; any failure stops it with a non-zero exit.
test: install lint
	$(call run_pytest,)

test-fast: install lint
	$(call run_pytest,-m "not live")

# ruff (with the C90, SIM, RUF, PT and ASYNC rules), ruff format, mypy strict on src/, checked bodies in tests/
lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/mypy --allow-untyped-defs --check-untyped-defs tests benchmarks

completions: install
	_SPECAI_COMPLETE=source_bash $(BIN)/specai > completions/specai.bash
	_SPECAI_COMPLETE=source_zsh  $(BIN)/specai > completions/_specai
	_SPECAI_COMPLETE=source_fish $(BIN)/specai > completions/specai.fish

bench: install
	$(BIN)/python benchmarks/bench_http.py
	$(BIN)/python benchmarks/bench_stream.py
	$(BIN)/python benchmarks/bench_relay.py
	$(BIN)/python benchmarks/bench_graph.py
	$(BIN)/python benchmarks/bench_mesh.py
	$(BIN)/python benchmarks/bench_login.py
	$(BIN)/python benchmarks/bench_cli.py
	$(BIN)/python benchmarks/bench_sync.py
	$(BIN)/python benchmarks/bench_scale.py

clean:
	rm -rf $(VENV) .pytest_cache
