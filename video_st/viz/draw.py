"""Pixels: denormalised frames, dropped tokens dimmed, the ground-truth object outlined (when masks exist), tiles
laid out in a grid with titles, and the three outputs (overview.png, stageK_LABEL.png, tokens.gif), each written
atomically."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..fileio import atomic_open
from .tokens import Geometry, kept_per_frame

# Layout (pixels). The tests rebuild tile positions from these and tile_origin(), so keep them the one source.
GAP = 4  # between tiles and around the image
TITLE_H = 16  # a line of the default font (about 12 px high) plus room
MIN_TILE = 160  # the default scale enlarges frames to at least this size: a 32 px demo frame is unreadable
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
# Dropped tokens: blended towards mid-grey, so the frame stays recognisable while the kept tokens stand out.
GREY = 128.0
DIM_KEEP = 0.25  # share of the original pixel left in a dropped patch
OUTLINE = (255, 0, 255)  # the ground-truth object's contour: magenta, rare in the generated scenes


def denormalize(clip: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised float (C, T, H, W) -> uint8 (T, H, W, C): undo ``(x / 255 - mean) / std``."""
    m = torch.tensor(mean).view(3, 1, 1, 1)
    s = torch.tensor(std).view(3, 1, 1, 1)
    pixels = ((clip * s + m) * 255.0).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).contiguous().numpy()


def default_scale(geo: Geometry) -> int:
    """The enlargement that makes a frame at least MIN_TILE pixels."""
    return max(1, math.ceil(MIN_TILE / geo.img_size))


def dim(pixels: np.ndarray) -> np.ndarray:
    """A dropped token's pixels: blended towards grey (uint8 in, uint8 out)."""
    return np.round(pixels.astype(np.float32) * DIM_KEEP + GREY * (1.0 - DIM_KEEP)).astype(np.uint8)


def overlay(frame: np.ndarray, step_mask: np.ndarray, patch: int) -> np.ndarray:
    """``frame`` (H, W, 3) with every patch whose token ``step_mask`` (H', W') marks dropped dimmed."""
    drop = np.repeat(np.repeat(~step_mask, patch, axis=0), patch, axis=1)
    out = frame.copy()
    out[drop] = dim(frame[drop])
    return out


def outline(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``frame`` (H, W, 3) with the contour of the object ``mask`` (H, W) bool marks drawn in OUTLINE: the pixels
    just outside it (4-neighbours of an object pixel), so the object's own pixels stay as they are."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    out = frame.copy()
    out[grown & ~mask] = OUTLINE
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
    """A stage label as a file-name part: ``"layer 2 MLP"`` -> ``"layer_2_mlp"``."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") or "stage"


def save_png(image: Image.Image, path: str) -> None:
    with atomic_open(path, "wb") as f:
        image.save(f, format="PNG")


def save_gif(frames: Sequence[Image.Image], path: str, fps: float) -> None:
    # loop=0: repeat forever; every GIF frame carries its frame number, so Pillow never merges two as duplicates.
    with atomic_open(path, "wb") as f:
        frames[0].save(f, format="GIF", save_all=True, append_images=list(frames[1:]),
                       duration=round(1000 / fps), loop=0, optimize=False)


def draw_all(frames: np.ndarray, masks: np.ndarray, labels: Sequence[str], geo: Geometry, *, scale: int,
             fps: float, view: tuple[int, int], out: str, outlines: np.ndarray | None = None) -> list[str]:
    """Write into ``out`` overview.png (rows: the input clip, then one per stage; columns: the frames), one PNG per
    stage (rows: tubelet steps; columns: the frames of the step) and tokens.gif (the input and every stage's
    overlay side by side, frame by frame); returns the paths written. ``outlines``: bool (T, H, W), the
    ground-truth object in the clip's pixels, outlined on every drawn frame."""
    num_frames, per_step = frames.shape[0], geo.tokens_per_step
    tiles = [[overlay(frames[f], masks[s, f // geo.tubelet], geo.patch) for f in range(num_frames)]
             for s in range(len(labels))]
    if outlines is not None:
        frames = np.stack([outline(frame, mask) for frame, mask in zip(frames, outlines, strict=True)])
        tiles = [[outline(tile, outlines[f]) for f, tile in enumerate(row)] for row in tiles]
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
