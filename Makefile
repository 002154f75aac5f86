# The two commands a newcomer runs: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test install clean

$(STAMP): pyproject.toml requirements/lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/lock.txt -e ".[nsfw,nudenet,rate,test]"
	touch $(STAMP)

install: $(STAMP) $(CHROMIUM)

# tests/test_rating.py drives Debian's chromium with Playwright (never `playwright install`: no browser downloads).
# As root with apt, a missing browser is installed here; otherwise a note (those tests then skip).
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the browser tests (apt-get install chromium)"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "note: the browser tests need Debian's chromium: sudo apt-get install chromium"; fi

demo: $(STAMP)
	$(PY) -m focusnfix.demo --out runs/demo

test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest

# The suite under the CPU kernels of other x86-64 machines (numeric tolerances must hold on all of them):
# ATen's baseline (no SIMD) and AVX2 kernels, with oneDNN's convolutions held to the same instruction set.
# Both runs always happen; the target fails if either does.
.PHONY: test-kernels
test-kernels: $(STAMP) $(CHROMIUM)
	@status=0; for pair in default,SSE41 avx2,AVX2; do \
		aten=$${pair%,*}; onednn=$${pair#*,}; \
		echo "== ATEN_CPU_CAPABILITY=$$aten ONEDNN_MAX_CPU_ISA=$$onednn $(PY) -m pytest"; \
		ATEN_CPU_CAPABILITY=$$aten ONEDNN_MAX_CPU_ISA=$$onednn $(PY) -m pytest || status=1; \
	done; exit $$status

clean:
	rm -rf runs .pytest_cache

# On a CUDA machine: cuda-marked tests, SD1.5-size step benchmark, the demo and a 50-image eval, timed;
# writes benchmarks/results/gpu_check.json and .md (BENCHMARKS.md, "GPU check"). CPU smoke path: ARGS=--tiny.
# Needs a Python with CUDA torch and focusnfix installed (pip install -e ".[test]"): .venv's lock is CPU-only.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
.PHONY: gpu-check
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py $(ARGS)
