# Two commands do everything on a fresh clone:  `make study`  and  `make test`.
# Both first set up what is missing: a .venv with the locked Python packages.

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pip's global config may list index folders that do not exist; its warnings are noise here.
# (pipefail keeps pip's own failure; grep finding nothing left to print is not one.)
PIP_QUIET := { grep -v "is ignored: it is neither a file nor a directory" || true; }

# The pipeline's stages run `python -m study.<stage>`: the .venv's python, first on PATH.
DVC := PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc
# The study's size (params.yaml): quick | standard | full.
PROFILE ?= standard

.PHONY: setup system study study-quick data example ui test test-slow lint bench clean

setup: $(STAMP) system

# Debian packages, installed only when missing and only when we may (as root); otherwise
# say what is missing: a PostgreSQL server (the tracking-server test and recipe), SLURM
# and munge (the cluster test starts a throwaway SLURM cluster), TeX with poppler (the
# report stage builds paper/main.pdf; its tests read it back) and chromium (the browser
# test drives it through Playwright, which is told where it is and never downloads one).
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends
TEX_PACKAGES := latexmk texlive-latex-recommended texlive-latex-extra texlive-fonts-recommended poppler-utils
system:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v slurmctld >/dev/null && command -v slurmd >/dev/null && \
	  command -v munged >/dev/null || missing="$$missing slurm-wlm munge"; \
	command -v latexmk >/dev/null && command -v pdftotext >/dev/null && \
	  kpsewhich booktabs.sty >/dev/null 2>&1 || missing="$$missing $(TEX_PACKAGES)"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && $(APT_INSTALL) $$missing >/dev/null; \
	  else \
	    echo "setup: Debian packages missing:$$missing (install them, or run make as root)"; \
	  fi; \
	fi

# torch is pinned to 2.13.0 in requirements.lock, so pip takes the local CPU wheel
# instead of a multi-GB CUDA build; every other package is pinned there too.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | $(PIP_QUIET)
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]' 2>&1 | $(PIP_QUIET)
	$(PY) -c "import torch, hydra, mlflow, study"
	touch $(STAMP)

# The whole study through DVC, at the size PROFILE says (`make study PROFILE=full` on a
# cluster). Setting params.yaml's profile first keeps `make study` meaning the standard
# study even after a `make study-quick`; `dvc repro` alone runs whatever params.yaml says.
study: setup
	@case "$(PROFILE)" in quick|standard|full) ;; *) \
	  echo "make study: PROFILE=$(PROFILE): expected one of quick, standard, full"; exit 2;; esac
	sed -i 's/^profile: .*/profile: $(PROFILE)/' params.yaml
	$(DVC) repro

study-quick:
	$(MAKE) study PROFILE=quick

data: setup
	$(PY) -m study.data

# One fully instrumented run: a deep tanh net with Xavier init, logged to ./mlflow.db.
example: setup
	$(PY) -m study.train model.depth=16 model.activation=tanh model.init=xavier_normal

# The MLflow UI on ./mlflow.db (study/ui.py): bound to 127.0.0.1, one web worker, no job
# runner, telemetry off; it prints each experiment's runs view. `make ui PORT=5001`.
PORT ?= 5000
ui: $(STAMP)
	$(PY) -m study.tracking.ui --port $(PORT)

# The suite in two tiers. `make test`: every unit and integration test, the command line
# end to end (a run, its records and MLflow row, bad input, a divergence), then the numeric
# tests again under the CPU capabilities a user's machine may pick instead of this one's
# (PyTorch's vectorized kernels differ by instruction set), spread test by test (they share
# no state across tests). `make test-slow`: the end-to-end tier, marked `slow` -- the DVC
# pipeline on the quick profile, a throwaway SLURM cluster, a PostgreSQL-backed tracking
# server, the UI in a browser, sweeps killed and resumed, the width-400 reference table.
# CI runs both (.ci/run); docs/performance.md has their timings.
# One pytest worker per core: the suite is CPU-bound (on 2 cores a third worker only raised
# its CPU time by 27%; docs/performance.md). Each test file stays on one worker (the
# pipeline tests share one DVC run of the quick profile), handed out longest first
# (tests/conftest.py's order; xdist would otherwise start with the files of most tests).
# `pytest` alone runs both tiers in one process.
CPU_CAPABILITIES := default avx2
PYTEST := $(PY) -m pytest -n auto --dist loadfile --no-loadscope-reorder
test: setup
	$(PYTEST) -m "not slow" --durations=10
	@for cap in $(CPU_CAPABILITIES); do \
	  echo "numeric tests with ATEN_CPU_CAPABILITY=$$cap"; \
	  ATEN_CPU_CAPABILITY=$$cap $(PY) -m pytest -n auto --dist load -q -m "numeric and not slow" \
	    || exit 1; \
	done

test-slow: setup
	$(PYTEST) -m slow --durations=15

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) benchmarks/bench_step.py
	$(PY) benchmarks/bench_group.py
	$(PY) benchmarks/bench_sweep.py

clean:
	rm -rf outputs multirun mlruns mlartifacts mlflow.db mlflow.db-* results data/prepared
