# The two commands of the README: `make train` and `make test`. Both create .venv on first use
# and install into it once; a stamp file makes a second run reinstall nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_STAMP := $(VENV)/.torch-installed
DEPS_STAMP := $(VENV)/.swim-installed
ARGS ?=

.PHONY: setup train test test-all lint format demo-ablation clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first, at the versions this project is tested with (local wheels on our machines).
$(TORCH_STAMP): | $(PY)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	touch $@

$(DEPS_STAMP): pyproject.toml $(TORCH_STAMP)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(DEPS_STAMP)

train: setup
	$(PY) train.py $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

test-all: setup
	$(PY) -m pytest -m "" $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf logs .cache .pytest_cache .ruff_cache

# Text-only vs SWIM (ours and reference-exact) on the synthetic demo (CPU, three trainings of about
# 5 minutes a seed); prints the runs' validation grounding side by side with chance, the best-heads
# baseline and oracle. Several seeds and Hydra overrides for every run:
# `make demo-ablation ARGS="trainer.max_epochs=2 --seeds 42 1 2"`.
demo-ablation: setup
	$(PY) -m swim.train.ablation $(ARGS)
