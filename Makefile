# jungle: run `make help` for the targets. Everything runs inside .venv (made by `make install`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
JUNGLE := $(BIN)/jungle

# inputs of the pipeline targets (override on the command line: make features VIDEOS=...)
VIDEOS ?= ../shared/data/chimpandsee
FEATURES ?= features.h5

.PHONY: help install test lint features bench

help:
	@echo "make install   create .venv and install jungle with its dev tools"
	@echo "make test      run the test suite"
	@echo "make lint      ruff check"
	@echo "make features  VIDEOS=folder-or-csv FEATURES=out.h5: extract CNN features"
	@echo "make bench     throughput benchmark of feature extraction (prints measured numbers)"

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e ".[dev]"
	$(BIN)/python -c "import torch, torchvision, decord, av, timm; print('jungle installed: torch', torch.__version__)"

test:
	$(BIN)/python -m pytest

lint:
	$(BIN)/ruff check .

features:
	$(JUNGLE) features $(VIDEOS) --out $(FEATURES)

bench:
	$(BIN)/python scripts/bench_features.py
