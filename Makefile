# The two commands a newcomer types: `make demo` (set up + the embedded CSS demo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= dev,serve,hf,pretrained,browser
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean

$(BIN)/cirlab: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	touch $(BIN)/cirlab

setup: $(BIN)/cirlab

demo: setup
	$(BIN)/cirlab demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs build *.egg-info
