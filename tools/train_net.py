#!/usr/bin/env python
"""Fine-tune a model of the project on a dataset of the project.

    python tools/train_net.py --config configs/k400/sparse_tuning_vit_b16.yaml data.root=/data/k400 \\
        data.train=/data/k400/annotations/train.csv data.val=/data/k400/annotations/val.csv output_dir=runs/st

Any key of the config can be overridden as key=value (unknown keys are errors naming the closest valid key).
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
    parser.add_argument("--config", help="YAML delta over the typed defaults (video_st/config.py)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=5e-4 engine.kind=ddp")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
    args = parser.parse_intermixed_args(argv)  # options and key=value overrides in any order

    from video_st.config import ConfigError, load_config
    from video_st.engine.logs import setup_logging
    from video_st.engine.train import train

    setup_logging()

    try:
        cfg = load_config(args.config, args.overrides)
        return train(cfg)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
