# Every target creates or reuses the project venv (.venv) on its own.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: venv demo test lint bench bench-compress clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[spark,dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

## demo: generate the demo data, train the demo model if missing, score it on Beam's DirectRunner
demo: venv
	$(BIN)/python -m jobs.score --runner=DirectRunner

## lint: ruff (lint + format check), mypy, and the import contracts of docs/architecture.md (import-linter)
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## test: lint, then the whole test suite (slow end-to-end tests included)
test: lint
	$(BIN)/python -m pytest

## bench: whole-job speed on generated data (ROWS=2000000, REPEAT=1, WIDE=2400 rows of 250 KB texts by default),
## the start-up table, and the rivals of the bench extra (Ray Data)
ROWS ?= 2000000
REPEAT ?= 1
WIDE ?= 2400
bench: venv
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.run --rows=$(ROWS) --repeat=$(REPEAT) --wide=$(WIDE) --startup

## bench-train: training speed, 1 vs 2 worker processes, float32 vs mixed precision
## (TRAIN_ROWS=50000, EPOCHS=3; bench/train.py says why 2 cores favour one float32 process)
.PHONY: bench-train
TRAIN_ROWS ?= 50000
EPOCHS ?= 3
bench-train: venv
	$(BIN)/python -m bench.train --rows=$(TRAIN_ROWS) --epochs=$(EPOCHS) --workers=1,2

## bench-compress: make bench's compression paths alone: a float32 parent beside its int8,
## prune and distill versions (size, rows/s and ratio to the parent, held-out metric,
## jobs.compare verdict, the model call alone; bench/compress.py) on COMPRESS_ROWS
## generated rows, median of COMPRESS_REPEAT rounds
COMPRESS_ROWS ?= 2000000
COMPRESS_REPEAT ?= 3
bench-compress: venv
	$(BIN)/python -m bench.run --paths=float32,int8,int8_dynamic,prune,distill --rows=$(COMPRESS_ROWS) --repeat=$(COMPRESS_REPEAT)

clean-demo:
	rm -rf .demo
