#!/usr/bin/env python
"""Write a small synthetic video-classification dataset in the on-disk format of Kinetics-400 or SSv2.

The class of a video is only its motion (direction, and speed with more than 4 classes); appearance is random.
--style hard is the K400 layout of a harder task with ground-truth object masks (annotations/SPLIT_masks.npz):
a small object among look-alike distractors over a panning texture; --task target: 8 classes that only the
order of two motions tells apart ("moving right then up" / "moving up then right" ...); --task pretrain: 8
classes told by the direction of the first half (every sprite turns at the middle, whatever the class), the
related task a stand-in backbone is pre-trained on (video_st/synthetic/hard.py).

    python tools/make_synthetic_dataset.py --style k400 --out data/synth_k400          # 4 classes x (16 + 4) videos
    python tools/make_synthetic_dataset.py --style ssv2 --out data/synth_ssv2 --classes 8 --corrupt zero:1,garbage:1
    python tools/make_synthetic_dataset.py --style hard --out data/hard               # 8 x (128 + 16), 16 frames 64 x 64
    python tools/make_synthetic_dataset.py --style hard --task pretrain --out data/hard_pretrain --seed 1
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import video_st  # noqa: E402,F401  (applies library fixes before other project imports)
from video_st.synthetic.corrupt import parse_corrupt_spec  # noqa: E402
from video_st.synthetic.datasets import make_hard_style, make_k400_style, make_ssv2_style  # noqa: E402
from video_st.synthetic.hard import TASKS  # noqa: E402
from video_st.synthetic.scenes import MAX_CLASSES  # noqa: E402

MAKERS = {"k400": make_k400_style, "ssv2": make_ssv2_style, "hard": make_hard_style}
HARD_ONLY = ("task", "distractors", "show_object")


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
    # Defaults None: the style's own (k400/ssv2: 4 classes x (16 + 4), 32 frames of 66 x 88; hard: 8 x (128 + 16),
    # 16 frames of 64 x 64).
    parser.add_argument("--classes", dest="num_classes", type=_positive, metavar="N", help=f"number of classes, 2..{MAX_CLASSES}")
    parser.add_argument("--train-per-class", type=_positive)
    parser.add_argument("--val-per-class", type=_non_negative)
    parser.add_argument("--frames", dest="num_frames", type=_positive, metavar="N")
    parser.add_argument("--height", type=_positive)
    parser.add_argument("--width", type=_positive)
    parser.add_argument("--fps", type=_positive, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grain", type=float, default=0.0,
                        help="per-frame Gaussian noise std (5: bitrate and decoding cost of real 320p video)")
    parser.add_argument("--corrupt", type=_corrupt, default={}, metavar="KIND:N,...",
                        help="plant corrupt videos, e.g. zero:1,truncated:1,garbage:1")
    parser.add_argument("--task", choices=TASKS, help="hard style: target (default), pretrain or "
                        "pretrain_object classes (video_st/synthetic/hard.py)")
    parser.add_argument("--distractors", type=_non_negative, help="hard style: look-alike distractors (default: target 3, pretrain 5, pretrain_object 3)")
    parser.add_argument("--no-object", dest="show_object", action="store_false", default=None,
                        help="hard style: the same videos without the object (a control: no class left)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty folder, replacing the files a previous run generated")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")

    given = {k: getattr(args, k) for k in ("num_classes", "train_per_class", "val_per_class", "num_frames", "height",
                                           "width", *HARD_ONLY) if getattr(args, k) is not None}
    if args.style != "hard" and set(given) & set(HARD_ONLY):
        parser.error("--task, --distractors and --no-object are options of --style hard")
    try:
        summary = MAKERS[args.style](args.out, fps=args.fps, seed=args.seed, corrupt=args.corrupt,
                                     overwrite=args.overwrite, grain=args.grain, **given)
    except (ValueError, FileExistsError) as err:
        parser.error(str(err))
    print(summary.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
