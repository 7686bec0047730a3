#!/usr/bin/env python
"""Draw which tokens each token-reduction stage kept, over every frame of one clip (Sparse-Tuning's Figure 5,
for video).

    python tools/visualize_tokens.py --config configs/tiny_cpu.yaml --video outputs/demo/k400/val/VIDEO.mp4 \\
        --out outputs/demo/sparse_tuning/tokens model.pretrained=outputs/demo/backbone.pt
    python tools/visualize_tokens.py --config configs/datasets/k400.yaml configs/methods/sparse_tuning.yaml \\
        output_dir=runs/st_k400 --checkpoint runs/st_k400/model_final.pt --video clip.mp4 --out vis/clip --view 0,2 --scale 2

The clip goes through the project's own test path (decode, temporal view, short-side resize, spatial crop,
normalisation: video_st/engine/build.py eval_dataset), so the drawn frames are exactly what the model saw. --view
T,S picks temporal clip T of test.temporal_views and spatial crop S of test.spatial_views (default: the centre
ones). --checkpoint takes what tools/test_net.py takes (default: the best checkpoint of output_dir; an adapter-only
file needs model.pretrained). Any model whose ``forward_features(x, return_token_ids=True)`` returns kept-token
ids works, with any number of stages (Sparse-Tuning, EViT, ToMe, ... one entry per stage; DyT one per layer).

Outputs in --out (written atomically):
  overview.png           rows: the input clip, then one row per stage; columns: the clip's frames
  stageK_LABEL.png       one per stage; rows: tubelet time steps, columns: the frames of that tubelet
  tokens.gif             the clip played with the input and every stage's overlay side by side
Dropped tokens are drawn as dimmed, greyed patch-sized blocks; kept tokens keep their pixels. Where the video has a
ground-truth object mask (the hard generated style writes ROOT/annotations/SPLIT_masks.npz; found by itself for a
video in ROOT/SPLIT/, or given with --masks), the object is outlined in magenta on every frame. Exit code 2 on bad
input (config, checkpoint, unreadable video, a model without reduction stages), with the file named. The drawing
code is video_st/viz/.
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
    from video_st.viz.draw import MIN_TILE

    add_config_arguments(parser, "key=value config overrides, e.g. model.pretrained=backbone.pt")
    parser.add_argument("--checkpoint", help="what to load (default: the best checkpoint of output_dir)")
    parser.add_argument("--video", required=True, help="the video file to draw")
    parser.add_argument("--out", required=True, help="folder for overview.png, stageK_*.png, tokens.gif")
    parser.add_argument("--view", help="T,S: temporal clip and spatial crop of the test views (default: centre)")
    parser.add_argument("--scale", type=int, default=0,
                        help=f"enlarge frames this many times (default: to at least {MIN_TILE} px)")
    parser.add_argument("--fps", type=float, default=4.0, help="frames per second of tokens.gif")
    parser.add_argument("--masks", help="object masks (.npz) to outline the object from (default: the video's "
                        "split's ROOT/annotations/SPLIT_masks.npz, when there is one)")
    args = parse_config_args(parser, argv)  # options, config files and key=value overrides in any order
    if args.scale < 0 or args.fps <= 0:
        parser.error("--scale must be >= 0 and --fps > 0")

    from video_st.engine.logs import setup_logging
    from video_st.errors import run_tool
    from video_st.viz.visualize import visualize

    setup_logging()

    def draw() -> int:
        cfg = load_config(args.config, args.overrides)
        print(visualize(cfg, args.video, args.out, checkpoint=args.checkpoint, view=args.view, scale=args.scale,
                        fps=args.fps, masks=args.masks).report())
        return 0

    return run_tool(draw, verbose=args.verbose)


if __name__ == "__main__":
    raise SystemExit(main())
