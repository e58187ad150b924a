# dslab: `make lab` opens the course, `make test` checks everything. Both set the environment up first.
# Variables (override on the command line, e.g. `make setup TORCH=cpu` or `make test ENV=conda`):
#   ENV=venv|conda   where to install (default venv: .venv with pip; conda uses environment.yml)
#   TORCH=auto|cpu|cuda   which PyTorch build (auto: cuda when nvidia-smi sees a GPU)
#   PYTHON=python3.11   interpreter that creates the venv
SHELL := /bin/bash
ENV ?= venv
TORCH ?= auto
TORCH_VERSION ?= 2.13.0
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
CONDA_ENV ?= dslab
JOBS ?= 2
SUBMISSIONS ?= submissions
OUT ?= build/grades

ifeq ($(ENV),conda)
  CONDA := $(shell command -v mamba || command -v conda)
  PY := $(CONDA) run --no-capture-output -n $(CONDA_ENV) python
  STAMP := build/.conda-$(CONDA_ENV).done
else
  PY := $(VENV)/bin/python
  STAMP := $(VENV)/.done
endif
HEADLESS := DSLAB_HEADLESS=1 TQDM_DISABLE=1 MPLBACKEND=Agg
# Targets that run JOBS processes side by side give each one thread, so 2 jobs on 2 cores do not fight.
PARALLEL := $(HEADLESS) OMP_NUM_THREADS=1

.PHONY: setup lab run test lint unit notebooks labs solutions grade bench doctor browser-check html clean

setup: $(STAMP)

$(VENV)/.done: requirements.txt pyproject.toml tools/install_torch.sh
	$(PYTHON) -m venv $(VENV)
	bash tools/install_torch.sh $(PY) $(TORCH) $(TORCH_VERSION)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q -e .
	touch $@

build/.conda-$(CONDA_ENV).done: environment.yml pyproject.toml
	@test -n "$(CONDA)" || { echo "ENV=conda needs conda or mamba on PATH"; exit 2; }
	$(CONDA) env update -n $(CONDA_ENV) -f environment.yml --prune
	mkdir -p build && touch $@

# Extra JupyterLab options, e.g. LAB_ARGS="--no-browser --port 8890"; root (containers, Colab-like VMs) needs --allow-root.
LAB_ARGS ?=
lab: setup
	$(PY) -m jupyter lab labs/ $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# Execute the whole course headless, one line per lab, and record each lab's time and key numbers in
# solutions/runs.json (FAST=1: the FAST pass). `python -m dslab coursemap` then rewrites README's course map.
FAST ?=
run: setup
	$(HEADLESS) $(PY) -m dslab run --record $(if $(FAST),--fast)

test: setup lint unit notebooks browser-check

lint: setup
	$(PY) -m ruff check dslab tests tools

unit: setup
	$(PARALLEL) $(PY) -m pytest -q -n $(JOBS) --dist loadscope tests

# Every solution notebook, prepared with FAST=True, executed once by nbval: cells run headless and the cells tagged
# nbval-check-output must print what the committed solution printed.
notebooks: setup
	rm -rf build/nbval && mkdir -p build/nbval
	for nb in solutions/*.ipynb; do \
	  $(PY) -m papermill --prepare-only -p FAST True "$$nb" "build/nbval/$$(basename $$nb)" -k python3 2>/dev/null || exit 1; \
	done
	$(PARALLEL) $(PY) -m pytest -q -p no:python --nbval-lax --nbval-current-env --nbval-sanitize-with \
	  .nbval_sanitize.cfg --nbval-cell-timeout 600 -n $(JOBS) --dist loadscope build/nbval

labs: setup
	$(PY) -m dslab build

# Execute the solutions with their saved parameters and write them back, normalized, then regenerate labs/.
solutions: setup
	$(HEADLESS) $(PY) -m dslab run --update-solutions
	$(PY) -m dslab build

grade: setup
	$(PY) -m dslab grade $(SUBMISSIONS) --out $(OUT) --jobs $(JOBS)

bench: setup
	$(PY) -m dslab.bench

doctor: setup
	$(PY) -m dslab doctor

# Every solution run in a real JupyterLab driven by headless Chromium (widgets moved, pictures and console checked),
# then the static HTML copy. Part of `make test` when Debian's chromium (apt-get install -y chromium) and playwright
# (`$(PY) -m pip install playwright`, without `playwright install`) are present; otherwise one line says so.
CHROMIUM ?= /usr/lib/chromium/chromium
browser-check: setup
	@if [ -x $(CHROMIUM) ] && $(PY) -c "import playwright" 2>/dev/null; then \
	  $(PY) -m dslab html --out build/html >/dev/null && \
	  $(PY) tools/browser_check.py --out build/browser --html build/html --chromium $(CHROMIUM) --jobs $(JOBS); \
	else \
	  echo "skipped: browser check (needs Debian's chromium and playwright: sudo apt-get install -y chromium;" \
	       "$(PY) -m pip install playwright)"; \
	fi

html: setup
	$(PY) -m dslab html --out build/html

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache dslab.egg-info
