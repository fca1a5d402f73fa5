# The course's two commands:  make course  (set up, open JupyterLab)  and  make test  (set up, run every test).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
NBVAL  := --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg
# CPU-only PyTorch on Linux (~1 GB instead of ~5 GB of CUDA libraries):
#   make course TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
# JupyterLab refuses to run as root (containers, cloud shells) unless told.
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

.PHONY: course test setup setup-test lint unit notebooks notebooks-other-isa browser-deps bench execute gpu-check retarget clean

$(BIN)/python:
	@echo ">> Creating the virtual environment $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@if [ -n "$(TORCH_INDEX)" ]; then echo ">> Installing torch and torchvision from $(TORCH_INDEX)"; \
	  $(BIN)/pip install -q torch torchvision --index-url "$(TORCH_INDEX)"; fi

$(VENV)/.course: pyproject.toml | $(BIN)/python
	@echo ">> Installing camlib and the course's packages into $(VENV) (PyTorch is large: a few minutes the first time)"
	$(BIN)/pip install -q -e ".[course]"
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	@echo ">> Installing camlib, the course's packages and the test tools into $(VENV) (a few minutes the first time)"
	$(BIN)/pip install -q -e ".[course,test]"
	touch $@

setup: $(VENV)/.course
setup-test: $(VENV)/.test browser-deps

course: setup
	$(BIN)/jupyter lab $(ROOT_FLAG) notebooks/

# Debian's Chromium for the real-browser test (never `playwright install`: no downloads here).
browser-deps:
	@command -v chromium >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo ">> Installing Debian's chromium for the browser test (apt-get, about 90 s)"; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null && echo ">> chromium installed"; }

lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

unit: setup-test
	$(BIN)/pytest -q tests

notebooks: $(VENV)/.test
	$(BIN)/pytest -q $(NBVAL) notebooks/

# The notebooks again under an emulated instruction set other than this CPU's (tools/other_isa.py):
# a printed digit that depends on float round-off fails here, whatever machine runs CI.
notebooks-other-isa: $(VENV)/.test
	@echo ">> nbval under an emulated instruction set: $$($(BIN)/python tools/other_isa.py)"
	env $$($(BIN)/python tools/other_isa.py) $(BIN)/pytest -q $(NBVAL) notebooks/

test: setup-test lint
	$(BIN)/pytest -q tests $(NBVAL) notebooks/
	$(MAKE) --no-print-directory notebooks-other-isa

# Re-execute every notebook in place (after changing camlib), with execution counts.
execute: $(VENV)/.test
	for nb in notebooks/[0-9]*.ipynb; do \
	  $(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=600 "$$nb" || exit 1; \
	done
	$(BIN)/python tools/strip_widget_state.py notebooks/[0-9]*.ipynb

bench: $(VENV)/.test
	$(BIN)/python benchmarks/bench_methods.py
	$(BIN)/python benchmarks/bench_widgets.py

# On a machine with a CUDA GPU: CPU-vs-CUDA agreement of every method, every notebook on CUDA.
gpu-check: $(VENV)/.test
	$(BIN)/python tools/gpu_check.py

# Point every Colab badge and clone URL at a fork:  make retarget REPO=owner/name [BRANCH=main]
retarget:
	$(PYTHON) tools/retarget.py $(REPO) $(if $(BRANCH),--branch $(BRANCH))

clean:
	rm -rf $(VENV) test-output
