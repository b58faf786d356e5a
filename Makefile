# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv with the system Python when it is missing, install fmb into it, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo app test test-fast install clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU wheel on this machine; an unpinned torch pulls GBs of CUDA
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test,bench]" torch==2.13.0
	# astropt declares torchvision (-> a CUDA torch); its model code needs only torch, loralib, einops
	$(BIN)/pip install --quiet --no-deps astropt==2.0.9
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	# imports run downward only (the layers contract in pyproject.toml)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# The tests that neither start processes nor build a run (a minute or two): for the edit-test loop.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The demo: `fmb run` on a small synthetic survey with tiny random-weight models adapted briefly:
# data, adaptation, embeddings, anomaly scores, their evaluation against the injected truth, agreement,
# probes, similarity, figures, and the HTML report (its path is printed at the end). Rerunning skips
# every stage whose inputs and config are unchanged. The run remembers these settings: every later
# command takes it as --run demo (make app opens it in the discovery app).
DEMO := --config configs/tasks/demo.yaml --config configs/adapt/tiny.yaml

demo: $(STAMP)
	$(BIN)/fmb run $(DEMO)

# The discovery app on the demo's run: browse, label and re-rank its objects (Ctrl+C stops it).
app: $(STAMP)
	$(BIN)/fmb app --run demo

clean-demo:
	rm -rf runs/demo data/demo
