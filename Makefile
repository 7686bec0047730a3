# Set-up and entry points. `make demo` and `make test` work on a fresh machine: they create .venv and install.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup demo test test-fast benchmark gpu-check clean

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	# torch first, pinned with torchvision in one command: a later unpinned requirement would otherwise pull a
	# multi-GB CUDA torch onto CPU machines (see video_st/compat.py).
	$(PIP) install -q torch==2.13.0 torchvision==0.28.0 numpy
	# DS_BUILD_OPS=0: DeepSpeed installs from source in seconds, compiling no CUDA/C++ op (we use torch's AdamW).
	DS_BUILD_OPS=0 $(PIP) install -q -e '.[video,train,test,export,bench]'
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

setup: $(VENV)/.installed

# The main job on a small default, on CPU (about 3-5 minutes on 2 cores): generate an SSv2-style set (512
# videos) and a K400-style set (192 videos, 3 planted corrupt files); scan the K400 training files with the
# preprocessing job; train the tiny model from scratch on the SSv2-style set (stage 1: the stand-in for a
# pre-trained checkpoint, none can be downloaded here); convert it to a head-less backbone; Sparse-Tune it on the
# K400-style set (stage 2, DeepSpeed, fp32 on CPU); run the multi-view test (1 temporal x 3 spatial) of the best
# checkpoint and print its summary (results in outputs/demo/sparse_tuning/test/).
DEMO ?= outputs/demo
demo: setup
	$(PY) tools/make_synthetic_dataset.py --style ssv2 --out $(DEMO)/ssv2 --classes 4 --train-per-class 128 --val-per-class 8 --seed 2 --overwrite
	$(PY) tools/make_synthetic_dataset.py --style k400 --out $(DEMO)/k400 --classes 4 --train-per-class 32 --val-per-class 16 --seed 3 --corrupt zero:1,truncated:1,garbage:1 --overwrite
	$(PY) tools/preprocess.py scan --input $(DEMO)/k400/annotations/train.csv --root $(DEMO)/k400 --output $(DEMO)/scan
	$(PY) tools/train_net.py --config configs/demo/pretrain_ssv2.yaml output_dir=$(DEMO)/pretrain data.root=$(DEMO)/ssv2/videos data.labels=$(DEMO)/ssv2/something-something-v2-labels.json data.train=$(DEMO)/ssv2/something-something-v2-train.json data.val=$(DEMO)/ssv2/something-something-v2-validation.json checkpoint.resume=none log.progress=false
	$(PY) tools/convert_checkpoint.py $(DEMO)/pretrain/model_final.pt $(DEMO)/backbone.pt --arch vit_tiny_test --frames 4 --img-size 32 --num-classes 0
	$(PY) tools/train_net.py --config configs/tiny_cpu.yaml output_dir=$(DEMO)/sparse_tuning model.pretrained=$(DEMO)/backbone.pt data.root=$(DEMO)/k400 data.train=$(DEMO)/k400/annotations/train.csv data.val=$(DEMO)/k400/annotations/val.csv checkpoint.resume=none log.progress=false
	$(PY) tools/test_net.py --config configs/tiny_cpu.yaml output_dir=$(DEMO)/sparse_tuning model.pretrained=$(DEMO)/backbone.pt data.root=$(DEMO)/k400 data.train=$(DEMO)/k400/annotations/train.csv data.val=$(DEMO)/k400/annotations/val.csv log.progress=false

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# The full ViT-B/16 comparison recorded in docs/benchmarks.md.
benchmark: setup
	$(PY) tools/benchmark.py --arch vit_base_patch16 --rounds 15 --out docs/benchmark_vit_b_cpu.json

# On a machine with one H100/H200: every CUDA path in at most 5 minutes (training on both engines, test_net, augment,
# AS-ViT / DyT, dense vs Sparse-Tuning inference, the data path, GPU decoding): outputs/gpu_check/gpu_check.{json,md}.
gpu-check: setup
	$(PY) tools/gpu_check.py --out outputs/gpu_check

clean:
	rm -rf $(VENV) .pytest_cache
