# The course's two commands:  make course  (set up, open JupyterLab)  and  make test  (set up, run every test).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
NBVAL  := --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg

.PHONY: course test setup setup-test lint unit notebooks browser-deps bench execute clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.course: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[course]"
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[course,test]"
	touch $@

setup: $(VENV)/.course
setup-test: $(VENV)/.test browser-deps

course: setup
	$(BIN)/jupyter lab notebooks/

# Debian's Chromium for the real-browser test (never `playwright install`: no downloads here).
browser-deps:
	@command -v chromium >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

unit: setup-test
	$(BIN)/pytest -q tests

notebooks: $(VENV)/.test
	$(BIN)/pytest -q $(NBVAL) notebooks/

test: setup-test lint
	$(BIN)/pytest -q tests $(NBVAL) notebooks/

# Re-execute every notebook in place (after changing camlib), with execution counts.
execute: $(VENV)/.test
	for nb in notebooks/[0-9]*.ipynb; do \
	  $(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=600 "$$nb" || exit 1; \
	done
	$(BIN)/python tools/strip_widget_state.py notebooks/[0-9]*.ipynb

bench: $(VENV)/.test
	$(BIN)/python benchmarks/bench_methods.py
	$(BIN)/python benchmarks/bench_widgets.py

clean:
	rm -rf $(VENV) test-output
