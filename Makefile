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
	$(BIN)/python sample.py --workdir $(DEMO) --out $(DEMO)/samples --sampler dpmpp2m --steps 10

# jldm against diffusers eager on this CPU, interleaved in one process (bench/vs_diffusers.py:
# train step, UNet evaluation, DDIM-50 of 100 images, DDPM-1000 of 20; about 4 minutes on two
# idle cores). PEER_PYTHON: a Python with jldm's dependencies and torch + diffusers (without torch it
# times jldm alone). bench/README.md has the GPU runs.
PEER_PYTHON ?= $(BIN)/python
bench: install
	$(PEER_PYTHON) bench/vs_diffusers.py

clean:
	rm -rf $(VENV) runs
