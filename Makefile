# The two commands a newcomer types: `make demo` (set up + the embedded CSS demo) and `make test`.
# Each creates .venv when missing and installs cirlab with the constraints file that pins the CPU torch wheel.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_EXTRAS ?= serve
TEST_EXTRAS ?= dev,serve,hf,pretrained,browser

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# One stamp per set of extras, so `make demo` stays a light install and `make test` adds the rest.
$(VENV)/.installed-demo: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[$(DEMO_EXTRAS)]'
	touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[$(TEST_EXTRAS)]'
	touch $@

demo: $(VENV)/.installed-demo
	$(BIN)/cirlab demo

test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

bench: $(VENV)/.installed-test
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_eval.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info
