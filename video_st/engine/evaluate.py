"""Views -> per-video scores, gathered over ranks exactly once per video.

Each rank runs the videos its ``ShardSampler`` gives it (no padding), ensembles the views of each video, and
the ranks' (index, scores) tensors are all-gathered and merged by video index. A video appearing twice after the
merge is an error, not a silent double count. Used by the per-epoch validation and by tools/test_net.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import distributed

ENSEMBLES = ("prob", "logit", "max")


def ensemble_views(logits: torch.Tensor, how: str = "prob") -> torch.Tensor:
    """(V, K) logits of the views of one video -> (K,) video scores: mean softmax (``prob``, the default),
    mean logits (``logit``), or the per-class max of the softmax (``max``)."""
    if how == "prob":
        return logits.float().softmax(-1).mean(0)
    if how == "logit":
        return logits.float().mean(0)
    if how == "max":
        return logits.float().softmax(-1).amax(0)
    raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {how!r}")


@dataclass
class Predictions:
    index: torch.Tensor  # (N,) dataset index of each video
    scores: torch.Tensor  # (N, K) ensembled scores
    labels: torch.Tensor  # (N,)
    views: torch.Tensor  # (N,) views that went into each video's scores
    failed: list[dict[str, Any]] = field(default_factory=list)  # videos excluded: no view decoded
    partial: list[dict[str, Any]] = field(default_factory=list)  # videos scored from some of their views

    def sorted(self) -> Predictions:
        order = self.index.argsort()
        return Predictions(self.index[order], self.scores[order], self.labels[order], self.views[order],
                           sorted(self.failed, key=lambda f: f["index"]), sorted(self.partial, key=lambda f: f["index"]))


@torch.no_grad()
def predict(forward: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[dict[str, Any]], *,
            ensemble: str = "prob", max_views: int | None = None, on_batch: Callable[[int], None] | None = None,
            ) -> Predictions:
    """Run every view once (at most ``max_views`` clips per forward) and ensemble per video, on this rank."""
    index, scores, labels, views, failed, partial = [], [], [], [], [], []
    for batch in batches:
        failed += batch["failed"]
        partial += batch["partial"]
        if "views" in batch:
            clips = batch["views"]
            step = max_views or len(clips)
            logits = torch.cat([forward(clips[i: i + step]).float().cpu() for i in range(0, len(clips), step)])
            for per_video in logits.split(batch["view_counts"].tolist()):
                scores.append(ensemble_views(per_video, ensemble))
                views.append(len(per_video))
            index.append(batch["index"])
            labels.append(batch["label"])
        if on_batch is not None:
            on_batch(len(batch["failed"]) + (len(batch["index"]) if "index" in batch else 0))
    if not scores:
        return Predictions(torch.empty(0, dtype=torch.long), torch.empty(0, 0), torch.empty(0, dtype=torch.long),
                           torch.empty(0, dtype=torch.long), failed, partial)
    return Predictions(torch.cat(index), torch.stack(scores), torch.cat(labels), torch.tensor(views), failed, partial)


def _all_gather_rows(rows: torch.Tensor, width: int) -> torch.Tensor:
    """Concatenate every rank's (n_r, width) tensor (n_r may differ and be 0), in rank order."""
    world = dist.get_world_size()
    device = distributed.collective_device()
    count = torch.tensor([rows.shape[0]], device=device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros((longest, width), dtype=rows.dtype, device=device)
    padded[: rows.shape[0]] = rows.to(device).reshape(-1, width)
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(c.item())] for g, c in zip(gathered, counts, strict=True)]).cpu()


def gather(local: Predictions, num_classes: int) -> Predictions:
    """All ranks' predictions on every rank, merged by video index and sorted; refuses double counting."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        merged = local
    else:
        scores = local.scores if local.scores.numel() else torch.empty(0, num_classes)
        meta = torch.stack([local.index, local.labels, local.views], 1) if len(local.index) else torch.empty(0, 3, dtype=torch.long)
        all_meta = _all_gather_rows(meta.long(), 3)
        all_scores = _all_gather_rows(scores.float(), num_classes)
        lists: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(lists, (local.failed, local.partial))
        merged = Predictions(all_meta[:, 0], all_scores, all_meta[:, 1], all_meta[:, 2],
                             [f for failed, _ in lists for f in failed], [p for _, partial in lists for p in partial])
    seen = torch.bincount(merged.index) if len(merged.index) else torch.zeros(0)
    if (seen > 1).any():
        raise RuntimeError(f"videos counted more than once: {torch.nonzero(seen > 1).flatten().tolist()[:10]}")
    return merged.sorted()


def accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Share of videos whose label is among the top ``k`` scores (labels < 0, unlabelled, are not counted)."""
    keep = labels >= 0
    if not keep.any():
        return float("nan")
    topk = scores[keep].topk(min(k, scores.shape[1]), dim=1).indices
    return (topk == labels[keep, None]).any(1).float().mean().item()


def mean_loss(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Cross-entropy of single-view logits (the per-epoch validation)."""
    keep = labels >= 0
    return F.cross_entropy(scores[keep], labels[keep]).item() if keep.any() else float("nan")
