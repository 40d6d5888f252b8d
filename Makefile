# dbkeeper developer and demo tasks. `make demo` and `make test` work on a fresh machine
# with Python >= 3.11; everything is installed into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# An editable install is not byte-compiled as a wheel install is: compile once, so that
# every command does not compile dbkeeper's modules again (where bytecode is not written).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m compileall -q dbkeeper
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m compileall -q dbkeeper
	command -v chromium >/dev/null || $(BIN)/python -m playwright install chromium
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python $(DEMO)/build.py $(DEMO)
	cd $(DEMO) && ../$(BIN)/dbkeeper check
	cd $(DEMO) && ../$(BIN)/dbkeeper jobs
	cd $(DEMO) && ../$(BIN)/dbkeeper preview purge-logs
	cd $(DEMO) && ../$(BIN)/dbkeeper run --all
	cd $(DEMO) && ../$(BIN)/dbkeeper status
	cd $(DEMO) && ../$(BIN)/dbkeeper history

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/purge_sqlite.py
	$(BIN)/python bench/purge_postgres.py
	$(BIN)/python bench/run_overhead.py
	$(BIN)/python bench/export.py
	$(BIN)/python bench/scheduler.py

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check dbkeeper tests bench demo
	$(BIN)/ruff format --check dbkeeper tests bench demo
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(DEMO)/*.db $(DEMO)/*.db-* $(DEMO)/archive $(DEMO)/exports $(DEMO)/backups .mypy_cache .ruff_cache .pytest_cache
