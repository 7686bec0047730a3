# Set-up and entry points. `make demo` and `make test` work on a fresh machine: they create .venv and install.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup demo test test-fast benchmark clean

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	# torch first, pinned with torchvision in one command: a later unpinned requirement would otherwise pull a
	# multi-GB CUDA torch onto CPU machines (see video_st/compat.py).
	$(PIP) install -q torch==2.13.0 torchvision==0.28.0 numpy
	# DS_BUILD_OPS=0: DeepSpeed installs from source in seconds, compiling no CUDA/C++ op (we use torch's AdamW).
	DS_BUILD_OPS=0 $(PIP) install -q -e '.[video,train,test]'
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

setup: $(VENV)/.installed

# The main job on a small default. Until the training issue lands it runs what exists: generate the synthetic
# K400-style set (motion-only classes, 3 planted corrupt files), scan it with the preprocessing job (which finds
# exactly those), then compare the methods on ViT-S/16, 8 x 224, on this CPU (params, GFLOPs, speed, memory).
DEMO ?= outputs/demo
demo: setup
	$(PY) tools/make_synthetic_dataset.py --style k400 --out $(DEMO)/k400 --corrupt zero:1,truncated:1,garbage:1 --overwrite
	$(PY) tools/preprocess.py scan --input $(DEMO)/k400/annotations/train.csv --root $(DEMO)/k400 --output $(DEMO)/scan
	$(PY) tools/benchmark.py --arch vit_small_patch16 --rounds 3

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# The full ViT-B/16 comparison recorded in docs/benchmarks.md.
benchmark: setup
	$(PY) tools/benchmark.py --arch vit_base_patch16 --rounds 15 --out docs/benchmark_vit_b_cpu.json

clean:
	rm -rf $(VENV) .pytest_cache
