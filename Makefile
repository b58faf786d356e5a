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
	$(BIN)/pip install --quiet -e ".[test]" torch==2.13.0
	# astropt declares torchvision (-> a CUDA torch); its model code needs only torch, loralib, einops
	$(BIN)/pip install --quiet --no-deps astropt==2.0.9
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Until `fmb run` lands, the demo is the data stage: synthesise, validate + index, draw one object.
demo: $(STAMP)
	$(BIN)/fmb data synth --config configs/tasks/demo.yaml
	$(BIN)/fmb data index --config configs/tasks/demo.yaml
	$(BIN)/fmb data show --config configs/tasks/demo.yaml

clean-demo:
	rm -rf runs/demo data/demo
