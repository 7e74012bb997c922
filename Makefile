# Two commands get a researcher from a fresh clone to results: `make demo` and `make test`.
# Each creates .venv when it is missing. torch is pinned to the CPU wheel that this kind of
# machine holds on disk; an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= runs/demo
# The demo's share of the input pairs (`python -m qrl.reproduce` alone runs them in full, as
# conf/input_pairs.yaml sets them: 30 rounds, a 1,000-evaluation audit, 200 random
# distributions), to stay within 5 minutes.
DEMO_INPUT_PAIRS ?= input_pairs.train.rounds=15 input_pairs.train.settle_steps=200 \
	input_pairs.eval.audit.evaluations=100 input_pairs.eval.random=30

export WANDB_MODE ?= offline
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-slow lint format bench experiments clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)" -e ".[dev,cluster]"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m qrl.reproduce hydra.run.dir=$(DEMO_DIR) $(DEMO_INPUT_PAIRS)

# One pytest-xdist worker per core, each test file on one worker (its module fixtures once).
test: $(STAMP) lint
	$(PY) -m pytest -q -n auto --dist loadfile

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(PY) -m ruff check qrl tests benchmarks experiments setup.py
	$(PY) -m ruff format --check qrl tests benchmarks experiments setup.py
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(PY) -m ruff format qrl tests benchmarks experiments setup.py
	$(PY) -m ruff check --fix qrl tests benchmarks experiments setup.py

bench: $(STAMP)
	@for f in benchmarks/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

# Regenerates every generated section of experiments/README.md (about 1.5 h on 2 cores from
# scratch; finished pairs and benchmark runs are loaded, not redone; the searches run again).
EXPERIMENTS := pairs_table drop_vs_budget cross_architecture granularity agents_vs_baselines simulator_fidelity
experiments: $(STAMP)
	@for e in $(EXPERIMENTS); do echo "== $$e"; $(PY) experiments/$$e.py || exit 1; done
	$(PY) experiments/honest_selection.py --out runs/experiments/agents_vs_baselines_student --report-only
	$(PY) experiments/search_benchmark.py members.count=20

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
