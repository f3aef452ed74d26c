# Two commands on a fresh machine: `make demo` (install + run the main job) and
# `make test` (install + lint + tests + docs). Both create .venv/ and install everything there.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision pinned to releases that pip can install without a GPU toolchain.
TORCH ?= torch==2.14.1 torchvision==0.29.1
# Every backend plugin under plugins/ is installed; a new one is picked up by the wildcard.
PLUGINS := $(wildcard plugins/*/pyproject.toml)
# mkdocs-material prints a banner about its successor on every build; keep the log quiet.
export NO_MKDOCS_2_WARNING := 1

.PHONY: install demo test lint pytest docs docs-serve bench clean

$(BIN)/.installed: pyproject.toml $(PLUGINS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test,docs]' $(foreach p,$(PLUGINS),-e $(dir $(p)))
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/lvm refine

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

pytest: install
	$(BIN)/python -m pytest

docs: install
	$(BIN)/mkdocs build --strict

docs-serve: install
	$(BIN)/mkdocs serve

test: lint pytest docs

bench: install
	$(BIN)/python benchmarks/refine_throughput.py --threads 1
	$(BIN)/python benchmarks/refine_throughput.py --threads 2

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site
