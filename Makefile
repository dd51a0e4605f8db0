# Two commands a fresh machine needs: `make demo` and `make test` (`make test-quick`: the
# tests that start no process or cluster: no Prefect server, flow, emdist process or Dask
# cluster; the `service` marker is set by fixture in tests/conftest.py).
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

# Debian packages of tests/system/test_real_deploy.py: installed when missing, as root only
# (elsewhere those tests are skipped, saying what is missing).
ENSURE_PACKAGES = if [ "$$(id -u)" -eq 0 ]; then tools/ensure-debian-packages; fi

# Everything. As root, also deploy/ for real (SLURM, Docker) and the full-disk tests.
test: lint
	$(ENSURE_PACKAGES)
	$(BIN)/python -m pytest -q

# The quick loop: no process or cluster started (Prefect, flows, CLI, Dask), nothing slow;
# spread over one pytest-xdist worker per core (a module's tests stay on one worker, so its
# module-scoped fixtures are built once). `make test` stays in one process: its Prefect
# harness is one per session.
QUICK_WORKERS ?= auto
test-quick: venv
	$(BIN)/python -m pytest -q -m "not slow and not service and not real_deploy" \
		-n $(QUICK_WORKERS) --dist loadscope

# deploy/ for real: a one-node SLURM cluster and the compose stack in Docker (as root:
# `sudo make test-deploy`); fails, rather than skips, where they cannot run.
test-deploy: venv
	$(ENSURE_PACKAGES)
	EMDIST_REQUIRE_ROOT_TESTS=1 $(BIN)/python -m pytest -q -m real_deploy

bench: venv
	$(BIN)/python benchmarks/bench_em.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
