# manualopt: `make demo` trains the demo on CPU, `make test` runs the checks. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
OLDEST_VENV ?= .venv-oldest
# torch first, pinned: a looser requirement asked for first could pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
# The newest and the oldest Lightning releases manualopt supports (pyproject.toml: lightning>=2.1,<2.7).
LIGHTNING_NEWEST ?= 2.6.6
LIGHTNING_OLDEST ?= 2.1.0
PIP_QUIET ?= -q

.DEFAULT_GOAL := help
.PHONY: help demo results test test-slow lint test-oldest bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

demo: $(VENV)/.installed ## Train the DCGAN recipe on CPU (~1 min): checkpoints, sample grids, curves, Fréchet distance
	$(VENV)/bin/python -m examples.dcgan_digits fit --config examples/configs/dcgan_digits.yaml \
		--trainer.max_epochs=60 --trainer.default_root_dir=runs/demo

results: $(VENV)/.installed ## Rerun every recipe over its seeds (~1 h on 2 cores) and rewrite examples/README.md's table
	$(VENV)/bin/python -m examples.results

test: lint $(VENV)/.installed ## Run ruff, mypy, the docstring examples and the test suite (newest supported Lightning)
	$(VENV)/bin/python -m pytest --doctest-modules manualopt
	$(VENV)/bin/python -m pytest -m "not slow"

test-slow: $(VENV)/.installed ## Run the recipes' learning tests (each trains a recipe to its quality margin; ~15 min)
	$(VENV)/bin/python -m pytest -m slow

lint: $(VENV)/.installed ## ruff (lint and format check) and mypy --strict
	$(VENV)/bin/ruff check manualopt tests examples
	$(VENV)/bin/ruff format --check manualopt tests examples
	$(VENV)/bin/mypy

bench: $(VENV)/.installed ## Time manualopt against hand-written Lightning and raw PyTorch (~10 min); updates README.md
	$(VENV)/bin/python tests/benchmark.py --write-readme

test-oldest: $(OLDEST_VENV)/.installed ## Run the test suite on the oldest supported Lightning
	$(OLDEST_VENV)/bin/python -m pytest -m "not slow"

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_QUIET) $(TORCH)
	$(VENV)/bin/pip install $(PIP_QUIET) "lightning==$(LIGHTNING_NEWEST)" -e ".[dev,examples]"
	touch $@

# Lightning 2.1 imports pkg_resources, which setuptools dropped in 70; torch's newer setuptools pin does not matter
# at run time, so pip's resolver note about it is expected.
$(OLDEST_VENV)/.installed: pyproject.toml Makefile
	test -x $(OLDEST_VENV)/bin/python || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/pip install $(PIP_QUIET) $(TORCH)
	$(OLDEST_VENV)/bin/pip install $(PIP_QUIET) "lightning==$(LIGHTNING_OLDEST)" -e ".[dev,examples]"
	$(OLDEST_VENV)/bin/pip install $(PIP_QUIET) "setuptools<70"
	touch $@

clean: ## Remove the virtual environments and caches
	rm -rf $(VENV) $(OLDEST_VENV) .pytest_cache .mypy_cache .ruff_cache
