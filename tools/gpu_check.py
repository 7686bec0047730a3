#!/usr/bin/env python
"""A GPU check, ready to run: every CUDA path of the project in at most 5 minutes on one H100/H200.

    python tools/gpu_check.py                        # CUDA: Sparse-Tuning ViT-B/16, 8 x 224 (make gpu-check)
    python tools/gpu_check.py --device cpu --out /tmp/gpu_check   # the same sections on the tiny test model
    python tools/gpu_check.py --sections train_deepspeed_bf16,test_net --quick

Sections, in order: DeepSpeed bf16 ZeRO-2 training (clips/s, peak memory, MFU), DeepSpeed fp16 with dynamic loss
scaling, the DDP engine in bf16 (each a short run of the real training loop on generated videos, checkpoint and
export included), test_net under autocast on the model just trained, BatchAugment on uint8 tensors on the device,
AS-ViT's key masks through SDPA and DyT's gather/scatter (training and inference passes), dense vs Sparse-Tuning
inference clips/s at batch 32, the data path feeding the device from mp4 and from JPEG frame folders (clips/s end to
end), and GPU decoding (nvjpeg through torchvision.io.decode_jpeg, torchcodec on CUDA) where the environment has it.

Writes OUT/gpu_check.json (figures, details, errors with tracebacks, the machine) and OUT/gpu_check.md (the
table, also printed). A failed section is recorded and the others still run; sections that do not apply here are
recorded as skipped with the reason. Exit code 0: every section ok or skipped; 1: a section failed; 2: bad input
(e.g. --device cuda without a GPU).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda",
                        help="cuda: ViT-B/16 8 x 224 (default); cpu: the tiny test model, the same code paths")
    parser.add_argument("--out", default="outputs/gpu_check", help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--sections", help="comma-separated subset, run in the check's order (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer timed steps and rounds (half the budgets)")
    parser.add_argument("-v", "--verbose", action="store_true", help="the library's INFO logs; tracebacks of errors")
    args = parser.parse_args(argv)

    import logging

    import video_st  # noqa: F401  (compat fixes before anything imports torchvision)
    from video_st.bench import gpu_check
    from video_st.errors import run_tool

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def report(result: gpu_check.SectionResult) -> None:
        text = result.error if result.status != "ok" else ", ".join(f"{k} {v:.4g}" for k, v in result.figures.items())
        print(f"[gpu-check] {result.name}: {result.status} in {result.seconds:.1f} s (budget {result.budget_s:.0f} s)"
              f"{' OVER BUDGET' if result.seconds > result.budget_s else ''}: {text}", flush=True)

    def check() -> int:
        done = gpu_check.run_check(device=args.device, out=args.out, sections=gpu_check.select_sections(args.sections),
                                   quick=args.quick, on_result=report)
        print()
        print(gpu_check.markdown(done))
        print(f"\n{os.path.join(args.out, gpu_check.JSON_FILE)}, {os.path.join(args.out, gpu_check.TABLE_FILE)}")
        return gpu_check.exit_code(done)

    return run_tool(check, verbose=args.verbose)


if __name__ == "__main__":
    raise SystemExit(main())
