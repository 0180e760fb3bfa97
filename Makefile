# Two commands do all the set-up on a fresh machine:
#   make run    creates .venv, installs kdsearch (torch pinned to 2.13.0 unless TORCH=... is given),
#               gets Fashion-MNIST and runs the quick preset end to end into runs/quick
#   make test   the same set-up, then the import-layer contracts (lint-imports) and the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
RUN_DIR ?= runs/quick
PYTEST_ARGS ?=
BIN := $(VENV)/bin
DATA_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup data run test clean

$(BIN)/kdsearch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,postgres,dashboard]"
	touch $@

setup: $(BIN)/kdsearch

# The Debian package ships the full Fashion-MNIST, so the default works with no network;
# without root or apt, kdsearch downloads it (SHA-256 verified) on first use.
data:
	@if [ ! -f $(DATA_DIR)/train-images-idx3-ubyte.gz ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null || (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null) || true; \
	fi

run: setup data
	$(BIN)/kdsearch run --data fashion-mnist --preset quick --out $(RUN_DIR) --resume

test: setup data
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
