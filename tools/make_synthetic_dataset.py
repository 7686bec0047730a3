#!/usr/bin/env python
"""Write a small synthetic video-classification dataset in the on-disk format of Kinetics-400 or SSv2.

The class of a video is only its motion (direction, and speed with more than 4 classes); appearance is random.

    python tools/make_synthetic_dataset.py --style k400 --out data/synth_k400          # 4 classes x (16 + 4) videos
    python tools/make_synthetic_dataset.py --style ssv2 --out data/synth_ssv2 --classes 8 --corrupt zero:1,garbage:1
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import video_st  # noqa: E402,F401  (applies library fixes before other project imports)
from video_st.synthetic.datasets import make_k400_style, make_ssv2_style, parse_corrupt_spec  # noqa: E402
from video_st.synthetic.scenes import MAX_CLASSES  # noqa: E402

MAKERS = {"k400": make_k400_style, "ssv2": make_ssv2_style}


def _positive(text: str) -> int:
    return _int_at_least(text, 1)


def _non_negative(text: str) -> int:
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def _corrupt(text: str) -> dict[str, int]:
    try:
        return parse_corrupt_spec(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--style", required=True, choices=sorted(MAKERS))
    parser.add_argument("--out", required=True, help="output folder (must be empty or absent unless --overwrite)")
    parser.add_argument("--classes", type=_positive, default=4, help=f"number of classes, 2..{MAX_CLASSES} (default 4)")
    parser.add_argument("--train-per-class", type=_positive, default=16)
    parser.add_argument("--val-per-class", type=_non_negative, default=4)
    parser.add_argument("--frames", type=_positive, default=32)
    parser.add_argument("--height", type=_positive, default=66)
    parser.add_argument("--width", type=_positive, default=88)
    parser.add_argument("--fps", type=_positive, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grain", type=float, default=0.0,
                        help="per-frame Gaussian noise std (5: bitrate and decoding cost of real 320p video)")
    parser.add_argument("--corrupt", type=_corrupt, default={}, metavar="KIND:N,...",
                        help="plant corrupt videos, e.g. zero:1,truncated:1,garbage:1")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty folder, replacing the files a previous run generated")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")

    try:
        summary = MAKERS[args.style](
            args.out, num_classes=args.classes, train_per_class=args.train_per_class,
            val_per_class=args.val_per_class, num_frames=args.frames, height=args.height, width=args.width,
            fps=args.fps, seed=args.seed, corrupt=args.corrupt, overwrite=args.overwrite, grain=args.grain,
        )
    except (ValueError, FileExistsError) as err:
        parser.error(str(err))
    print(summary.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
