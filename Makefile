# The two commands a newcomer runs: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test install clean

$(STAMP): pyproject.toml requirements/lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/lock.txt -e ".[nsfw,nudenet]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m focusnfix.demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf runs .pytest_cache

# On a CUDA machine: cuda-marked tests, SD1.5-size step benchmark, the demo and a 50-image eval, timed;
# writes benchmarks/results/gpu_check.json and .md (BENCHMARKS.md, "GPU check"). CPU smoke path: ARGS=--tiny.
# Needs a Python with CUDA torch and focusnfix installed (pip install -e ".[test]"): .venv's lock is CPU-only.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
.PHONY: gpu-check
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py $(ARGS)
