# make test: create .venv, install requirements.txt, lint (ruff), type-check inference/ and bundle/ (mypy), run the
# test suite (pytest).
# make demo: the whole chain on a synthetic phantom dataset (train -> export -> bundle -> local gateway -> score).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: venv lint typecheck test demo bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-kernel.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

lint: venv
	$(VENV)/bin/ruff check .

typecheck: venv
	$(VENV)/bin/mypy

test: lint typecheck
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

demo: venv
	$(PY) scripts/demo.py --out $(DEMO_DIR)

bench: venv
	$(PY) benchmarks/bench_loader.py
	$(PY) benchmarks/bench_predict.py

clean:
	rm -rf $(VENV) dist runs
