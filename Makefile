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

demo: $(VENV)/.installed
	$(BIN)/lorakit demo

lint: $(VENV)/.installed
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
