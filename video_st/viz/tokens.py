"""Kept tokens: the ids a model's ``forward_features(x, return_token_ids=True)`` returns per stage -> boolean
(T', H', W') grids and counts per frame, labelled with the model's ``stage_names()``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import VideoSTError


class VisualizeError(VideoSTError):
    """Bad input that is neither a config nor a checkpoint error (an unreadable video, a view outside the config,
    a model without reduction stages); the message names the file or the option."""


@dataclass(frozen=True)
class Geometry:
    """The token grid of the model: ``grid`` = (T', H', W') tokens of ``tubelet`` frames x ``patch`` pixels, over
    frames of ``img_size`` pixels."""

    grid: tuple[int, int, int]
    tubelet: int
    patch: int
    img_size: int

    @property
    def tokens_per_step(self) -> int:
        return self.grid[1] * self.grid[2]


def geometry(model) -> Geometry:
    pe = model.patch_embed
    return Geometry(grid=tuple(pe.grid_size), tubelet=pe.tubelet_size, patch=pe.patch_size, img_size=pe.img_size)


def check_has_stages(model, checkpoint: str) -> None:
    """Refuse, before any work, a model with nothing to draw."""
    if not model.stage_names():
        raise VisualizeError(f"{checkpoint}: the model (method {model.spec.method}) has no token-reduction stages; "
                             "nothing to draw (use a checkpoint of sparse_tuning, evit, tome, asvit or dyt)")


def kept_token_ids(model, clip: torch.Tensor, checkpoint: str) -> list[torch.Tensor]:
    """One 1-D long tensor of kept grid ids per stage (fused / padding entries, -1, still in)."""
    check_has_stages(model, checkpoint)
    with torch.no_grad():
        _, kept = model.forward_features(clip[None], return_token_ids=True)
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


def summary_lines(masks: np.ndarray, labels: Sequence[str], geo: Geometry) -> list[str]:
    """One line per stage: the grid tokens it kept per frame, on average, and their share."""
    lines = []
    for s, label in enumerate(labels):
        mean = kept_per_frame(masks[s], geo).mean()
        lines.append(f"stage {s + 1} ({label}): kept {mean:.1f} of {geo.tokens_per_step} grid tokens per frame "
                     f"({100 * mean / geo.tokens_per_step:.0f}%)")
    return lines
