# The two commands a newcomer runs: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test install clean test-floors

$(STAMP): pyproject.toml requirements/lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@echo "installing the pinned dependencies into $(VENV) (about 2 minutes, 2.2 GB: CPU torch, the nsfw, nudenet, judges, rate, datasets and test extras)..."
	$(PY) -m pip install -r requirements/lock.txt -e ".[nsfw,nudenet,judges,rate,datasets,test]"
	@# [judges]' rapidocr-onnxruntime pulls the GUI opencv-python (same pinned release): the headless cv2 goes in last
	$(PY) -m pip install --quiet --no-deps --force-reinstall "$$(grep '^opencv-python-headless==' requirements/lock.txt)"
	$(PY) -m pip check
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
	$(PY) -m focusnfix.cli.demo --out runs/demo

test: $(STAMP) $(CHROMIUM)
	$(PY) -m ruff check .
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

# Minimal versions: every dependency at the floor pyproject.toml declares (tools/floors.py prints the floors as
# exact pins: runtime dependencies, every extra and the build backend), in its own .venv-floors; then the
# tests that train, save lora/, reload it in diffusers and sample on the tiny models, build the wheel, run the
# rewards of the extras and the rating app. torch is taken the way the lock takes it (PyPI plus this machine's
# pip configuration): on an ordinary Linux machine that is the CUDA build of the floor (about 4 GB; it runs on
# the CPU too); `make test-floors TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes the CPU build instead.
FLOORS_VENV := .venv-floors
FLOORS_TESTS := tests/test_cli.py tests/test_cli_nits.py tests/test_training.py tests/test_sampler.py tests/test_backbones.py \
	tests/test_flow.py tests/test_packaging.py tests/test_nsfw.py tests/test_nudenet.py tests/test_rating.py \
	tests/test_prompt_data.py
TORCH_INDEX ?=
$(FLOORS_VENV)/.installed: pyproject.toml tools/floors.py
	rm -rf $(FLOORS_VENV)
	$(PYTHON) -m venv $(FLOORS_VENV)
	{ $(PYTHON) tools/floors.py && $(PYTHON) tools/floors.py --all-extras && $(PYTHON) tools/floors.py --build; } \
		| sort -u > $(FLOORS_VENV)/floors.txt
	@echo "installing the declared floors into $(FLOORS_VENV) (several minutes; about 7 GB with the CUDA build of torch):" $$(cat $(FLOORS_VENV)/floors.txt)
	$(FLOORS_VENV)/bin/python -m pip install $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -r $(FLOORS_VENV)/floors.txt
	$(FLOORS_VENV)/bin/python -m pip install --no-deps --no-build-isolation -e .   # builds with the floor setuptools
	$(FLOORS_VENV)/bin/python -m pip check
	touch $@

test-floors: $(FLOORS_VENV)/.installed $(CHROMIUM)
	@$(FLOORS_VENV)/bin/python -m pip freeze --exclude-editable > $(FLOORS_VENV)/freeze.txt
	@echo "== tests at the declared floors:" $$(cat $(FLOORS_VENV)/floors.txt)
	$(FLOORS_VENV)/bin/python -m pytest -p no:cacheprovider $(FLOORS_TESTS)

# On a CUDA machine: cuda-marked tests, SD1.5-size step benchmark, the demo and a 50-image eval, timed;
# writes benchmarks/results/gpu_check.json and .md (BENCHMARKS.md, "GPU check"). CPU smoke path: ARGS=--tiny.
# Needs a Python with CUDA torch and focusnfix installed (pip install -e ".[test]"): .venv's lock is CPU-only.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
.PHONY: gpu-check
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py $(ARGS)

# The operating-point sweep (BENCHMARKS.md, "Operating points"): DRaFT and Focus-N-Fix over λ x training
# length x 3 training seeds on the UNet world, settings chosen on world:val and reported on world:test. The two
# defects run side by side (one thread each), then one invocation that finds everything done writes
# benchmarks/results/pareto.json, its plots and runs/pareto/pareto.html. Resumable; about an hour on 2 cores.
# pareto-flow: the same on the flow world (artifact).
PARETO_ARGS := --lengths 30 60 120 --seeds 0 1 2 --defect-lambdas artifact=0.2,0.45,1 --defect-lambdas unwanted=0.1,0.2,0.45
.PHONY: pareto pareto-flow
pareto: $(STAMP)
	@mkdir -p runs/pareto
	OMP_NUM_THREADS=1 $(PY) benchmarks/pareto.py --defects artifact $(PARETO_ARGS) --out runs/pareto/artifact.json > runs/pareto/artifact.log 2>&1 & a=$$!; \
	OMP_NUM_THREADS=1 $(PY) benchmarks/pareto.py --defects unwanted $(PARETO_ARGS) --out runs/pareto/unwanted.json > runs/pareto/unwanted.log 2>&1 & u=$$!; \
	wait $$a && wait $$u || { echo "pareto: a defect's sweep failed; see runs/pareto/*.log"; exit 1; }
	OMP_NUM_THREADS=2 $(PY) benchmarks/pareto.py $(PARETO_ARGS)

pareto-flow: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) benchmarks/pareto.py --arch flow --defects artifact --lambdas 0.1 --lengths 30 60 120 --seeds 0 1 2
