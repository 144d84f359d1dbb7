# genscan: `make demo` runs the whole product on an embedded default; `make test` runs the suite.
# Both create .venv at the repo root and install into it; re-running is cheap once it exists.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.genscan-installed

.PHONY: install test demo clean

install: $(STAMP)

# Re-install only when the pinned dependencies change.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m jobs.demo

clean:
	rm -rf $(VENV) .pytest_cache demo-output
