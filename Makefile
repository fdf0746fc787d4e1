# Two entry points for a fresh machine: `make run` and `make test`.
# Each creates its own virtual environment (.venv) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SOURCES := pyproject.toml setup.py $(wildcard fastpath/*.pyx fastpath/*.pxd fastpath/*.h)

.PHONY: install run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel

$(VENV)/.installed: $(BIN)/python $(SOURCES)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/switchd run $(ARGS)

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest $(ARGS)

bench: install
	$(BIN)/python -m bench.codec

clean:
	rm -rf build $(VENV) fastpath/*.c fastpath/*.so *.egg-info
