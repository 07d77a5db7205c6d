# Each target bootstraps .venv when it is missing (or when requirements.txt / pyproject.toml changed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# wheels of the packages the Kaggle bundle carries, for this Python: the offline kernel test installs them
WHEELS := $(VENV)/kaggle-wheels/.done
RUN ?= runs/demo
CONFIG ?= configs/demo.yaml

.PHONY: setup test test-slow test-all demo bench kaggle lint clean
# extra pytest arguments, e.g. make test PYTEST_ARGS="--durations=25 -x"
PYTEST_ARGS ?=

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

$(WHEELS): $(STAMP)
	$(PY) -m lumbar kaggle-wheels --out $(VENV)/kaggle-wheels --python-version $$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
	touch $@

setup: $(STAMP) $(WHEELS)

# the fast suite (every test but the slow ones): minutes on 2 cores, run it before every commit
test: $(STAMP) $(WHEELS)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# the slow suite alone: trained runs, notebooks, the Kaggle kernel (CI runs both)
test-slow: $(STAMP) $(WHEELS)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

# everything, in one session (shared fixtures built once)
test-all: $(STAMP) $(WHEELS)
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m lumbar demo --config $(CONFIG)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

kaggle: $(STAMP)
	$(PY) -m lumbar kaggle-bundle --run $(RUN) --out $(RUN)/kaggle

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(VENV)/bin/lint-imports

clean:
	rm -rf runs cache .pytest_cache

# Competition scale (issue 17): every data stage at 100, 500 and 1,975 studies, then one training epoch on the
# largest crop cache; writes benchmarks/scale.md and its section of benchmarks/results.md. Hours on 2 cores;
# it writes the synthetic set (input/synthetic-scale, ~3 GB) when missing and a ~14 GB crop cache (runs/scale).
SCALE_ARGS ?= --train-arch timm25d:convnext_atto
# configs/full.yaml rehearsed step by step on 200 synthetic studies of the real geometry, beside `pipeline --plan`
# (benchmarks/rehearsal.md and its section of benchmarks/results.md). Hours on 2 cores; ~6 GB of data, ~20 GB of run.
.PHONY: rehearse
rehearse: $(STAMP)
	$(PY) benchmarks/rehearse_full.py

.PHONY: bench-scale
bench-scale: $(STAMP)
	$(PY) benchmarks/bench_scale.py $(SCALE_ARGS)
