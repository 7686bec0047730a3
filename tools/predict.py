#!/usr/bin/env python
"""Top-k classes of videos by a trained model, with the multi-view test protocol of tools/test_net.py.

    python tools/predict.py clip.mp4 videos/ list.txt --checkpoint runs/st --views 1,3 --top-k 5 --out predictions

Inputs: video files, folders (every video below them) and lists (.txt/.lst/.list: one path per line, relative to
the list's folder). --checkpoint takes what tools/test_net.py takes of video_st's own files: a run folder, its
checkpoints folder, one checkpoint folder, model_final.pt, or an adapter-only file with --backbone. The clip
geometry is the checkpoint's; the data settings (sampling, stride, short side) come from --config, else the run's
config.yaml beside the checkpoint, else the defaults; --views T,S (default: the config's test views, 1,3 by
default as K400). Prints a table per video and writes OUT/predictions.json and OUT/predictions.csv (default
./predictions); --tokens DIR also draws, per video, which tokens each reduction stage kept over the centre view
(DIR/NAME/overview.png, stageK_*.png, tokens.gif; a model without reduction stages is refused up front). Unreadable videos are reported in both; exit 0 when at least one video was predicted, else 2.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    from video_st.cli_args import views_argument

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="VIDEO|FOLDER|LIST")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--backbone", help="the backbone an adapter-only file was trained on")
    parser.add_argument("--config", nargs="+", metavar="YAML", help="config file(s) for the data settings and views")
    parser.add_argument("--views", type=views_argument, metavar="T,S", help="temporal,spatial test views")
    parser.add_argument("--ensemble", choices=("prob", "logit", "max"))
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4, help="videos per batch")
    parser.add_argument("--workers", type=int, default=0, help="decoding worker processes")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--tokens", metavar="DIR", help="also draw the tokens each stage kept (centre view), one "
                        "folder per video (as tools/visualize_tokens.py draws them)")
    parser.add_argument("--out", default="predictions", help="folder for predictions.json/.csv (default ./predictions)")
    parser.add_argument("-v", "--verbose", action="store_true", help="a traceback with every error line")
    args = parser.parse_args(argv)

    from video_st.engine.predict import Predictor, format_table, write_predictions
    from video_st.errors import VideoSTError, run_tool
    from video_st.viz.tokens import check_has_stages
    from video_st.viz.visualize import draw_predictions

    def run() -> int:
        temporal, spatial = args.views or (None, None)
        predictor = Predictor(args.checkpoint, backbone=args.backbone, config=args.config, temporal_views=temporal,
                              spatial_views=spatial, ensemble=args.ensemble, top_k=args.top_k,
                              batch_size=args.batch_size, num_workers=args.workers, device=args.device)
        if args.tokens:  # a model with nothing to draw is refused before any video is read
            check_has_stages(predictor.model, predictor.checkpoint)
        predictions = predictor.predict(args.inputs)
        print(format_table(predictions))
        json_file, csv_file = write_predictions(predictions, args.out, predictor)
        print(f"written: {json_file}, {csv_file}")
        if args.tokens:
            folders = draw_predictions(predictor, predictions, args.tokens)
            print(f"tokens drawn for {len(folders)} videos in {args.tokens} (overview.png, stageK_*.png, tokens.gif)")
        if not any(p.ok for p in predictions):
            raise VideoSTError(f"none of the {len(predictions)} videos could be read")
        return 0

    return run_tool(run, verbose=args.verbose)


if __name__ == "__main__":
    raise SystemExit(main())
