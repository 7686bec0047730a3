#!/usr/bin/env python
"""Convert a pre-trained checkpoint into a video_st file for a given video geometry.

SRC may be a timm ViT state dict (.pth/.bin/.safetensors), the original JAX ViT release (.npz), a VideoMAE
checkpoint (pre-training or fine-tuned), or a Hugging Face VideoMAE folder / safetensors file. The source
format is recognised from the key names.

    python tools/convert_checkpoint.py ViT-B_16.npz vit_b16_k400.pth --frames 8 --img-size 224 --inflation central
    python tools/convert_checkpoint.py videomae-base-finetuned-kinetics/ videomae_b_8f.pth --frames 8 \\
        --set pos_embed_grid=[8,14,14]

The output (``{"state_dict", "video_st": metadata}``) loads with ``create_model(arch, pretrained=DST)`` and is
written atomically.
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import video_st  # noqa: E402


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="checkpoint file or Hugging Face model folder")
    parser.add_argument("dst", help="output .pth")
    parser.add_argument("--arch", default=None, help="registered variant (default: guessed from the weights)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--tubelet", type=int, default=None, help="default: the checkpoint's, or 2 for image sources")
    parser.add_argument("--num-classes", type=int, default=None, help="default: the checkpoint head's (0 without one)")
    parser.add_argument("--inflation", default="central", choices=["central", "average"],
                        help="2-D patch kernel -> tube kernel (image sources only)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other VideoViT argument, e.g. pos_embed_grid=[8,14,14] or norm_eps=1e-12")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    kwargs = dict(num_frames=args.frames, img_size=args.img_size) | _parse_set(args.set)
    if args.tubelet is not None:
        kwargs["tubelet_size"] = args.tubelet
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    try:
        meta = video_st.convert_checkpoint(args.src, args.dst, arch=args.arch, inflation=args.inflation, **kwargs)
    except (video_st.CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    spec = meta["spec"]
    arch = spec["backbone"]
    print(f"{args.src} ({meta['source']}) -> {args.dst}: {spec['arch']}, {arch['num_frames']} frames at "
          f"{arch['img_size']}, tubelet {arch['tubelet_size']}, class_token={arch['class_token']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
