#!/usr/bin/env python
"""Multi-view test of a trained model: top-1, top-5, mean class accuracy, per-video predictions, confusion.

    python tools/test_net.py --config configs/datasets/k400.yaml configs/methods/sparse_tuning.yaml \\
        --checkpoint runs/st/checkpoints data.test=/data/k400/annotations/test.csv test.temporal_views=1

--config takes one or more YAML files, merged left to right (the ones the run was trained with), then the
key=value overrides.

--checkpoint takes a run's checkpoint folder (its best.json, else latest), one DeepSpeed/DDP checkpoint folder,
model_final.pt, an adapter-only file (trainable_final.pt, with model.pretrained=the backbone), or a VideoMAE /
Hugging Face / timm checkpoint. Without it: the best checkpoint of the config's output_dir. Runs alone or under
torchrun / srun; every (video, view) is computed once over all ranks. Outputs go to OUTPUT_DIR/test (or --output):
summary.json, predictions.csv, probabilities.pt, per_class.csv, confusion.png, excluded_videos.txt,
partial_videos.txt.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from video_st.cli_args import add_config_arguments, parse_config_args
    from video_st.config import load_config

    add_config_arguments(parser, "key=value overrides, e.g. test.temporal_views=5 test.ensemble=logit")
    parser.add_argument("--checkpoint", help="what to test (default: the best checkpoint of output_dir)")
    parser.add_argument("--output", help="folder for the results (default: OUTPUT_DIR/test)")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    args = parse_config_args(parser, argv)  # options, config files and key=value overrides in any order

    from video_st.engine.logs import setup_logging
    from video_st.engine.report import format_summary
    from video_st.engine.multiview import run_test
    from video_st.errors import run_tool

    rank = setup_logging()

    def test() -> int:
        summary = run_test(load_config(args.config, args.overrides), args.checkpoint, args.output)
        if rank == "0":
            print(format_summary(summary))
        return 0

    return run_tool(test, verbose=args.verbose)


if __name__ == "__main__":
    raise SystemExit(main())
