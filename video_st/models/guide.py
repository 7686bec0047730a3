"""The attention guide: a training loss that draws a layer's scoring row (the [CLS] query's attention) onto the
ground-truth object's tokens (optim.attention_guide; the masks of data/masks.py).

Why it exists: Sparse-Tuning keeps the tokens its [CLS] attention ranks highest, on the premise that a
pre-trained ViT's [CLS] already looks at the salient objects. A real ViT-B learned that from ImageNet-scale data;
the generated suite's stand-in backbone, trained for minutes on sprites, does not (docs/benchmarks.md, the hard
suite). Pre-training the stand-in with this guide gives it that property explicitly, so the suite can measure the
methods on a backbone that meets the premise; the target task's own training and testing never see a mask.

The loss of one guided layer, per clip with at least one foreground token among its current tokens: the cross
entropy from the uniform distribution over those foreground tokens to the row (mean over heads) renormalised over
the non-prefix tokens, ``-mean_{i in fg} log q_i``; its minimum puts equal mass on every foreground token and none
elsewhere, so it ranks every object token above the background (what a top-k needs), not only the easiest one.
The loss is the weighted mean over the (layer, clip) pairs with foreground; ``stats`` reports the mass the rows
put on the foreground.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .pruning import ALIVE
from .sparsify import TokenState

_TINY = 1e-9  # floor inside the log: a row's softmax can underflow to 0 on a far-off token


@dataclass(frozen=True)
class GuideRecord:
    """One guided layer's part of the loss (the records of :mod:`video_st.models.terms`). It holds sums over its
    clips with foreground and their count, so the loss is the mean over every (layer, clip) pair that has
    foreground: a layer where no clip has any (the object out of every crop, or fused away) adds nothing, rather
    than a 0 that would dilute the others."""

    name = "attention_guide"  # loss_attention_guide in the training log

    loss_sum: torch.Tensor  # () the cross entropy summed over the clips that have foreground
    share_sum: torch.Tensor  # () the renormalised row's mass on the foreground, summed over them, detached
    clips: torch.Tensor  # () how many clips have foreground at this layer
    weight: float

    @staticmethod
    def _mean(records: list[GuideRecord], field: str) -> torch.Tensor:
        total = torch.stack([getattr(r, field) for r in records]).sum()
        return total / torch.stack([r.clips for r in records]).sum().clamp_min(1)

    @staticmethod
    def loss(records: list[GuideRecord]) -> torch.Tensor:
        return records[0].weight * GuideRecord._mean(records, "loss_sum")

    @staticmethod
    def stats(records: list[GuideRecord]) -> dict[str, torch.Tensor]:
        return {"guide_foreground_share": GuideRecord._mean(records, "share_sum")}


def foreground_now(state: TokenState) -> torch.Tensor:
    """(B, n) bool: which of the current non-prefix tokens are foreground (``state.guide`` gathered by the
    tokens' grid ids). A fused token or padding (id -1) never is, nor a token AS-ViT's training mask has dropped:
    it keeps its grid id but its key bias leaves it no attention, so a target there would be out of reach. A ToMe
    token stands for its destination token's id, so it is foreground when that token is."""
    ids = state.ids
    fg = state.guide.gather(1, ids.clamp_min(0)) & (ids >= 0)
    if state.key_bias is not None:
        fg = fg & (state.key_bias > ALIVE)
    return fg


def guide_record(rows: torch.Tensor, state: TokenState, *, num_prefix: int, weight: float) -> GuideRecord:
    """The record of one guided layer from its attention ``rows`` (B, heads, P + n), per the module docstring."""
    body = rows.float().mean(dim=1)[:, num_prefix:]
    q = body / body.sum(dim=-1, keepdim=True).clamp_min(_TINY)
    fg = foreground_now(state).to(q.dtype)
    count = fg.sum(dim=-1)
    # a clip whose object is out of the crop (or already fused away) has nothing to be drawn to: left out
    has = (count > 0).to(q.dtype)
    per_clip = -(fg * q.clamp_min(_TINY).log()).sum(dim=-1) / count.clamp_min(1)
    return GuideRecord(loss_sum=(per_clip * has).sum(), share_sum=((fg * q).sum(dim=-1) * has).sum().detach(),
                       clips=has.sum(), weight=weight)
