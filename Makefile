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

# The review-page tests drive headless Chromium (Debian `chromium`), the metrics tests a
# Prometheus Pushgateway (Debian `prometheus-pushgateway`, started by the tests on loopback),
# the alert-rule tests promtool (Debian `prometheus`; its server is not started):
# installed here when missing and we are root with apt-get (CI); elsewhere those tests skip
# and say why.
test: $(STAMP)
	@command -v chromium >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || true
	@test -x /usr/bin/prometheus-pushgateway || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus-pushgateway >/dev/null) || true
	@command -v promtool >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) || true
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m jobs.demo

clean:
	rm -rf $(VENV) .pytest_cache demo-output
