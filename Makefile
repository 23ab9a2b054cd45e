# Two commands: `make demo` runs the pipeline on the bundled sample, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench venv clean

venv: $(STAMP)

# torch==2.13.0 first: a looser pin would pull the registry's multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/hardneg run examples/quickstart.yaml

test: $(STAMP)
	HF_HUB_OFFLINE=1 PYTHONPATH=tests $(BIN)/python -m pytest -q --durations=15

test-all: $(STAMP)
	HF_HUB_OFFLINE=1 PYTHONPATH=tests $(BIN)/python -m pytest -q --durations=15 -m "not gpu"

clean:
	rm -rf runs bench/out
