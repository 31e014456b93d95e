# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv on first use and reuse it afterwards.
PYTHON ?= python3
VENV ?= .venv
# CPU wheel by default. GPU users: make demo TORCH="torch --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

# Datasets live beside the checkout (read-only); point lorakit at them unless the caller already did.
ifneq ($(wildcard ../shared/data),)
export LORAKIT_DATA ?= $(abspath ../shared/data)
endif

.PHONY: demo test lint clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

# The main job: a LoRA fine-tune of SmolLM2-135M on E2E (at most a 6-minute training budget, under 10 minutes
# in all on 2 cores of either CPU kind), then dev generations.
demo: $(VENV)/.installed
	rm -rf runs/e2e-quick
	$(BIN)/lorakit train --config configs/e2e-smollm2-quick.toml

lint: $(VENV)/.installed
	$(BIN)/ruff check .

# one pytest-xdist worker per core (2 here): the suite is mostly single-threaded work and subprocesses
test: lint
	$(BIN)/python -m pytest -q -n $(shell nproc)

clean-venv:
	rm -rf $(VENV)
