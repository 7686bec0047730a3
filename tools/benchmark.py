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

data: clips/s per worker of the training pipeline (decode + transform) vs the raw decord read of the same
frames, and the cost of decoding all temporal test views of a video in one read vs one clip.

    python tools/benchmark.py data                             # generates a K400-style set at 240 x 320
    python tools/benchmark.py data --csv ROOT/annotations/train.csv --root ROOT
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from functools import partial

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import video_st  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"model": partial(tables_main, model=True), "methods": partial(tables_main, model=False),
                "train-methods": train_methods_main, "data": data_main}
    command = argv.pop(0) if argv[:1] and argv[0] in commands else "model"
    parser = argparse.ArgumentParser(prog=f"benchmark.py {'[model]' if command == 'model' else command}",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return commands[command](parser, argv)


def _methods(parser: argparse.ArgumentParser, text: str | None) -> list[str]:
    known = video_st.list_methods()
    methods = known if not text else [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(known))
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {known}")
    return methods


def tables_main(parser: argparse.ArgumentParser, argv: list[str], *, model: bool) -> int:
    """model and methods: one backbone, one geometry, the same timing and device options."""
    parser.add_argument("--arch", default="vit_base_patch16", choices=video_st.list_models())
    if model:
        parser.add_argument("--methods", default="full,adaptformer,dense_adapter,sparse_tuning",
                            help="comma-separated, from: " + ", ".join(video_st.list_methods()))
    else:
        parser.add_argument("--methods", help="comma-separated subset (default: all of video_st.list_methods(); "
                                              "full is always added, it is the reference)")
    for flag, default in [("--frames", 8), ("--img-size", 224), ("--tubelet", 2), ("--num-classes", 400), ("--batch", 1)]:
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--rounds", type=int, default=11,
                        help="timed rounds per model, interleaved; the median is reported, every round is kept in --out")
    if not model:
        parser.add_argument("--seed", type=int, default=0, help="of the one random clip every model sees")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-train", action="store_true", help="skip training-step timing and memory")
    if model:
        parser.add_argument("--train-reference", default="adaptformer",
                            help="method the training time and memory ratios are taken against (the dense-token "
                                 "adapter baseline: adaptformer, or dense_adapter for Sparse-Tuning's own ablation)")
    parser.add_argument("--out", help="also write the rows and the machine description as JSON here"
                                      + ("" if model else " (atomically)"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    from video_st.bench import measure, tables

    spec = measure.BenchSpec(
        arch=args.arch, methods=_methods(parser, args.methods), num_frames=args.frames, img_size=args.img_size,
        tubelet_size=args.tubelet, num_classes=args.num_classes, batch_size=args.batch, rounds=args.rounds,
        device=args.device, dtype=args.dtype, train=not args.no_train, seed=getattr(args, "seed", 0))
    if model:
        return tables.model_table(spec, train_reference=args.train_reference, out=args.out, args=vars(args))
    return tables.methods_table(spec, out=args.out, args=vars(args))


def train_methods_main(parser: argparse.ArgumentParser, argv: list[str]) -> int:
    parser.add_argument("--config", default="configs/tiny_cpu.yaml", help="training and test config of every method")
    parser.add_argument("--backbone", default="outputs/demo/backbone.pt", help="model.pretrained (make demo writes it)")
    parser.add_argument("--data", default="outputs/demo/k400", help="K400-style root with annotations/{train,val}.csv")
    parser.add_argument("--methods", help="comma-separated subset (default: all of video_st.list_methods())")
    parser.add_argument("--output-dir", default="outputs/methods", help="one run folder per method under it")
    parser.add_argument("--epochs", type=int, help="optim.epochs (default: the config's)")
    parser.add_argument("--lr-for", action="append", default=[], metavar="METHOD=LR[,METHOD=LR]",
                        help="optim.lr for some methods (default: the config's for all)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another override for every run, e.g. data.num_workers=1")
    parser.add_argument("--test-checkpoint", choices=["final", "best"], default="final",
                        help="final: model_final.pt (default: the test split is the validation split here, so the "
                             "best-on-validation checkpoint would be chosen on the test set); best: checkpoints/best")
    parser.add_argument("--flop-clips", type=int, default=8, help="test clips the GFLOPs of input-dependent models average")
    parser.add_argument("--seed", type=int, default=0, help="of the random clip the GFLOPs of static models use")
    parser.add_argument("--timeout", type=float, help="seconds per training or test run")
    parser.add_argument("--skip-done", action="store_true",
                        help="reuse a method's finished run (its test summary and recorded settings match)")
    parser.add_argument("--plot", default="docs/methods_accuracy_vs_gflops.png", help="PNG of test top-1 vs GFLOPs")
    parser.add_argument("--out", help="JSON of the rows (default: OUTPUT_DIR/methods.json; the table beside it, .md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    methods = _methods(parser, args.methods)
    lr_for = {}
    for item in (p for text in args.lr_for for p in text.split(",") if p.strip()):
        name, _, value = item.partition("=")
        try:
            lr_for[name.strip()] = float(value)
        except ValueError:
            parser.error(f"--lr-for {item!r}: expected METHOD=LR")
    unknown = sorted(set(lr_for) - set(video_st.list_methods()))
    if unknown:
        parser.error(f"--lr-for: unknown methods {unknown}")
    for path in (args.backbone, os.path.join(os.path.abspath(args.data), "annotations", "train.csv")):
        if not os.path.exists(path):
            parser.error(f"{path} does not exist: run `make demo` first (or pass --backbone / --data)")
    from video_st.bench import sweeps

    sweep = sweeps.Sweep(
        methods=methods, config=args.config, backbone=args.backbone, data=args.data, output_dir=args.output_dir,
        epochs=args.epochs, lr_for=lr_for, overrides=args.set, test_checkpoint=args.test_checkpoint,
        flop_clips=args.flop_clips, seed=args.seed, timeout=args.timeout, skip_done=args.skip_done, plot=args.plot,
        out=args.out)
    return sweeps.train_methods(sweep, args=vars(args))


def data_main(parser: argparse.ArgumentParser, argv: list[str]) -> int:
    parser.add_argument("--csv", help="K400-style CSV (default: generate a synthetic set in a temporary folder)")
    parser.add_argument("--root", help="video root for --csv")
    parser.add_argument("--videos", type=int, default=16, help="how many videos to time")
    parser.add_argument("--video-frames", type=int, default=300, help="synthetic videos: length (300: 10 s at 30 fps)")
    parser.add_argument("--height", type=int, default=240, help="synthetic videos: frame height")
    parser.add_argument("--width", type=int, default=320, help="synthetic videos: frame width")
    parser.add_argument("--grain", type=float, default=5.0,
                        help="synthetic videos: film-grain std; 5 gives 0.3-1 Mbit/s, the bitrate of 320p Kinetics "
                             "(0: flat scenes at ~0.15 Mbit/s, unrealistically cheap to decode)")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--size", type=int, default=224, help="crop size of the training transform")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from video_st.bench import throughput

    return throughput.report(**vars(args))


if __name__ == "__main__":
    raise SystemExit(main())
