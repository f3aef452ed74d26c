# Two commands on a fresh machine: `make demo` (install + run the main job) and
# `make test` (install + lint + tests). Both create .venv/ and install everything there.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision pinned to releases that pip can install without a GPU toolchain.
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test lint bench clean

PLUGINS := $(sort $(dir $(wildcard plugins/*/pyproject.toml)))

$(BIN)/.installed: pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test]' $(addprefix -e ,$(PLUGINS))
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/lvm refine

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/refine_throughput.py --threads 1
	$(BIN)/python benchmarks/refine_throughput.py --threads 2

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
