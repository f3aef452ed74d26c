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

.PHONY: install demo test lint pytest docs docs-serve bench bench-jobs clean

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

# The jobs benchmark (docs/jobs.md): Fashion-MNIST from Debian's package, a VAE trained on
# its train split (12 epochs, about 8 minutes on 2 cores), then refine jobs over 10k / 70k.
FASHION := /usr/share/datasets/fashion-mnist

$(FASHION)/train-images-idx3-ubyte.gz:
	apt-get install -y dataset-fashion-mnist || sudo apt-get install -y dataset-fashion-mnist

runs/fashion-vae/model.safetensors: $(BIN)/.installed $(FASHION)/train-images-idx3-ubyte.gz
	$(BIN)/lvm train --backend vae --dataset fashion-mnist --data-dir $(FASHION) \
		--epochs 12 --threads 2 -o runs/fashion-vae

bench-jobs: runs/fashion-vae/model.safetensors
	$(BIN)/python benchmarks/job_scaling.py --checkpoint runs/fashion-vae --out runs/job-scaling

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site
