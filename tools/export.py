#!/usr/bin/env python
"""Export a trained model to ONNX or TorchScript, checked against PyTorch right after export.

    python tools/export.py runs/st/model_final.pt st.onnx --format onnx
    python tools/export.py runs/st/trainable_final.pt st.pt --format torchscript --backbone backbone.pt
    python tools/export.py runs/st/model_final.pt st.onnx --format onnx --benchmark

CKPT is anything tools/test_net.py loads (a run's checkpoint folder, one engine checkpoint folder, model_final.pt,
an adapter-only file with --backbone). The model is rebuilt from its spec, LoRA merged, eval mode, fp32; its input
is x: (batch, 3, frames, size, size) from the spec, with a dynamic batch axis; its output is logits.

OUT is written only if the export reproduces the model within 1e-4 (max abs difference on two seeded clips, at
--batch and --batch + 1); OUT.json then holds the spec, format, opset and the parity figures. DyT and AS-ViT are
refused: their token counts depend on the input. --benchmark then prints the median latency of PyTorch eager,
onnxruntime and TorchScript on this CPU (interleaved rounds, ratios to eager). Needs the export extra:
pip install -e '.[export]'.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", metavar="CKPT", help="what to export (any checkpoint video_st writes)")
    parser.add_argument("out", metavar="OUT", help="the file to write (OUT.json is written next to it)")
    parser.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    parser.add_argument("--backbone", help="the backbone an adapter-only file (trainable_final.pt) was trained on")
    parser.add_argument("--batch", type=int, default=1, help="batch of the example clip (the axis stays dynamic)")
    parser.add_argument("--benchmark", action="store_true", help="then time eager / onnxruntime / TorchScript")
    parser.add_argument("--rounds", type=int, default=20, help="rounds of --benchmark (default 20)")
    parser.add_argument("--threads", type=int, help="CPU threads of every runtime in --benchmark (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print --benchmark's rows as JSON too")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks of expected failures")
    args = parser.parse_args(argv)

    from video_st.errors import run_tool

    def export() -> int:
        from video_st.engine.export import benchmark_latency, export_checkpoint, latency_table, sidecar_path
        from video_st.engine.loading import load

        record = export_checkpoint(args.checkpoint, args.out, fmt=args.format, backbone=args.backbone,
                                   batch=args.batch)
        opset = f", opset {record['opset']}" if record["opset"] else ""
        print(f"wrote {args.out} ({record['format']}{opset}, {record['spec']['method']}, input "
              f"{record['input']['shape']}, dynamic batch; max abs diff to PyTorch "
              f"{record['parity']['max_abs_diff']:.3g} <= {record['parity']['tolerance']:g}) and "
              f"{sidecar_path(args.out)}")
        if args.benchmark:
            if args.threads:
                import torch

                torch.set_num_threads(args.threads)
            loaded = load(args.checkpoint, backbone=args.backbone)
            rows = benchmark_latency(loaded.model, loaded.spec, batch=args.batch, rounds=args.rounds)
            print(latency_table(rows))
            if args.json:
                print(json.dumps(rows))
        return 0

    return run_tool(export, verbose=args.verbose)


if __name__ == "__main__":
    raise SystemExit(main())
