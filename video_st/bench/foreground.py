"""Does token selection keep the object? Kept tokens per stage scored against ground-truth foreground masks.

The hard generated style (video_st/synthetic/hard.py) writes, next to each split's annotations, the pixels its
object covers in every frame (``annotations/{split}_masks.npz``: video_st/data/masks.py). Here each test view
goes through the project's own test path (``engine.build.eval_dataset``: the view's frames, short-side resize,
crop), the same frames and geometry map the mask onto the model's token grid (``masks.view_token_masks``: a token
is foreground when the object covers at least ``min_fraction`` of its pixels), and the model's
``forward_features(x, return_token_ids=True)`` says which grid tokens each stage kept (ids < 0, the fused token
and padding, are not grid tokens and are not counted).

Per stage, summed over every scored clip (micro average: a clip with more foreground weighs more):

- recall = kept foreground tokens / foreground tokens; precision = kept foreground tokens / kept grid tokens;
- the same for a uniformly random choice of the same number of tokens in each clip, computed exactly: a clip of
  N grid tokens, F foreground, k kept expects k F / N foreground among a random k, so random recall =
  sum(k F / N) / sum(F) and random precision = sum(k F / N) / sum(k) (with one keep count for every clip they are
  the keep share k / N and the foreground share F / N);
- lift = recall / random recall (1: selection no better than chance for the object).

Models without reduction stages (full, linear, adapters, LoRA ...) keep every token: the result then has no
stages. Imported by tools and tests only.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from omegaconf import DictConfig

from ..data.masks import MIN_FRACTION, masks_beside, masks_for, view_token_masks
from ..engine.build import eval_dataset, read_split, split_file
from ..engine.evaluate import ensemble_views
from ..errors import VideoSTError
from ..fileio import write_atomic


class ForegroundError(VideoSTError):
    """A model whose token grid does not fit the data (a missing masks file: data.masks.MasksError)."""


@dataclass(frozen=True)
class StageForeground:
    """One stage's token selection against the ground truth, summed over ``clips`` clips."""

    stage: str  # the model's stage name (VideoViT.stage_names)
    clips: int
    tokens: int  # grid tokens of all clips
    foreground: int  # ground-truth foreground tokens
    kept: int  # grid tokens the stage kept
    kept_foreground: int  # kept and foreground
    random_kept_foreground: float  # expected kept-and-foreground of a random choice of the same counts

    @property
    def recall(self) -> float:
        return _ratio(self.kept_foreground, self.foreground)

    @property
    def precision(self) -> float:
        return _ratio(self.kept_foreground, self.kept)

    @property
    def random_recall(self) -> float:
        return _ratio(self.random_kept_foreground, self.foreground)

    @property
    def random_precision(self) -> float:
        return _ratio(self.random_kept_foreground, self.kept)

    @property
    def lift(self) -> float:
        return _ratio(self.recall, self.random_recall)

    @property
    def keep_share(self) -> float:
        return _ratio(self.kept, self.tokens)

    @property
    def foreground_share(self) -> float:
        return _ratio(self.foreground, self.tokens)

    def to_json(self) -> dict:
        return {**asdict(self), **{k: getattr(self, k) for k in
                                   ("recall", "precision", "random_recall", "random_precision", "lift",
                                    "keep_share", "foreground_share")}}

    def describe(self) -> str:
        return (f"{self.stage}: recall {self.recall:.3f} (random {self.random_recall:.3f}, lift {self.lift:.2f}), "
                f"precision {self.precision:.3f} (random {self.random_precision:.3f}); kept "
                f"{100 * self.keep_share:.0f}% of tokens, foreground {100 * self.foreground_share:.1f}%")


@dataclass(frozen=True)
class ForegroundResult:
    stages: tuple[StageForeground, ...]  # empty: the model keeps every token
    videos: int  # videos scored
    clips: int  # views scored (videos x views that decoded)
    failed: tuple[str, ...]  # videos none of whose views decoded (paths)
    min_fraction: float
    masks_file: str
    top1: float = math.nan  # of the scored videos, their views' softmax averaged (engine.evaluate's "prob")

    def describe(self) -> str:
        head = (f"foreground tokens (>= {self.min_fraction:g} of a token's pixels) of {self.videos} videos, "
                f"{self.clips} clips ({self.masks_file})" + (f"; {len(self.failed)} failed" if self.failed else ""))
        body = [s.describe() for s in self.stages] or ["no token-reduction stages: every token is kept"]
        return "\n".join([head, *body])

    def to_json(self) -> dict:
        return {"videos": self.videos, "clips": self.clips, "failed": list(self.failed), "top1": self.top1,
                "min_fraction": self.min_fraction, "masks_file": self.masks_file,
                "stages": [s.to_json() for s in self.stages]}

    def write(self, path: str | os.PathLike) -> None:
        write_atomic(path, json.dumps(self.to_json(), indent=1) + "\n")


class ForegroundMeter:
    """Accumulates, per stage, the counts of :class:`StageForeground` over batches of clips."""

    def __init__(self) -> None:
        self._sums: list[np.ndarray] = []  # per stage: [clips, tokens, fg, kept, kept_fg, random_kept_fg]

    def update(self, kept: Sequence[torch.Tensor], foreground: np.ndarray | torch.Tensor) -> None:
        """``kept``: per stage a (B, n) long tensor of kept grid ids (ids < 0 ignored); ``foreground``: bool
        (B, T', H', W') token masks of the same B clips."""
        fg = torch.as_tensor(np.asarray(foreground, dtype=bool)).reshape(len(foreground), -1)
        batch, total = fg.shape
        if not self._sums:
            self._sums = [np.zeros(6) for _ in kept]
        if len(kept) != len(self._sums):
            raise ValueError(f"{len(kept)} stages in this batch, {len(self._sums)} before")
        fg_count = fg.sum(1).double()
        for sums, ids in zip(self._sums, kept, strict=True):
            ids = ids.detach().cpu().long()
            if ids.shape[0] != batch:
                raise ValueError(f"kept ids of {ids.shape[0]} clips for {batch} masks")
            if ids.numel() and int(ids.max()) >= total:
                raise ValueError(f"token id {int(ids.max())} outside the grid of {total} tokens")
            keep = torch.zeros(batch, total + 1, dtype=torch.bool)  # column `total`: where ids < 0 go
            keep.scatter_(1, torch.where(ids >= 0, ids, total), True)
            keep = keep[:, :total]
            k = keep.sum(1).double()
            sums += [batch, batch * total, float(fg_count.sum()), float(k.sum()), float((keep & fg).sum()),
                     float((k * fg_count / total).sum())]

    def result(self, names: Sequence[str]) -> tuple[StageForeground, ...]:
        """One record per stage name (all counts 0 when nothing was scored: its ratios are then NaN)."""
        sums = self._sums or [np.zeros(6) for _ in names]
        if len(names) != len(sums):
            raise ValueError(f"{len(names)} stage names for {len(sums)} stages")
        return tuple(StageForeground(stage=name, clips=int(s[0]), tokens=int(s[1]), foreground=int(s[2]),
                                     kept=int(s[3]), kept_foreground=int(s[4]), random_kept_foreground=float(s[5]))
                     for name, s in zip(names, sums, strict=True))


def foreground_scores(model, cfg: DictConfig, *, split: str = "val", masks_file: str | None = None,
                      temporal_views: int = 1, spatial_views: int = 1, min_fraction: float = MIN_FRACTION,
                      batch_size: int = 8, max_videos: int | None = None,
                      object_first: bool = False) -> ForegroundResult:
    """Score ``model``'s token selection on the test views of ``split`` of the dataset ``cfg.data`` names.

    ``model``: a VideoViT (loaded as the test tool loads it, e.g. ``engine.multiview.load_for_test``), on any
    device; it runs in eval mode under no_grad (its training flag is restored after). The clips are the test
    protocol's ``temporal_views`` x ``spatial_views`` (default 1 x 1: the centre clip and crop) through
    ``eval_dataset(cfg, ...)``, so ``cfg.data`` (sampling, num_frames, stride, size, short_side) must be the one the
    model was tested with. ``masks_file``: default the split's annotation file's ``*_masks.npz``.
    ``object_first``: the top-k steps keep the object's tokens first (the masks as ``forward_features``'
    ``prefer``: a selection told the ground truth, bench/hard_oracle.py). The result's ``top1`` is the model's
    accuracy on these views."""
    records, _ = read_split(cfg, split)
    if max_videos is not None:
        records = records[:max_videos]
    masks_file = masks_file or masks_beside(split_file(cfg, split))
    masks = masks_for(masks_file, [r.video_id for r in records])
    dataset = eval_dataset(cfg, records, temporal_views=temporal_views, spatial_views=spatial_views)
    pe = model.patch_embed
    grid, patch, tubelet = tuple(pe.grid_size), pe.patch_size, pe.tubelet_size
    size = int(cfg.data.size)
    if (cfg.data.num_frames // tubelet, size // patch, size // patch) != grid:
        raise ForegroundError(f"the model's token grid {grid} is not that of data.num_frames={cfg.data.num_frames}, "
                              f"data.size={size} with tubelet {tubelet} and patch {patch}")
    device = next(model.parameters()).device
    meter, names = ForegroundMeter(), model.stage_names()
    clips: list[torch.Tensor] = []
    targets: list[np.ndarray] = []
    logits: list[torch.Tensor] = []  # per scored clip
    owners: list[int] = []  # per scored clip: its video's place in `labels`
    labels: list[int] = []  # per scored video
    failed, videos, scored = [], 0, 0

    def flush() -> None:
        prefer = torch.as_tensor(np.stack(targets)) if object_first else None
        with torch.no_grad():
            features, kept = model.forward_features(torch.stack(clips).to(device), return_token_ids=True,
                                                    prefer=prefer)
            logits.append(model.forward_head(features).float().cpu())
        if kept:
            meter.update(kept, np.stack(targets))
        clips.clear()
        targets.clear()

    was_training = model.training
    model.eval()
    try:
        for index in range(len(dataset)):
            item = dataset[index]
            if item["views"] is None:
                failed.append(item["path"])
                continue
            fg = view_token_masks(masks[item["video_id"]], dataset.clip, patch=patch, tubelet=tubelet, size=size,
                                  short_side=cfg.data.short_side, min_fraction=min_fraction)
            fg = fg[np.asarray(item["view_ok"], dtype=bool)]  # item["views"] holds the decoded views only
            labels.append(int(item["label"]))
            videos += 1
            for clip, target in zip(item["views"], fg, strict=True):
                clips.append(clip)
                targets.append(target)
                owners.append(videos - 1)
                scored += 1
                if len(clips) == batch_size:
                    flush()
        if clips:
            flush()
    finally:
        model.train(was_training)
    return ForegroundResult(stages=meter.result(names), videos=videos, clips=scored, failed=tuple(failed),
                            min_fraction=min_fraction, masks_file=masks_file, top1=_top1(logits, owners, labels))


def _top1(logits: Sequence[torch.Tensor], owners: Sequence[int], labels: Sequence[int]) -> float:
    if not labels:
        return math.nan
    per_clip = torch.cat(list(logits))
    owner = torch.tensor(owners)
    right = [int(ensemble_views(per_clip[owner == v]).argmax()) == label for v, label in enumerate(labels)]
    return sum(right) / len(right)


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan
