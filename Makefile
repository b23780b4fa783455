# Two commands on a fresh clone: `make dev` runs the platform, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every install goes through the lock: the product's pins (requirements/production.txt, used by the
# Dockerfile) are a subset of these.
LOCK := requirements/dev.txt

.PHONY: dev test test-slow install lint format lock clean browser test-tools

$(STAMP): pyproject.toml tools/pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[test]' -e './tools[bench,dbos]'
	@touch $(STAMP)

install: $(STAMP)

dev: $(STAMP)
	$(BIN)/orders dev

# ruff (lint and format) over the repository, mypy over the product packages and the import
# contracts between layers (all configured in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Re-pin after changing a dependency in pyproject.toml or tools/pyproject.toml.
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet 'pip-tools>=7.4,<8'
	$(BIN)/pip-compile --quiet --strip-extras --no-header --annotation-style=line \
		pyproject.toml -o requirements/production.txt
	$(BIN)/pip-compile --quiet --strip-extras --no-header --annotation-style=line \
		--extra test --extra bench --extra dbos pyproject.toml tools/pyproject.toml -o $(LOCK)

# Chromium (apt) and playwright-core (npm) for tests/browser; where they cannot be installed the
# browser test skips and says why, so a failure here does not stop the suite.
browser:
	-@sh scripts/install-browser.sh

# promtool (apt) for the alert-rule test; skipped with a message where it cannot be installed.
test-tools:
	-@sh scripts/install-test-tools.sh

test: lint browser test-tools
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

clean:
	rm -rf $(VENV) .data
