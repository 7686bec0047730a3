#!/usr/bin/env python
"""Benchmarks, side by side in one run.

model (default): compare methods on one backbone: params, GFLOPs (fvcore convention), inference clips/s, training
step time, bytes saved for backward (and peak GPU memory on CUDA), with ratios to full fine-tuning (dense
backbone) and to the dense-token AdaptFormer adapter.

    python tools/benchmark.py                                  # ViT-B/16, 8 x 224, CPU, fp32
    python tools/benchmark.py --arch vit_tiny_test --frames 4 --img-size 32 --rounds 3   # seconds, for a smoke run
    python tools/benchmark.py --device cuda --dtype bf16 --batch 8 --out docs/benchmarks_gpu.json

methods: every method of video_st.list_methods() on one backbone (default ViT-B/16, 8 x 224), one row each:
trainable params, GFLOPs, inference clips/s, training step time, bytes saved for backward (peak GPU memory on
CUDA), each also as a ratio to full fine-tuning; all measured in one process, timed in interleaved rounds on one
seeded random clip. Inference (GFLOPs, clips/s) is measured with LoRA merged into the weights, training unmerged.
Input-dependent models (``model.input_dependent``) are marked: their FLOPs and times hold for that clip. A method
that fails to build or run keeps a row with its error (exit code 1).

    python tools/benchmark.py methods --rounds 11 --out docs/benchmark_methods_vit_b_cpu.json
    python tools/benchmark.py methods --arch vit_tiny_test --frames 4 --img-size 32 --num-classes 10 --rounds 1
    python tools/benchmark.py methods --device cuda --dtype bf16 --batch 8 --out docs/benchmark_methods_gpu.json

train-methods: on the generated dataset (``make demo``: the K400-style set and the stage-1 backbone), a short
training of each method (tools/train_net.py with --config and model.method=M, one output folder per method),
its multi-view test (tools/test_net.py on the final model, or the best with --test-checkpoint best), the GFLOPs
of the trained model at the config's geometry (input-dependent models: the mean over real test clips), then a
JSON of rows, a markdown table and a plot of test top-1 vs GFLOPs (PNG).

    python tools/benchmark.py train-methods --backbone outputs/demo/backbone.pt --data outputs/demo/k400 \\
        --output-dir outputs/methods --plot docs/methods_accuracy_vs_gflops.png
    python tools/benchmark.py train-methods --methods full,lora --epochs 1 --lr-for lora=1e-2   # a subset

predict: videos/s of video_st.Predictor (tools/predict.py) end to end (decode, test views, model, ensemble) for
some methods side by side, on generated videos: the tiny test model and ViT-B/16 8 x 224.

    python tools/benchmark.py predict --settings tiny,vit_b --methods full,sparse_tuning --views 1,3

records: the memory of a dataset's records in forked loader workers (a list of dataclasses vs the RecordTable
the datasets hold) and the start-up time of a 240,000-row K400 CSV.

    python tools/benchmark.py records --rows 240000 --workers 8

data: clips/s per worker of the training pipeline (decode + transform) vs the raw decord read of the same
frames, and the cost of decoding all temporal test views of a video in one read vs one clip.

    python tools/benchmark.py data                             # generates a K400-style set at 240 x 320
    python tools/benchmark.py data --csv ROOT/annotations/train.csv --root ROOT
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    from video_st.bench.cli import main as run
    from video_st.errors import run_tool

    def benchmark() -> int:
        report = run(sys.argv[1:] if argv is None else argv, description=__doc__)
        for text in report.lines:
            print(text)
        for line in report.errors:
            print(line, file=sys.stderr)
        return report.code

    return run_tool(benchmark)


if __name__ == "__main__":
    raise SystemExit(main())
