# Two commands do all the set-up on a fresh machine:
#   make run    creates .venv, installs torch ($(TORCH)) and kdsearch, gets Fashion-MNIST and runs the
#               quick preset end to end into runs/quick with the demo teacher in teachers/
#               (TEACHER=train: train the teacher too; TEACHER=DIR: another teacher)
#   make test   the same set-up, then the import-layer contracts (lint-imports) and the test suite (what CI runs)
# TORCH is handed to pip as it is, so it may carry pip options, e.g.
#   make run TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
# A different TORCH reinstalls torch in the existing .venv.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TEACHER ?= teachers/fashion-mnist-resnet20
RUN_DIR ?= runs/quick
PYTEST_ARGS ?=
BIN := $(VENV)/bin
DATA_DIR := /usr/share/datasets/fashion-mnist
# one stamp per TORCH value: changing TORCH makes the stamp missing, so torch is installed again
TORCH_STAMP := $(VENV)/.torch-$(shell printf '%s' '$(TORCH)' | cksum | cut -d' ' -f1)
TEACHER_ARG := $(if $(filter train,$(TEACHER)),,--teacher $(TEACHER))

.PHONY: setup data run test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# uninstall first: a torch of the same version from another index (CPU or CUDA) would count as installed
$(TORCH_STAMP): | $(BIN)/python
	$(BIN)/python -m pip uninstall -q -y torch 2>/dev/null || true
	$(BIN)/python -m pip install -q $(TORCH)
	rm -f $(VENV)/.torch-*
	touch $@

$(BIN)/kdsearch: pyproject.toml $(TORCH_STAMP)
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
	$(BIN)/kdsearch run --data fashion-mnist --preset quick $(TEACHER_ARG) --out $(RUN_DIR) --resume

test: setup data
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
