#!/usr/bin/env python
"""Benchmarks, side by side in one run.

model (default): compare methods on one backbone: params, GFLOPs (fvcore convention), inference clips/s, training
step time, bytes saved for backward (and peak GPU memory on CUDA), with ratios to full fine-tuning (dense
backbone) and to the dense-token AdaptFormer adapter.

    python tools/benchmark.py                                  # ViT-B/16, 8 x 224, CPU, fp32
    python tools/benchmark.py --arch vit_tiny_test --frames 4 --img-size 32 --rounds 3   # seconds, for a smoke run
    python tools/benchmark.py --device cuda --dtype bf16 --batch 8 --out docs/benchmarks_gpu.json

data: clips/s per worker of the training pipeline (decode + transform) vs the raw decord read of the same
frames, and the cost of decoding all temporal test views of a video in one read vs one clip.

    python tools/benchmark.py data                             # generates a K400-style set at 240 x 320
    python tools/benchmark.py data --csv ROOT/annotations/train.csv --root ROOT
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import video_st  # noqa: E402
from video_st.profiling import BenchSpec, add_ratios, markdown_table, run_benchmark  # noqa: E402

COLUMNS = [
    "method", "params_m", "trainable_m", "gflops", "gflops/full", "infer_clips_s", "infer_clips_s/full",
    "train_step_s", "train_step_s/adaptformer", "saved_mb_per_clip", "saved_mb_per_clip/adaptformer",
]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["data"]:
        return data_main(argv[1:])
    if argv[:1] == ["model"]:
        argv = argv[1:]
    return model_main(argv)


def model_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="benchmark.py [model]", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_base_patch16", choices=video_st.list_models())
    parser.add_argument("--methods", default="full,adaptformer,dense_adapter,sparse_tuning",
                        help="comma-separated, from: " + ", ".join(video_st.list_methods()))
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--tubelet", type=int, default=2)
    parser.add_argument("--num-classes", type=int, default=400)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=11,
                        help="timed rounds per model, interleaved; the median is reported, every round is kept in --out")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-train", action="store_true", help="skip training-step timing and memory")
    parser.add_argument("--train-reference", default="adaptformer",
                        help="method the training time and memory ratios are taken against (the dense-token "
                             "adapter baseline: adaptformer, or dense_adapter for Sparse-Tuning's own ablation)")
    parser.add_argument("--out", help="also write the rows and the machine description as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(video_st.list_methods()))
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {video_st.list_methods()}")
    spec = BenchSpec(
        arch=args.arch, methods=methods, num_frames=args.frames, img_size=args.img_size, tubelet_size=args.tubelet,
        num_classes=args.num_classes, batch_size=args.batch, rounds=args.rounds, device=args.device,
        dtype=args.dtype, train=not args.no_train,
    )
    rows = run_benchmark(spec, video_st.create_model)
    add_ratios(rows, reference="full", keys=["gflops", "infer_clips_s"], suffix="full")
    ref = args.train_reference
    add_ratios(rows, reference=ref, keys=["train_step_s", "saved_mb_per_clip", "peak_train_mem_mb"], suffix=ref)
    machine = {
        "platform": platform.platform(), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
    }
    columns = [c.replace("/adaptformer", f"/{ref}") for c in COLUMNS]
    columns += ["peak_train_mem_mb", f"peak_train_mem_mb/{ref}"] if args.device.startswith("cuda") else []
    print(f"{args.arch}, {args.frames} x {args.img_size} (tubelet {args.tubelet}), batch {args.batch}, "
          f"{args.device} {args.dtype}, {machine['cpu_threads']} threads, median of {args.rounds} interleaved rounds")
    print(markdown_table(rows, [c for c in columns if any(c in r for r in rows)]))
    if args.out:
        tmp = f"{args.out}.tmp"
        with open(tmp, "w") as f:
            json.dump({"args": vars(args), "machine": machine, "rows": rows}, f, indent=2)
        os.replace(tmp, args.out)
    return 0


def data_main(argv: list[str]) -> int:
    import tempfile

    from video_st.data.datasets import ClipSpec, read_k400_csv
    from video_st.data.throughput import measure
    from video_st.data.transforms import BatchAugment, TrainTransform

    parser = argparse.ArgumentParser(prog="benchmark.py data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
    torch.set_num_threads(1)  # one loader worker's view of the machine

    with tempfile.TemporaryDirectory() as tmp:
        if args.csv:
            records, _ = read_k400_csv(args.csv, args.root or os.path.dirname(args.csv))
        else:
            from video_st.data.synthetic import make_k400_style

            # 300 frames = 10 s at 30 fps, the length of a Kinetics clip.
            summary = make_k400_style(tmp, num_classes=4, train_per_class=max(1, args.videos // 4), val_per_class=1,
                                      num_frames=args.video_frames, height=args.height, width=args.width, fps=30, seed=0,
                                      grain=args.grain)
            records, _ = read_k400_csv(summary.annotation_files["train"], tmp)
        records = records[: args.videos]
        clip = ClipSpec(sampling="dense", num_frames=args.frames, stride=args.stride)
        pipelines = {"crop + flip (uint8 out: augment_on=device, the default)":
                         TrainTransform(size=args.size, rand_augment=None, output="uint8"),
                     "crop + flip + normalise": TrainTransform(size=args.size, rand_augment=None),
                     "crop + flip + RandAugment (2, 9) + normalise (augment_on=worker)":
                         TrainTransform(size=args.size, rand_augment=(2, 9))}
        result = measure(records, clip=clip, transforms=pipelines, size=args.size, rounds=args.rounds)
    source = args.csv or f"synthetic K400-style, {args.video_frames} frames at {args.height} x {args.width}, grain {args.grain}"
    print(f"{result.videos} videos ({source}) x {args.rounds} rounds, training clip {args.frames} x stride "
          f"{args.stride}, crop {args.size}, 1 thread (one loader worker)")
    print("| measure | value |\n|---|---|")
    print(f"| raw decord read, clips/s | {result.raw_clips_s:.2f} |")
    for name, clips_s in result.pipeline_clips_s.items():
        print(f"| decode + {name}, clips/s (overhead over raw) | {clips_s:.2f} ({100 * result.overhead(name):.1f}%) |")
    for name, cost in result.views_cost.items():
        print(f"| test views {name}: all views / one clip | {cost:.2f}x |")
    # What augment_on=device moves into the training process, timed here on the CPU (on a GPU it is far cheaper).
    batch = torch.randint(0, 256, (8, 3, args.frames, args.size, args.size), dtype=torch.uint8)
    augment, start = BatchAugment(rand_augment=(2, 9)), time.perf_counter()
    for _ in range(args.rounds):
        augment(batch)
    per_clip = (time.perf_counter() - start) / (args.rounds * len(batch))
    print(f"| BatchAugment (RandAugment 2, 9 + normalise) on this CPU, ms per clip | {1000 * per_clip:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
