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
Dropped tokens are drawn as dimmed, greyed patch-sized blocks; kept tokens keep their pixels. Exit code 2 on bad
input (config, checkpoint, unreadable video, a model without reduction stages), with the file named.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import video_st  # noqa: E402,F401  (applies compat fixes before torchvision imports)
from video_st.config import ConfigError, add_config_arguments, load_config, parse_config_args  # noqa: E402
from video_st.data.annotations import VideoRecord  # noqa: E402
from video_st.data.datasets import MissingVideosError  # noqa: E402
from video_st.data.decode import VideoReadError  # noqa: E402
from video_st.engine.build import eval_dataset  # noqa: E402
from video_st.fileio import atomic_open  # noqa: E402
from video_st.errors import CheckpointError  # noqa: E402

_log = logging.getLogger("visualize_tokens")

# Layout (pixels). The tests rebuild tile positions from these and tile_origin(), so keep them the one source.
GAP = 4  # between tiles and around the image
TITLE_H = 16  # a line of the default font (about 12 px high) plus room
MIN_TILE = 160  # default --scale enlarges frames to at least this size: a 32 px demo frame is unreadable
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
# Dropped tokens: blended towards mid-grey, so the frame stays recognisable while the kept tokens stand out.
GREY = 128.0
DIM_KEEP = 0.25  # share of the original pixel left in a dropped patch


class VisualizeError(Exception):
    """Bad input that is neither a config, checkpoint nor video error (e.g. a model without reduction stages)."""


@dataclass(frozen=True)
class Geometry:
    """The token grid of the model: ``grid`` = (T', H', W') tokens of ``tubelet`` frames x ``patch`` pixels."""

    grid: tuple[int, int, int]
    tubelet: int
    patch: int
    num_frames: int
    img_size: int

    @property
    def tokens_per_step(self) -> int:
        return self.grid[1] * self.grid[2]


# -- inputs -------------------------------------------------------------------------------------------------------
def parse_view(text: str | None, temporal: int, spatial: int) -> tuple[int, int]:
    """``"T,S"`` -> (temporal view, spatial crop); None -> the centre ones (one view: that view)."""
    if text is None:
        return temporal // 2, spatial // 2
    try:
        t, s = (int(part) for part in text.split(","))
    except ValueError:
        raise VisualizeError(f"--view {text!r}: expected T,S (two integers), e.g. 0,1") from None
    if not (0 <= t < temporal and 0 <= s < spatial):
        raise VisualizeError(f"--view {text!r} outside the config's {temporal} temporal x {spatial} spatial views "
                             "(test.temporal_views, test.spatial_views)")
    return t, s


def load_clip(cfg, video: str, view: tuple[int, int]) -> tuple[torch.Tensor, np.ndarray]:
    """The model input (C, T, H, W) of ``view`` through the test data path, and the same clip as uint8 RGB frames
    (T, H, W, 3), denormalised with the transform's own mean/std."""
    temporal, spatial = cfg.test.temporal_views, cfg.test.spatial_views
    record = VideoRecord(path=video, label=-1, video_id=os.path.basename(video))
    dataset = eval_dataset(cfg, [record], temporal_views=temporal, spatial_views=spatial)
    item = dataset[0]
    index = view[0] * spatial + view[1]  # views are temporal-major (VideoClipDataset)
    if item["views"] is None or not item["view_ok"][index]:
        raise VideoReadError(video, item["error"] or f"view {view[0]},{view[1]} did not decode")
    clip = item["views"][index]
    return clip, denormalize(clip, dataset.transform.mean, dataset.transform.std)


def denormalize(clip: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised float (C, T, H, W) -> uint8 (T, H, W, C): undo ``(x / 255 - mean) / std``."""
    m = torch.tensor(mean).view(3, 1, 1, 1)
    s = torch.tensor(std).view(3, 1, 1, 1)
    pixels = ((clip * s + m) * 255.0).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).contiguous().numpy()


def load(cfg, checkpoint: str | None):
    """The model exactly as tools/test_net.py loads it (LoRA merged), in eval mode on the CPU: one clip does not
    need a GPU, and fp32 keeps the token ranking identical to the reference run."""
    from video_st.engine.testing import checkpoint_path, load_for_test

    path = checkpoint_path(cfg, checkpoint)
    loaded, _ = load_for_test(cfg, path)
    loaded.model.merge_lora()
    return loaded.model.eval(), path, loaded


def geometry(model) -> Geometry:
    pe = model.patch_embed
    return Geometry(grid=tuple(pe.grid_size), tubelet=pe.tubelet_size, patch=pe.patch_size,
                    num_frames=pe.num_frames, img_size=pe.img_size)


# -- kept tokens --------------------------------------------------------------------------------------------------
def kept_token_ids(model, clip: torch.Tensor, checkpoint: str) -> list[torch.Tensor]:
    """One 1-D long tensor of kept grid ids per stage (fused / padding entries, -1, still in)."""
    with torch.no_grad():
        _, kept = model.forward_features(clip[None], return_token_ids=True)
    if not kept:
        raise VisualizeError(f"{checkpoint}: the model (method {model.spec.method}) has no token-reduction stages; "
                             "nothing to draw (use a checkpoint of sparse_tuning, evit, tome, asvit or dyt)")
    return [ids[0] for ids in kept]


def stage_labels(model, count: int) -> list[str]:
    """The model's own stage names (one per entry of its kept-token ids)."""
    labels = model.stage_names()
    if len(labels) != count:
        raise VisualizeError(f"the model names {len(labels)} stages but returned {count} kept-token sets")
    return labels


def kept_masks(kept: Sequence[torch.Tensor], geo: Geometry) -> np.ndarray:
    """Per stage, a boolean (T', H', W') grid: True where the stage kept that token. Ids < 0 are not grid tokens
    (the fused token, padding) and are ignored."""
    total = math.prod(geo.grid)
    masks = np.zeros((len(kept), total), dtype=bool)
    for stage, ids in enumerate(kept):
        ids = ids[ids >= 0].cpu().numpy()
        if ids.size and ids.max() >= total:
            raise VisualizeError(f"stage {stage + 1} returned token id {int(ids.max())}, but the grid "
                                 f"{geo.grid} has only {total} tokens")
        masks[stage, ids] = True
    return masks.reshape(len(kept), *geo.grid)


def kept_per_frame(mask: np.ndarray, geo: Geometry) -> np.ndarray:
    """Grid tokens kept for each frame (a frame belongs to tubelet step ``frame // tubelet``)."""
    per_step = mask.reshape(mask.shape[0], -1).sum(axis=1)
    return np.repeat(per_step, geo.tubelet)


# -- drawing ------------------------------------------------------------------------------------------------------
def dim(pixels: np.ndarray) -> np.ndarray:
    """A dropped token's pixels: blended towards grey (uint8 in, uint8 out)."""
    return np.round(pixels.astype(np.float32) * DIM_KEEP + GREY * (1.0 - DIM_KEEP)).astype(np.uint8)


def overlay(frame: np.ndarray, step_mask: np.ndarray, patch: int) -> np.ndarray:
    """``frame`` (H, W, 3) with every patch whose token ``step_mask`` (H', W') marks dropped dimmed."""
    drop = np.repeat(np.repeat(~step_mask, patch, axis=0), patch, axis=1)
    out = frame.copy()
    out[drop] = dim(frame[drop])
    return out


def tile_origin(row: int, col: int, tile_w: int, tile_h: int, col_labels: bool) -> tuple[int, int]:
    """Top-left pixel of tile (row, col) in render_grid's layout: an optional band of column labels on top,
    then per row a title band and the tiles, GAP apart."""
    top = GAP + (TITLE_H if col_labels else 0)
    return GAP + col * (tile_w + GAP), top + row * (TITLE_H + tile_h + GAP) + TITLE_H


def render_grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str], col_labels: Sequence[str] | None,
                scale: int) -> Image.Image:
    """Tiles (uint8 H x W x 3, all one size) enlarged ``scale`` times with nearest neighbour (patches stay sharp
    blocks), a title above each row and optional labels above the columns."""
    tile_h, tile_w = rows[0][0].shape[0] * scale, rows[0][0].shape[1] * scale
    ncols = max(len(r) for r in rows)
    width = GAP + ncols * (tile_w + GAP)
    height = tile_origin(len(rows), 0, tile_w, tile_h, bool(col_labels))[1] - TITLE_H
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    for c, label in enumerate(col_labels or ()):
        draw.text((GAP + c * (tile_w + GAP), GAP), label, fill=TEXT, font=font)
    for r, (row, title) in enumerate(zip(rows, titles, strict=True)):
        x0, y0 = tile_origin(r, 0, tile_w, tile_h, bool(col_labels))
        draw.text((x0, y0 - TITLE_H + 2), title, fill=TEXT, font=font)
        for c, tile in enumerate(row):
            big = Image.fromarray(tile).resize((tile_w, tile_h), Image.Resampling.NEAREST)
            image.paste(big, tile_origin(r, c, tile_w, tile_h, bool(col_labels)))
    return image


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") or "stage"


def save_png(image: Image.Image, path: str) -> None:
    with atomic_open(path, "wb") as f:
        image.save(f, format="PNG")


def save_gif(frames: Sequence[Image.Image], path: str, fps: float) -> None:
    # loop=0: repeat forever; every GIF frame carries its frame number, so Pillow never merges two as duplicates.
    with atomic_open(path, "wb") as f:
        frames[0].save(f, format="GIF", save_all=True, append_images=list(frames[1:]),
                       duration=round(1000 / fps), loop=0, optimize=False)


# -- the three outputs --------------------------------------------------------------------------------------------
def draw_all(frames: np.ndarray, masks: np.ndarray, labels: Sequence[str], geo: Geometry, *, scale: int,
             fps: float, view: tuple[int, int], out: str) -> list[str]:
    """Write overview.png, one PNG per stage and tokens.gif into ``out``; returns the paths written."""
    num_frames, per_step = frames.shape[0], geo.tokens_per_step
    tiles = [[overlay(frames[f], masks[s, f // geo.tubelet], geo.patch) for f in range(num_frames)]
             for s in range(len(labels))]
    counts = [kept_per_frame(m, geo) for m in masks]
    written = []

    titles = [f"input (view {view[0]},{view[1]})"] + [
        f"{label}: {c.mean():.1f} of {per_step} tokens / frame" for label, c in zip(labels, counts, strict=True)]
    overview = render_grid([list(frames)] + tiles, titles, [f"frame {f}" for f in range(num_frames)], scale)
    written.append(os.path.join(out, "overview.png"))
    save_png(overview, written[-1])

    for s, label in enumerate(labels):
        steps = [tiles[s][t * geo.tubelet:(t + 1) * geo.tubelet] for t in range(geo.grid[0])]
        step_titles = [f"{label}, step {t}: frames {t * geo.tubelet}-{(t + 1) * geo.tubelet - 1}, kept "
                       f"{int(masks[s, t].sum())}/{per_step}" for t in range(geo.grid[0])]
        written.append(os.path.join(out, f"stage{s + 1}_{slug(label)}.png"))
        save_png(render_grid(steps, step_titles, None, scale), written[-1])

    gif = [render_grid([[frames[f]] + [tiles[s][f] for s in range(len(labels))]],
                       [f"frame {f + 1}/{num_frames}"], ["input", *labels], scale) for f in range(num_frames)]
    written.append(os.path.join(out, "tokens.gif"))
    save_gif(gif, written[-1], fps)
    return written


def summary_lines(masks: np.ndarray, labels: Sequence[str], geo: Geometry) -> list[str]:
    lines = []
    for s, label in enumerate(labels):
        mean = kept_per_frame(masks[s], geo).mean()
        lines.append(f"stage {s + 1} ({label}): kept {mean:.1f} of {geo.tokens_per_step} grid tokens per frame "
                     f"({100 * mean / geo.tokens_per_step:.0f}%)")
    return lines


# -- command line -------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> list[str]:
    cfg = load_config(args.config, args.overrides)
    view = parse_view(args.view, cfg.test.temporal_views, cfg.test.spatial_views)
    if not os.path.exists(args.video):  # before loading a model: the cheapest mistake to report
        raise VideoReadError(args.video, "no such file")
    model, path, meta = load(cfg, args.checkpoint)
    geo = geometry(model)
    clip, frames = load_clip(cfg, args.video, view)
    kept = kept_token_ids(model, clip, path)
    labels = stage_labels(model, len(kept))
    masks = kept_masks(kept, geo)
    scale = args.scale or max(1, math.ceil(MIN_TILE / geo.img_size))
    written = draw_all(frames, masks, labels, geo, scale=scale, fps=args.fps, view=view, out=args.out)
    print(f"{args.video}, view {view[0]},{view[1]}; checkpoint {path} ({meta.kind})")
    for file in written:
        print(f"wrote {file}")
    for line in summary_lines(masks, labels, geo):
        print(line)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, "key=value config overrides, e.g. model.pretrained=backbone.pt")
    parser.add_argument("--checkpoint", help="what to load (default: the best checkpoint of output_dir)")
    parser.add_argument("--video", required=True, help="the video file to draw")
    parser.add_argument("--out", required=True, help="folder for overview.png, stageK_*.png, tokens.gif")
    parser.add_argument("--view", help="T,S: temporal clip and spatial crop of the test views (default: centre)")
    parser.add_argument("--scale", type=int, default=0,
                        help=f"enlarge frames this many times (default: to at least {MIN_TILE} px)")
    parser.add_argument("--fps", type=float, default=4.0, help="frames per second of tokens.gif")
    args = parse_config_args(parser, argv)  # options, config files and key=value overrides in any order
    if args.scale < 0 or args.fps <= 0:
        parser.error("--scale must be >= 0 and --fps > 0")

    from video_st.engine.logs import setup_logging

    setup_logging()
    try:
        run(args)
    except (ConfigError, CheckpointError, VideoReadError, MissingVideosError, VisualizeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
