VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-vllm lint typecheck unit demo demo-cache observe clean

$(STAMP): pyproject.toml scripts/bootstrap.sh
	scripts/bootstrap.sh
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Two passes: the tests that do not depend on timing on every core, then the `serial` ones alone (their
# results assume the machine is theirs).
unit: $(STAMP)
	$(BIN)/pytest -n auto -m "not vllm and not serial"
	$(BIN)/pytest -m "serial and not vllm"

# pytest exits 5 when it collected no test, so an empty run fails here as it should.
test: lint typecheck unit

demo: $(STAMP)
	$(BIN)/epp demo

# Real vLLM (CPU build) behind epp: its own venv + tiny model under build/vllm (3.4 GB, built once, reused).
test-vllm: $(STAMP)
	scripts/vllm_testbed.sh
	$(BIN)/pytest tests/vllm -m vllm

# The demo's traffic with Prometheus attached: prints its URL and the dashboards to import (docs/operations.md).
observe: $(STAMP)
	$(BIN)/python -m bench.observe

# The response cache's seed check (docs/cache.md): starts its own redis-server and simulated pods.
demo-cache: $(STAMP)
	$(BIN)/python -m bench.cache_seed

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
