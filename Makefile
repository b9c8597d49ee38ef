# Two entry points do all the set-up on a fresh machine with only Python and pip:
#   make demo   - virtual environment + install + a short 2-rank DeepFM training (dist auto) on generated data
#   make test   - virtual environment + install + the whole test suite (multi-rank tests included)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUNS   ?= runs
export OMP_NUM_THREADS ?= 1
export NUMBA_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[mpich,test,plot]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/desmpi demo --out $(RUNS)/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check desmpi sim tests scripts

bench: $(STAMP)
	$(BIN)/desmpi bench data

clean:
	rm -rf $(VENV) $(RUNS) build *.egg-info .pytest_cache
