# The two commands: `make serve` and `make test`. Both create .venv from constraints.txt when it is
# missing or out of date, so a fresh clone needs nothing else than Python 3.11.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip install -q --disable-pip-version-check -c constraints.txt

HOST ?= 127.0.0.1
PORT ?= 5000
MODEL_REPO ?= model_repo

.PHONY: venv serve test lint audit browser redis clean

$(STAMP): constraints.txt setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev,cluster]'
	$(PIP) --no-deps monailabel==0.8.5
	touch $(STAMP)

venv: $(STAMP)

serve: venv
	$(BIN)/aiaa serve --host $(HOST) --port $(PORT) --model-repo $(MODEL_REPO)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/bandit -q -c pyproject.toml -r server aiaa_core apps bench slicer_plugin

# Known vulnerabilities of the pinned set (constraints.txt), looked up in PyPI's advisory data. Not part
# of `make test` or CI: it needs the vulnerability service, which may be unreachable.
audit: venv
	$(PIP) -e '.[audit]'
	$(BIN)/pip-audit --requirement constraints.txt --no-deps --disable-pip --progress-spinner off $(AUDIT_ARGS)

# The dashboard's browser test drives Debian's chromium through Playwright (never a browser download).
# Installed here when missing, as root with apt-get; elsewhere that test skips and says why.
browser:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium) \
	      || echo "apt-get could not install chromium: the dashboard browser test will skip"; \
	  else echo "no chromium, and no apt-get as root to install it: the dashboard browser test will skip"; fi; }

# The cluster tests (issue 15) start Debian's redis-server on a loopback port. Installed here when missing,
# as root with apt-get; elsewhere say so (those tests then fail with the reason).
redis:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server) \
	      || echo "apt-get could not install redis-server: the cluster tests cannot run"; \
	  else echo "no redis-server, and no apt-get as root to install it: the cluster tests cannot run"; fi; }

test: lint browser redis
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
