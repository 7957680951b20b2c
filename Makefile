# weedseg: `make demo` sets up and runs the main job, `make test` sets up and runs the tests.
# Setup creates .venv and installs a CPU build of torch on machines without an NVIDIA GPU.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# NVIDIA machines (nvidia-smi lists a GPU): the default PyPI build of torch, which bundles CUDA.
# Other machines: a CPU build, never the CUDA packages: a local CPU wheel if pip's find-links has
# one, else PyTorch's CPU index; then `pip install torch==...` adds only torch's small dependencies.
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: setup demo test test-quick clean

$(BIN)/weedseg: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
ifneq ($(HAS_GPU),1)
	$(BIN)/python -m pip install -q --no-index --no-deps "torch==$(TORCH_VERSION)" 2>/dev/null \
	  || $(BIN)/python -m pip install -q --no-deps "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX)
endif
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q -e ".[dev]"
ifeq ($(HAS_GPU),1)
# same `onnxruntime` module with the CUDA provider; the CPU and GPU wheels must not both be installed
	$(BIN)/python -m pip uninstall -q -y onnxruntime
	$(BIN)/python -m pip install -q onnxruntime-gpu
endif
	@echo "torch: $$($(BIN)/python -c 'import torch; print(torch.__version__, "CUDA" if torch.cuda.is_available() else "CPU")')"
	touch $(BIN)/weedseg

setup: $(BIN)/weedseg

# The main job on the shipped default model: segment the peanut photos into runs/demo, then score the
# model on the test split at full resolution. The peanut dataset is looked for in $(DATA)/peanut
# (WEEDSEG_DATA, else ../shared/field_data); without it (a fresh clone) the same two steps run on the
# six test photos shipped in samples/peanut. --overwrite: runs/demo is the demo's own, so a rerun after
# an update (a new shipped model) redoes it instead of refusing.
DATA ?= $(abspath $(or $(WEEDSEG_DATA),../shared/field_data))
MODEL := models/weedseg-peanut-default.pt
demo: setup
ifneq ($(wildcard $(DATA)/peanut/images),)
	$(BIN)/weedseg predict $(DATA)/peanut/images --out runs/demo --overwrite
	$(BIN)/weedseg evaluate $(MODEL) --dataset peanut --data-root $(DATA) --split test --full-res --out runs/demo/test-metrics.json
else
	@echo "no peanut dataset in $(DATA): the demo runs on the sample photos in samples/peanut"
	$(BIN)/weedseg predict samples/peanut/images --out runs/demo --overwrite
	$(BIN)/weedseg evaluate $(MODEL) --dataset folder --data-root samples/peanut --split test --full-res --out runs/demo/sample-metrics.json
endif

# The tests read the peanut dataset in $(DATA) (passed as WEEDSEG_DATA). The browser test
# (tests/test_app_browser.py) needs Chromium: installed with apt-get where it can be (Debian CI runs as
# root); elsewhere that test is skipped.
test: setup
	test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || ! command -v apt-get >/dev/null \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; } \
	  || echo "could not install chromium; the browser test will be skipped"
	WEEDSEG_DATA=$(DATA) $(BIN)/python -m pytest -q

# The tests without the slow end-to-end ones (wheel install, browser, training runs): a quick check.
test-quick: setup
	WEEDSEG_DATA=$(DATA) $(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs *.egg-info
