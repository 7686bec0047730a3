#!/usr/bin/env python
"""Fine-tune a model of the project on a dataset of the project.

    python tools/train_net.py --config configs/datasets/k400.yaml configs/methods/sparse_tuning.yaml \\
        data.root=/data/k400 data.train=/data/k400/annotations/train.csv data.val=/data/k400/annotations/val.csv \\
        model.pretrained=/ckpt/vit_b16_in21k.pt output_dir=runs/st

--config takes one or more YAML files, merged left to right (a dataset file, then a method file: configs/README.md).
Any key of the config can be overridden as key=value, after or among the files (unknown keys are errors naming
the closest valid key; a later override wins).
Launch with nothing (one process), torchrun, the deepspeed launcher, or srun: the engine reads each one's
environment. Exit code 0: finished; 75: stopped by SIGUSR1/SIGTERM after saving a checkpoint (requeue it; the
next start resumes from that checkpoint with checkpoint.resume=auto, the default).
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

    add_config_arguments(parser, "key=value overrides, e.g. optim.lr=5e-4 engine.kind=ddp")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
    args = parse_config_args(parser, argv)  # options, config files and key=value overrides in any order

    from video_st.engine.logs import setup_logging
    from video_st.engine.train import train
    from video_st.errors import run_tool

    setup_logging()
    return run_tool(lambda: train(load_config(args.config, args.overrides)), verbose=args.verbose)


if __name__ == "__main__":
    raise SystemExit(main())
