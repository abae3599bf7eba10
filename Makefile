# wine-init: every target that needs Python depends on the install stamp, so the first one
# a user runs installs the project into .venv. `make help` lists the targets.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build of torch, unless the venv already has a torch (a GPU user keeps theirs:
# create .venv with `python3 -m venv --system-site-packages .venv` over a CUDA torch).
TORCH_SPEC ?= torch==2.13.0
# PORT (make ui, make dashboard) is passed on only when set: each command has its own default
EXPERIMENT ?= experiments/lecture.toml
CONFIG ?= experiments/sweep.toml
SEEDS_CONFIG ?= experiments/seeds.toml
# make services: where PostgreSQL and the MLflow server listen (BIND=0.0.0.0 or a private
# address to let other machines in; see the README, "Running on several machines")
BIND ?= 127.0.0.1
PG_PORT ?= 5433
MLFLOW_PORT ?= 5001

# A user's value reaches the command as one argument, exactly as typed, and the shell runs
# nothing in it: `$(call quoted,STUDY)` takes the value unexpanded ($(value): make runs no
# `$(shell ...)` in it either) and single-quotes it, each ' written as '\''.
quote = '$(subst ','\'',$(1))'
quoted = $(if $(findstring $(newline),$(value $(1))),$(error $(1) holds a newline),$(call quote,$(value $(1))))
# make splits a recipe line at a newline, quotes or not, and runs each part
define newline


endef
# `--flag 'value'` when the variable is set, else nothing: $(call option,--study,STUDY)
option = $(if $(value $(2)),$(1) $(call quoted,$(2)))
# `'value'` when the variable is set, else nothing (CONFIG= passes no file)
positional = $(if $(value $(1)),$(call quoted,$(1)))
# make would also put command-line variables in the commands' environment, expanding them
# (and a `$(shell ...)` in them) on the way; after the defaults above, as unexport defines them
unexport TRIALS STUDY WORKERS CONFIG EXPERIMENT SEEDS_CONFIG COUNT RUN STEP PORT BIND PG_PORT MLFLOW_PORT STORAGE TRACKING ARGS ONLY OUT
# sweep options, passed on only when set: make sweep TRIALS=5 STUDY=name WORKERS=2
SWEEP_ARGS = $(call option,--trials,TRIALS) $(call option,--study,STUDY) $(call option,--workers,WORKERS)
# compare options: make compare STUDY=name STEP=60 RUN=<seed scan run id>
COMPARE_ARGS = $(call option,--study,STUDY) $(call option,--run,RUN) $(call option,--step,STEP)
# make train ARGS="--set lr=0.5 --set seed=3" (also make seeds, make sweep): ARGS is split on
# spaces, each word one argument (quotes in ARGS do not group words)
SET_ARGS = $(foreach word,$(value ARGS),$(call quote,$(word)))

.DEFAULT_GOAL := help
.PHONY: help install lock train sweep seeds compare export ui dashboard test test-slow test-browser test-services test-floor screenshots bench services services-stop worker clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# everything but torch and the project at the versions in requirements.lock (`make lock`
# remakes it; docs/dependencies.md), then the project itself, its dependencies already there
$(STAMP): pyproject.toml requirements.lock
	@echo "installing wine-init into $(VENV) (first time only: a minute or two)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

install: $(STAMP) ## install the project into .venv (the other targets do it when needed)

lock: ## remake requirements.lock: the newest versions pyproject.toml admits, resolved in a scratch venv
	PYTHON=$(call quoted,PYTHON) TORCH_SPEC=$(call quoted,TORCH_SPEC) .ci/lock.sh

train: $(STAMP) ## train the lecture's network once (EXPERIMENT=file.toml, ARGS="--set lr=0.5 --set seed=3", split on spaces)
	$(PY) -m harness train $(call positional,EXPERIMENT) $(SET_ARGS)

sweep: $(STAMP) ## run or continue the Optuna study (CONFIG=file.toml TRIALS=N STUDY=name WORKERS=N ARGS="--set key=value")
	$(PY) -m harness sweep $(call positional,CONFIG) $(SWEEP_ARGS) $(SET_ARGS)

worker: $(STAMP) ## join a shared study: STORAGE=postgresql://... TRACKING=http://host:port STUDY=name TRIALS=N (in total) [WORKERS=N]
	OPTUNA_STORAGE=$(if $(value STORAGE),$(call quoted,STORAGE),$(error STORAGE=postgresql://user@host:port/optuna is needed)) \
	MLFLOW_TRACKING_URI=$(if $(value TRACKING),$(call quoted,TRACKING),$(error TRACKING=http://host:port is needed)) \
	$(PY) -m harness sweep $(call positional,CONFIG) --total $(if $(value TRIALS),$(call quoted,TRIALS),$(error TRIALS=N, the study's total, is needed)) $(call option,--study,STUDY) $(call option,--workers,WORKERS)

services: $(STAMP) ## start PostgreSQL and an MLflow tracking server here (BIND=127.0.0.1 PG_PORT=5433 MLFLOW_PORT=5001)
	$(PY) -m harness services start --host $(call quoted,BIND) --pg-port $(call quoted,PG_PORT) --mlflow-port $(call quoted,MLFLOW_PORT)

services-stop: $(STAMP) ## stop what `make services` started (the data stay in mlruns/services/)
	$(PY) -m harness services stop

seeds: $(STAMP) ## train many seeds at once as one run (SEEDS_CONFIG=file.toml COUNT=N ARGS="--set key=value"); a file with [[seeds.arm]] tables: its arms side by side
	$(PY) -m harness seeds $(call positional,SEEDS_CONFIG) $(call option,--count,COUNT) $(SET_ARGS)

compare: $(STAMP) ## report how the seed changes convergence (STUDY=name; CONFIG=experiments/seeds.toml: the latest scan; STEP=N)
	$(PY) -m harness compare $(call positional,CONFIG) $(COMPARE_ARGS)

# `--` first: an OUT that starts with - is a file name, not an option
export: $(STAMP) ## write a study's trials to a CSV file, one row each: OUT=file.csv (STUDY=name, CONFIG=study file)
	$(PY) -m harness export $(call option,--study,STUDY) -- $(call positional,CONFIG) $(if $(value OUT),$(call quoted,OUT),$(error OUT=file.csv is needed: make export OUT=trials.csv))

ui: $(STAMP) ## the MLflow UI over mlruns/ on http://127.0.0.1 until Ctrl-C (PORT=5000, CONFIG=study file)
	$(PY) -m harness ui $(call positional,CONFIG) $(call option,--port,PORT)

dashboard: $(STAMP) ## optuna-dashboard over the study storage on http://127.0.0.1 until Ctrl-C (PORT=8080, STUDY=name, CONFIG=study file)
	$(PY) -m harness dashboard $(call positional,CONFIG) $(call option,--study,STUDY) $(call option,--port,PORT)

test: $(STAMP) ## run the test suite, less the tests marked slow, browser or services (CI runs them all)
	$(PY) -m pytest -q -m "not slow and not browser and not services"

test-slow: $(STAMP) ## run only the slow tests (killed workers, Ctrl-C, parallel workers)
	$(PY) -m pytest -q -m slow

test-browser: $(STAMP) ## the UI in headless Debian chromium, driven by Playwright (screenshots in WINE_SCREENSHOTS=dir)
	$(PY) -m pytest -q -m browser

screenshots: $(STAMP) ## remake the README's UI screenshots in docs/ with the browser test
	WINE_SCREENSHOTS=docs $(PY) -m pytest -q -m browser

# the lowest MLflow and Optuna pyproject.toml admits, in a venv of their own
FLOOR_VENV := .venv-floor
test-floor: ## the quick tests again with the lowest MLflow and Optuna versions pyproject.toml admits (in .venv-floor)
	test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -c "import torch" 2>/dev/null || $(FLOOR_VENV)/bin/python -m pip install -q $(TORCH_SPEC)
	$(FLOOR_VENV)/bin/python -m pip install -q -e '.[dev]' $$($(PYTHON) .ci/floor_pins.py mlflow optuna)
	$(FLOOR_VENV)/bin/python -m pytest -q -m "not slow and not browser and not services"

test-services: $(STAMP) ## the tests against a real PostgreSQL and MLflow server (PostgreSQL must be installed)
	$(PY) -m pytest -q -m services

bench: $(STAMP) ## speed figures, each against a reference run in the same process (ONLY=fast_paths: one of them)
	$(PY) -m harness bench $(call option,--only,ONLY)

clean: ## remove the venv (mlruns/ is kept: it is your tracking data)
	rm -rf $(VENV)
