VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test lint typecheck unit demo clean

$(STAMP): pyproject.toml scripts/bootstrap.sh
	scripts/bootstrap.sh
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

# pytest exits 5 when it collected no test, so an empty run fails here as it should.
test: lint typecheck unit

demo: $(STAMP)
	$(BIN)/epp demo

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
