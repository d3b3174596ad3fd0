# aotpt developer commands. `make install && make test` is the whole set-up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= ../shared/data
ARGS ?=

.PHONY: install test test-full train sweep bench lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python  ## venv + CPU torch first (the plain wheel pulls CUDA), then the package
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"

test:  ## fast suite: unit tests + short MiniLM runs on real data (~minutes, CPU)
	WANDB_MODE=disabled $(BIN)/pytest -m "not slow and not gpu" -q

test-full:  ## everything except GPU tests, slow learning checks included
	WANDB_MODE=disabled $(BIN)/pytest -m "not gpu" -q

train:  ## e.g. make train ARGS="task=mrpc method=aot reparam=fc"
	$(BIN)/python -m aotpt.train data_dir=$(DATA_DIR) $(ARGS)

sweep:  ## e.g. make sweep SWEEP=aot_glue_minilm
	$(BIN)/python -m aotpt.train -m --config-dir sweeps --config-name $(SWEEP) data_dir=$(DATA_DIR) $(ARGS)

bench:  ## training step time of AoT vs full fine-tuning on MiniLM
	$(BIN)/python -m aotpt.bench $(ARGS)

lint:
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format:
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

clean:
	rm -rf logs outputs multirun .cache .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
