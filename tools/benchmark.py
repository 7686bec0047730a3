#!/usr/bin/env python
"""Compare methods on one backbone in one run: params, GFLOPs (fvcore convention), inference clips/s, training
step time, bytes saved for backward (and peak GPU memory on CUDA), with ratios to full fine-tuning (dense
backbone) and to the dense-token AdaptFormer adapter.

    python tools/benchmark.py                                  # ViT-B/16, 8 x 224, CPU, fp32
    python tools/benchmark.py --arch vit_tiny_test --frames 4 --img-size 32 --rounds 3   # seconds, for a smoke run
    python tools/benchmark.py --device cuda --dtype bf16 --batch 8 --out docs/benchmarks_gpu.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import video_st  # noqa: E402
from video_st.profiling import BenchSpec, add_ratios, markdown_table, run_benchmark  # noqa: E402

COLUMNS = [
    "method", "params_m", "trainable_m", "gflops", "gflops/full", "infer_clips_s", "infer_clips_s/full",
    "train_step_s", "train_step_s/adaptformer", "saved_mb_per_clip", "saved_mb_per_clip/adaptformer",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    add_ratios(rows, reference="adaptformer", keys=["train_step_s", "saved_mb_per_clip"], suffix="adaptformer")
    machine = {
        "platform": platform.platform(), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
    }
    columns = COLUMNS + (["peak_train_mem_mb"] if args.device.startswith("cuda") else [])
    print(f"{args.arch}, {args.frames} x {args.img_size} (tubelet {args.tubelet}), batch {args.batch}, "
          f"{args.device} {args.dtype}, {machine['cpu_threads']} threads, median of {args.rounds} interleaved rounds")
    print(markdown_table(rows, [c for c in columns if any(c in r for r in rows)]))
    if args.out:
        tmp = f"{args.out}.tmp"
        with open(tmp, "w") as f:
            json.dump({"args": vars(args), "machine": machine, "rows": rows}, f, indent=2)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
