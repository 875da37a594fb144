# Two entry points: `make run` (the default pipeline) and `make test`.
# Both create .venv from scratch when missing and install the pinned lock.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
# DVC runs stage commands through the shell: put the venv's `dsm5lab` first on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install run test lock clean exps plots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

run: install
	$(BIN)/dvc repro
	$(BIN)/dvc status

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# `dvc exp show` reduced to key params and headline metrics (no dependency-hash columns).
# Extra flags go through EXP_ARGS, e.g. make exps EXP_ARGS="--sort-by val.macro_f1 --csv".
EXP_PARAMS := seed|data\.(source|synthetic\.n_posts)|model\.(backbone|pooling)|train\.(task|loss|learning_rate|batch_size|epochs)|hpo\.n_trials
EXP_METRICS := val\.(macro_f1|sentence_macro_f1)|test\.macro_f1|paper\.macro_f1|evidence\.sentence_macro_f1|best_value|reduction_pct
exps:
	@dvc exp show --drop '.*' --keep '^(Experiment|rev|Created|State)$$|^($(EXP_PARAMS))$$|^($(EXP_METRICS))$$' $(EXP_ARGS)

# The DVC plots as reports/plots/index.html, which renders offline (no CDN), and static SVG/PNG per plot.
# Compare revisions with PLOTS_ARGS, e.g. make plots PLOTS_ARGS=main.
plots: install
	@$(BIN)/dsm5lab plots $(PLOTS_ARGS)

# Re-resolve the lock from pyproject.toml in a scratch venv (needs the package registry).
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/python -m pip install --quiet torch==2.13.0
	.lockenv/bin/python -m pip install --quiet ".[test,minilm,ui]"
	.lockenv/bin/python -m pip freeze --exclude dsm5lab | sed -E 's/^torch==([0-9.]+)\+cpu$$/torch==\1/' > requirements.lock
	rm -rf .lockenv

clean:
	rm -rf $(VENV) .pytest_cache
