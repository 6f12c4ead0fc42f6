# Two commands for a new user: `make demo` and `make test`. Everything installs from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := runs/demo

.PHONY: install test lint demo bench bench-gpu clean

# The [test] extra holds the [sd] and [wandb] extras, so the whole suite runs; constraints.txt
# pins torch to its CPU wheel and ruff to the formatter the code is checked with.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# pytest exits 5 when it collects nothing: a run with no tests is a failure. Three workers on two
# cores (tests/conftest.py says why); a test file stays on one worker so its module fixtures are
# built once.
test: lint
	$(BIN)/python -m pytest -n 3 --dist loadfile --no-loadscope-reorder tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

demo: install
	$(BIN)/python train.py --config configs/digits_demo.py --workdir $(DEMO)
	$(BIN)/python sample.py --workdir $(DEMO) --out $(DEMO)/samples

# jldm against diffusers eager on this CPU, interleaved in one process (bench/vs_diffusers.py:
# train step, UNet evaluation, DDIM-50 of 100 images, DDPM-1000 of 20; about 4 minutes on two
# idle cores). PEER_PYTHON: a Python with jldm's dependencies and torch + diffusers (without torch it
# times jldm alone). bench/README.md has the GPU runs.
PEER_PYTHON ?= $(BIN)/python
bench: install
	$(PEER_PYTHON) bench/vs_diffusers.py

# Every GPU figure of bench/README.md in one run (bench/gpu.py), written to $(BENCH_GPU_OUT); at
# most 9 minutes (--budget_s 540). No install step: a GPU machine brings its own Python with
# jax[cuda12], torch and diffusers. `python bench/gpu.py --tiny` checks the commands on a CPU.
GPU_PYTHON ?= python3
BENCH_GPU_OUT ?= bench_gpu.json
bench-gpu:
	$(GPU_PYTHON) bench/gpu.py --out $(BENCH_GPU_OUT)

clean:
	rm -rf $(VENV) runs
