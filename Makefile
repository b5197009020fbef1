# jungle: run `make help` for the targets. Everything runs inside .venv (made by `make install`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
JUNGLE := $(BIN)/jungle

# inputs of the pipeline targets (override on the command line: make features VIDEOS=...)
VIDEOS ?= ../shared/data/chimpandsee
FEATURES ?= features.h5
LABELS ?= labels.csv
RUN ?= runs/level1
OUT ?= predictions.csv
STORES ?=

.PHONY: help install install-browser test test-gpu lint features merge train-level1 train-level2 predict demo demo-images demo-finetune bench

help:
	@echo "make install   create .venv and install jungle with its dev tools"
	@echo "make install-browser  Debian's chromium + chromium-driver (the report's browser tests)"
	@echo "make test      run the test suite"
	@echo "make test-gpu  the GPU tests alone (CUDA GPU, NVDEC, pip install -e .[gpu])"
	@echo "make lint      ruff check"
	@echo "make features  VIDEOS=folder-or-csv FEATURES=out.h5: extract CNN features"
	@echo "make merge     STORES=\"a.h5 b.h5\" FEATURES=out.h5: merge stores (e.g. --shard slices)"
	@echo "make train-level1 FEATURES=f.h5 LABELS=labels.csv RUN=runs/NAME: level-1 models"
	@echo "make train-level2 RUN=runs/NAME: level-2 stacker"
	@echo "make predict VIDEOS=folder RUN=runs/NAME OUT=predictions.csv: batch prediction"
	@echo "make demo      the whole job on generated clips (prints the metrics)"
	@echo "make demo-images  the whole job on generated photo bursts (prints the metrics)"
	@echo "make demo-finetune  after make demo: per-fold fine-tuned vs frozen backbone"
	@echo "make bench     benchmarks (prints measured numbers)"

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e ".[dev,ray]"
	$(BIN)/python -c "import torch, torchvision, decord, av, timm, ray; print('jungle installed: torch', torch.__version__, 'ray', ray.__version__)"
	-$(MAKE) install-browser  # (a failure here only fails the report's browser tests)

# the tests of `jungle report` open it in a real headless Chromium (Debian's packages)
install-browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		/usr/bin/chromium --version; \
	else \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get install -y -q chromium chromium-driver \
		|| ($$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver); \
	fi

test:
	$(BIN)/python -m pytest

test-gpu:  # the GPU tests alone (a CUDA GPU, NVDEC and jungle[gpu] needed)
	$(BIN)/python -m pytest -m gpu

lint:
	$(BIN)/ruff check .

features:
	$(JUNGLE) features $(VIDEOS) --out $(FEATURES)

merge:
	$(JUNGLE) merge $(STORES) --out $(FEATURES)

train-level1:
	$(JUNGLE) train-level1 --features $(FEATURES) --labels $(LABELS) --run $(RUN)

train-level2:
	$(JUNGLE) train-level2 --run $(RUN)

predict:
	$(JUNGLE) predict $(VIDEOS) --run $(RUN) --out $(OUT)

demo:
	$(BIN)/python scripts/demo.py --out demo

demo-images:
	$(BIN)/python scripts/demo_images.py --out demo-images

demo-finetune:
	$(BIN)/python scripts/demo_finetune.py --demo demo

bench:
	$(BIN)/python scripts/bench_features.py
	$(BIN)/python scripts/bench_nvdec.py  # measures only where NVDEC is available
	$(BIN)/python scripts/bench_ray.py
	$(BIN)/python scripts/bench_store.py
	$(BIN)/python scripts/bench_level1.py
	$(BIN)/python scripts/bench_report.py
	$(BIN)/python scripts/bench_sequences.py
