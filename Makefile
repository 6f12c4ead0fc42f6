# Two commands for a new user: `make demo` and `make test`. Everything installs from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := runs/demo

.PHONY: install test lint demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# pytest exits 5 when it collects nothing: a run with no tests is a failure. Two workers (one per
# core); a test file stays on one worker so its module fixtures are built once.
test: lint
	$(BIN)/python -m pytest -n 2 --dist loadfile tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

demo: install
	$(BIN)/python train.py --config configs/digits_ddpm.py --workdir $(DEMO)
	$(BIN)/python sample.py --workdir $(DEMO) --out $(DEMO)/samples

# CPU-sized runs of the small cases (bench/README.md has the GPU ones). The peer needs torch and
# diffusers: PEER_PYTHON=/path/to/python of an environment that has them; without, it skips.
PEER_PYTHON ?= $(BIN)/python
BENCH_DIGITS := --config configs/digits_ddpm.py
bench: install
	$(BIN)/python bench/unet.py $(BENCH_DIGITS) --batch 64 --repeats 5
	$(BIN)/python bench/sampling.py $(BENCH_DIGITS) --num 100 --cases ddim50 --repeats 3
	$(BIN)/python bench/sampling.py $(BENCH_DIGITS) --num 20 --cases ddpm --repeats 1 --warmup 0
	$(PEER_PYTHON) bench/peer_diffusers.py $(BENCH_DIGITS) --batch 64 --repeats 5 --cases eval,train
	$(PEER_PYTHON) bench/peer_diffusers.py $(BENCH_DIGITS) --modes eager --num 100 --cases ddim50 \
		--repeats 3 --warmup 1
	$(PEER_PYTHON) bench/peer_diffusers.py $(BENCH_DIGITS) --modes eager --num 20 --cases ddpm \
		--repeats 1 --warmup 0

clean:
	rm -rf $(VENV) runs
