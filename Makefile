# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv with the system Python when it is missing, install fmb into it, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean-demo

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
	$(BIN)/python -m pytest -q

# The demo: a small synthetic survey, tiny random-weight models adapted briefly, embeddings of all,
# anomaly scores and their evaluation against the injected truth.
# (Until `fmb run` lands, the stages are listed here one by one.)
DEMO   := --config configs/tasks/demo.yaml --config configs/adapt/tiny.yaml
MODELS := pixels aion astropt astroclip

demo: $(STAMP)
	$(BIN)/fmb data synth $(DEMO)
	$(BIN)/fmb data index $(DEMO)
	$(BIN)/fmb data validate $(DEMO)
	$(BIN)/fmb data show $(DEMO)
	for model in $(MODELS); do $(BIN)/fmb adapt $$model $(DEMO) && $(BIN)/fmb embed $$model $(DEMO) || exit 1; done
	$(BIN)/fmb detect $(DEMO)
	$(BIN)/fmb analyze evaluate $(DEMO)

clean-demo:
	rm -rf runs/demo data/demo
