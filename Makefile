# Every target bootstraps .venv by itself and is quick when nothing changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXT_SOURCES := $(wildcard _ext/*.pyx _ext/*.pxd _ext/*.h)

.PHONY: all demo test lint typecheck pytest bench clean

all: $(VENV)/.ext-stamp

$(VENV)/.installed: pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

$(VENV)/.ext-stamp: $(VENV)/.installed $(EXT_SOURCES)
	$(PY) setup.py -q build_ext --inplace
	touch $@

demo: $(VENV)/.ext-stamp
	$(VENV)/bin/segstore demo $(DEMO_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check segstore tests perf
	$(VENV)/bin/ruff format --check segstore tests perf

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

pytest: $(VENV)/.ext-stamp
	$(PY) -m pytest -q $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(VENV)/.ext-stamp
	$(PY) perf/compare.py $(BENCH_ARGS)

clean:
	rm -rf build $(VENV) segstore/_ext/*.so segstore/_ext/*.c _ext/*.c
