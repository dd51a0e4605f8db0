# Two commands a fresh machine needs: `make demo` and `make test` (`make test-quick`: the
# tests that start no service: no Prefect server, flow, emdist process or Dask scheduler).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export DO_NOT_TRACK := 1

.PHONY: venv demo test test-quick test-deploy lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[pipeline,test]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/emdist demo

lint: venv
	$(BIN)/ruff check emdist pipeline flows tests benchmarks deploy
	$(BIN)/ruff format --check emdist pipeline flows tests benchmarks deploy
	$(BIN)/mypy

# Everything, also tests/system/test_real_deploy.py (root + Debian packages: see .ci/run).
test: lint
	$(BIN)/python -m pytest -q

# The quick subset: no services (Prefect, flows, CLI processes), no SLURM or Docker.
test-quick: venv
	$(BIN)/python -m pytest -q -m "not slow and not service and not real_deploy"

# deploy/ for real: a one-node SLURM cluster and the compose stack in Docker (as root).
test-deploy: venv
	$(BIN)/python -m pytest -q -m real_deploy

bench: venv
	$(BIN)/python benchmarks/bench_em.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
