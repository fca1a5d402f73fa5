# The course's two commands:  make course  (set up, open JupyterLab)  and  make test  (set up, run every test).
# Delivery:  make site (the website, site/)  make app (the workshop app)  make student (build/student/)
#            make wheelhouse / make install-offline (a room without Wi-Fi; docs/instructors/setup.md)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
NBVAL  := --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg
# CPU-only PyTorch on Linux (~1 GB instead of ~5 GB of CUDA libraries):
#   make course TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
# JupyterLab refuses to run as root (containers, cloud shells) unless told.
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

.PHONY: course test setup setup-test lint unit notebooks notebooks-other-isa colab-stack browser-deps bench execute gpu-check retarget clean \
	site app student wheelhouse install-offline time-notebooks

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
	$(BIN)/pip install -q -e ".[course,test,site,app]"
	touch $@

$(VENV)/.delivery: pyproject.toml | $(BIN)/python
	@echo ">> Installing camlib, the course's packages and the site/app tools into $(VENV)"
	$(BIN)/pip install -q -e ".[course,site,app]"
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

# Colab's stack: its torch, torchvision and ipywidgets (7.7: other widget code than 8's), from PyPI, put
# ahead of the venv's on PYTHONPATH (nothing in .venv changes); every notebook under nbval and the unit
# tests, but those of the browser, the site, the app, the installs and the student edition (JupyterLab,
# mkdocs, Voila and pip are not Colab's; nbval runs the notebooks here). Colab's Python is 3.12, this the venv's.
COLAB_PINS ?= torch==2.11.0 torchvision==0.26.0 ipywidgets==7.7.1 ipython-genutils==0.2.0
COLAB := .colab
$(COLAB)/.done: Makefile | $(BIN)/python
	@echo ">> Colab's packages into $(COLAB)/site (PyPI's torch wheel, about 0.5 GB; no CUDA libraries: --no-deps)"
	rm -rf $(COLAB) && mkdir -p $(COLAB)/wheels
	$(BIN)/pip download -q --no-deps -d $(COLAB)/wheels $(COLAB_PINS)
	$(BIN)/pip install -q --no-deps --no-compile --target $(COLAB)/site $(COLAB)/wheels/*.whl
	rm -rf $(COLAB)/wheels
	touch $@

colab-stack: $(VENV)/.test $(COLAB)/.done
	PYTHONPATH=$(CURDIR)/$(COLAB)/site $(BIN)/python tools/colab_stack.py $(COLAB_PINS)
	PYTHONPATH=$(CURDIR)/$(COLAB)/site $(BIN)/pytest -q -p no:cacheprovider tests $(NBVAL) notebooks/ \
	  --ignore=tests/test_browser.py --ignore=tests/test_site.py --ignore=tests/test_app.py \
	  --ignore=tests/test_install.py --ignore=tests/test_wheelhouse.py --ignore=tests/test_student_edition.py

# --durations: the slowest tests in the log (an intermittent ~10-minute idle wait has been seen in CI, source unknown)
test: setup-test lint
	$(BIN)/pytest -q --durations=15 tests $(NBVAL) notebooks/
	$(MAKE) --no-print-directory notebooks-other-isa
	$(MAKE) --no-print-directory colab-stack

# Re-execute every notebook in place (after changing camlib), with execution counts.
execute: $(VENV)/.test
	for nb in notebooks/[0-9]*.ipynb; do \
	  $(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=600 "$$nb" || exit 1; \
	done
	$(BIN)/python tools/strip_widget_state.py notebooks/[0-9]*.ipynb

bench: $(VENV)/.test
	$(BIN)/python benchmarks/bench_speed.py --repeat 9
	$(BIN)/python benchmarks/bench_methods.py
	$(BIN)/python benchmarks/bench_widgets.py

# On a machine with a CUDA GPU: CPU-vs-CUDA agreement of every method, every notebook on CUDA.
gpu-check: $(VENV)/.test
	$(BIN)/python tools/gpu_check.py

# Point every Colab badge and clone URL at a fork:  make retarget REPO=owner/name [BRANCH=main]
retarget:
	$(PYTHON) tools/retarget.py $(REPO) $(if $(BRANCH),--branch $(BRANCH))

# The course as a website in site/ (notebooks with their outputs, the instructor's kit, the API reference).
site: $(VENV)/.delivery
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site
	@echo ">> Open site/index.html through a web server, e.g.  $(BIN)/python -m http.server -d site 8000"

# The explorer as a web app without code (Voilà). A room sharing one machine: make app APP_HOST=0.0.0.0
APP_HOST ?= 127.0.0.1
APP_PORT ?= 8866
app: $(VENV)/.delivery
	JUPYTER_PATH=app $(BIN)/voila --template=offline --Voila.ip=$(APP_HOST) --port=$(APP_PORT) app/explorer.ipynb

# The notebooks without solutions, for learners (tools/student_edition.py; docs/instructors/exercises.md).
student:
	$(PYTHON) tools/student_edition.py --out build/student

# Every package the course needs, as files, for a room without a network (docs/instructors/setup.md):
#   make wheelhouse                       # here: this OS and Python; TORCH_INDEX=... for CPU-only torch
#   make wheelhouse WHEEL_PLATFORM=macosx_11_0_arm64 WHEEL_PYTHON=3.11 WHEELHOUSE=wheelhouse-mac
# then, on each laptop with the repository and the folder:  make install-offline [WHEELHOUSE=...]
WHEELHOUSE ?= wheelhouse
OFFLINE_EXTRAS ?= course
WHEEL_PLATFORM ?=
WHEEL_PYTHON ?=
WHEEL_TARGET := $(if $(WHEEL_PLATFORM),--platform $(WHEEL_PLATFORM) --only-binary=:all:) $(if $(WHEEL_PYTHON),--python-version $(WHEEL_PYTHON) --only-binary=:all:)
wheelhouse: | $(BIN)/python
	@echo ">> Building camlib's wheel into $(WHEELHOUSE)/"
	mkdir -p $(WHEELHOUSE)
	$(BIN)/pip wheel -q --no-deps -w $(WHEELHOUSE) .
	@if [ -n "$(TORCH_INDEX)" ]; then echo ">> Downloading torch and torchvision from $(TORCH_INDEX)"; \
	  $(BIN)/pip download -q -d $(WHEELHOUSE) $(WHEEL_TARGET) torch torchvision --index-url "$(TORCH_INDEX)"; fi
	@echo ">> Downloading every package of camlib[$(OFFLINE_EXTRAS)] into $(WHEELHOUSE)/ (PyPI's Linux torch: about 3 GB)"
	whl=$$(ls -v $(WHEELHOUSE)/camlib-*.whl | tail -n 1); \
	$(BIN)/pip download -q -d $(WHEELHOUSE) --find-links $(WHEELHOUSE) $(WHEEL_TARGET) \
	  "camlib[$(OFFLINE_EXTRAS)] @ file://$$(realpath $$whl)" \
	  pip "setuptools>=77" wheel
	@echo ">> $(WHEELHOUSE)/: $$(ls $(WHEELHOUSE) | wc -l) files, $$(du -sh $(WHEELHOUSE) | cut -f1)"

# Install from the wheelhouse only: --isolated ignores pip's configuration and environment, --no-index every index.
install-offline:
	@test -d $(WHEELHOUSE) || { echo "No $(WHEELHOUSE)/ here: build it with 'make wheelhouse' where there is a network"; exit 1; }
	@echo ">> Creating $(VENV) and installing camlib[$(OFFLINE_EXTRAS)] from $(WHEELHOUSE)/ only (no network)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip --isolated install -q --no-index --find-links $(WHEELHOUSE) --upgrade pip
	$(BIN)/pip --isolated install -q --no-index --find-links $(WHEELHOUSE) -e ".[$(OFFLINE_EXTRAS)]"
	touch $(VENV)/.course

# How long each notebook takes, one at a time (the workshop plans in docs/instructors/ use these).
time-notebooks: $(VENV)/.test
	$(BIN)/python tools/time_notebooks.py

clean:
	rm -rf $(VENV) $(COLAB) test-output site build/student
