# Two commands on a fresh clone: `make dev` runs the platform, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test test-slow install clean browser test-tools

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

dev: $(STAMP)
	$(BIN)/orders dev

# Chromium (apt) and playwright-core (npm) for tests/browser; where they cannot be installed the
# browser test skips and says why, so a failure here does not stop the suite.
browser:
	-@sh scripts/install-browser.sh

# promtool (apt) for the alert-rule test; skipped with a message where it cannot be installed.
test-tools:
	-@sh scripts/install-test-tools.sh

test: $(STAMP) browser test-tools
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

clean:
	rm -rf $(VENV) .data
