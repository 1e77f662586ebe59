# aaren-rl developer targets. `make test` works on a fresh machine: it builds .venv itself.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-slow lint demo bench bench-full clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Torch first, pinned (override TORCH=... for a CUDA build), so no dependency pulls a different build.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e '.[dev,ray,popgym,bench]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Fresh machine -> behaviour policy (SB3) -> cached D4RL-format data -> Aaren agent trained and
# evaluated live; a second run reuses ~/.cache/aaren-rl.
demo: $(STAMP)
	$(PY) scripts/demo.py

# Speed and memory, side by side with each baseline (JSON + PNG in benchmarks/results); minutes.
bench: $(STAMP)
	$(PY) benchmarks/bench_aaren.py --quick
	$(PY) benchmarks/bench_agents.py --quick

# Everything at full size, plus AarenPPO vs RecurrentPPO vs PPO and the Aaren-DT vs Transformer-DT
# quality table (hours on a CPU; `bench_quality.py --full` is the papers' protocol).
bench-full: $(STAMP)
	$(PY) benchmarks/bench_aaren.py
	$(PY) benchmarks/bench_agents.py
	$(PY) benchmarks/bench_ppo.py
	$(PY) benchmarks/bench_quality.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
