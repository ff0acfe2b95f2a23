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

.PHONY: venv serve test lint clean

$(STAMP): constraints.txt setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	$(PIP) --no-deps monailabel==0.8.5
	touch $(STAMP)

venv: $(STAMP)

serve: venv
	$(BIN)/aiaa serve --host $(HOST) --port $(PORT) --model-repo $(MODEL_REPO)

lint: venv
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
