# Two commands do all set-up:  `make demo`  and  `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-quick demo-caption test lint format clean-venv

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/byg demo --out runs/demo

demo-quick: $(STAMP)
	$(BIN)/byg demo --quick --out runs/demo-quick

demo-caption: $(STAMP)
	$(BIN)/byg demo --config configs/toy_caption.yaml --out runs/demo-caption

test: $(STAMP)
	$(BIN)/ruff check byg tests benchmarks
	$(BIN)/python -m pytest -q -x --durations=15

lint: $(STAMP)
	$(BIN)/ruff check byg tests benchmarks
	$(BIN)/ruff format --check byg tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format byg tests benchmarks
	$(BIN)/ruff check --fix byg tests benchmarks

clean-venv:
	rm -rf $(VENV)
