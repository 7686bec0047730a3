"""Adaptive Sparse ViT's threshold pruner as published, in the reducer slot, and its FLOPs budget.

The formulas are those of the authors' code (Cydia2018/AS-ViT, ``vit.py`` and ``losses.py``; its
non-distillation path, the one that defines the method: the released code does not run as is):

- head importance per head AND per token (``Attention.forward``): ``w(h, j) = |o_hj| / (sum_h' |o_h'j| + 1e-8)``,
  ``o_hj`` head h's attention output at token j, before the heads are merged;
- token score: ``s_j = sum_h a(h, cls, j) * w(h, j)``, ``a(h, cls, .)`` head h's [CLS] attention row;
- keep token j where ``s_j > theta``, one learnable ``theta`` per stage, linear on the score, initial 0.001 /
  0.002 / 0.003 for the three stages (``AdaptiveSparsityModule``, ``threshold_init``);
- training: the hard 0/1 decision with a straight-through ``sigmoid((s - theta) / tau)``, ``tau = 1e-4``; it
  multiplies the attention weights of the dropped keys while every token still attends to itself
  (``softmax_with_policy``);
- budget (``DistillDiffPruningFLOPsLoss``): ``2 * |mean over the batch of FLOPs - keep_ratio * dense FLOPs|``,
  keep_ratio 0.7, the FLOPs from the block arithmetic (``Block.flops``, ``PatchEmbed.flops``, in GFLOPs) with the
  straight-through kept counts, so the count carries the decisions' gradient.

Placement: a reducer sits after the attention of its layer and scores with that attention. The published model
decides before block ``i`` (0-based ``pruning_loc`` 4, 7, 10) from block ``i - 1``'s attention: the same
attention (layers 4, 7, 10, 1-based) and the same kept set. The one difference is in video_st's favour: the
published block ``i - 1`` still runs its MLP on the tokens it is about to drop; here that MLP sees the kept
tokens only (the MLP is per token, so no kept token's value changes). The budget counts what this placement
computes.

Three execution paths that must agree:
- training: every token is computed; the straight-through mask enters the attention as a key bias
  ``log(m + MASK_FLOOR)`` (:meth:`ThresholdPruner.forward` says why that is the published multiplicative mask);
- ``set_mode("mask")``: the hard decision of inference as a -inf key mask over all tokens;
- inference (default in eval): each sample keeps its own tokens, packed (:func:`video_st.models.sparsify.pack_kept`),
  and the dropped ones are not computed. The published code does this at batch 1 only; at batch > 1 it gives
  every sample the batch-mean count of its own top tokens, which makes a clip's prediction depend on the other
  clips in its batch. That rule is not copied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from .layers import AttnInfo
from .slots import MODES, Reducer
from .sparsify import NO_GRID_ID, TokenState, pack_kept

# The training mask's floor in log space: a dropped key gets the bias log(MASK_FLOOR) instead of -inf, so the
# gradient with respect to its mask value exists (the published normalisation leaks eps / N = 1e-6 / N per key too).
MASK_FLOOR = 1e-6
ALIVE = math.log(0.5)  # a key bias above this: the token is still in the set (kept, or not yet decided on)


@dataclass(frozen=True)
class FlopsBudget:
    """The published FLOPs arithmetic of one backbone in GFLOPs (one multiply-add = one FLOP, as fvcore counts),
    for this project's placement of the pruning stages (after the attention of ``layers``).

    Per block of ``n`` tokens ([CLS] included), from ``Block.flops``: attention ``3 d^2 n`` (qkv) ``+ d n^2``
    (q k^T) ``+ d n^2`` (attention x v) ``+ d^2 n`` (proj), MLP ``2 d h n``; the tube embedding
    ``N d (C t p^2)`` (``PatchEmbed.flops``). Adapters, norms and the head are not counted (the published model
    has no adapters; they add about 1% per token to both sides of the budget).
    """

    dim: int
    hidden: int  # the MLP's hidden width
    depth: int
    layers: tuple[int, ...]  # 1-based layers whose reducer slot prunes
    tokens: int  # tokens of the dense model, prefix included
    prefix: int  # of which never pruned ([CLS])
    patch: float  # GFLOPs of the tube embedding

    def attention(self, n: torch.Tensor | float) -> torch.Tensor | float:
        return (4 * self.dim**2 * n + 2 * self.dim * n * n) / 1e9

    def mlp(self, n: torch.Tensor | float) -> torch.Tensor | float:
        return 2 * self.dim * self.hidden * n / 1e9

    def total(self, counts: Sequence[torch.Tensor | float]) -> torch.Tensor | float:
        """GFLOPs of a forward whose stages leave ``counts[s]`` tokens (prefix included; floats or (B,) tensors):
        a pruning layer's attention sees the tokens before its stage, its MLP and every later layer those after."""
        if len(counts) != len(self.layers):
            raise ValueError(f"got {len(counts)} token counts for {len(self.layers)} pruning stages")
        n, total, stage = self.tokens, self.patch, 0
        for layer in range(1, self.depth + 1):
            total = total + self.attention(n)
            if stage < len(self.layers) and self.layers[stage] == layer:
                n, stage = counts[stage], stage + 1
            total = total + self.mlp(n)
        return total

    @property
    def dense(self) -> float:
        """The dense model's GFLOPs, every token in every block ([CLS] included: the published teacher count,
        ``cal_flops``, leaves the [CLS] token out: 0.5% less on one 224 image, 0.14% on 8 frames)."""
        return float(self.total([self.tokens] * len(self.layers)))

    def stage_rate(self, keep_ratio: float) -> float:
        """The one per-stage keep rate r (each stage keeping r of the tokens before it) at which the model costs
        ``keep_ratio`` of the dense FLOPs; the calibration's target. Bisection: the cost rises with r."""
        if keep_ratio >= 1.0:
            return 1.0
        grid, prefix = self.tokens - self.prefix, self.prefix  # the rate applies to the non-prefix tokens

        def cost(r: float) -> float:
            return float(self.total([prefix + grid * r ** (s + 1) for s in range(len(self.layers))]))

        target, low, high = keep_ratio * self.dense, 0.0, 1.0
        if cost(low) >= target:
            return 0.0
        for _ in range(60):
            mid = (low + high) / 2
            low, high = (mid, high) if cost(mid) < target else (low, mid)
        return (low + high) / 2


@dataclass(frozen=True)
class StageTokens:
    """AS-ViT: the tokens one pruning stage leaves per sample ([CLS] included; in training the straight-through
    sum of the mask). The loss over a forward's stages is the published FLOPs budget,
    ``weight * |mean over the batch of FLOPs - keep_rate * dense FLOPs|``."""

    name = "budget"

    value: torch.Tensor  # (B,) tokens after the stage, prefix included
    kept: torch.Tensor  # (B,) fraction of the grid's tokens kept
    budget: FlopsBudget
    keep_rate: float
    weight: float

    @staticmethod
    def flops(records: list[StageTokens]) -> torch.Tensor:
        """(B,) GFLOPs per sample by the budget's arithmetic."""
        return records[0].budget.total([r.value.float() for r in records])

    @staticmethod
    def loss(records: list[StageTokens]) -> torch.Tensor:
        first = records[0]
        return first.weight * (StageTokens.flops(records).mean() - first.keep_rate * first.budget.dense).abs()

    @staticmethod
    def stats(records: list[StageTokens]) -> dict[str, torch.Tensor]:
        return {"kept_ratio": records[-1].kept.detach().float().mean(),
                "budget_flops_ratio": StageTokens.flops(records).detach().mean() / records[0].budget.dense}


class ThresholdPruner(Reducer):
    """AS-ViT's pruning stage in the reducer slot (the formulas: this module's docstring).

    ``threshold`` is the learnable theta (``keep_threshold`` in the published code), ``temperature`` the tau of
    the straight-through sigmoid, ``keep_rate`` the budget's keep ratio (the FLOPs fraction of the dense model the
    whole model should cost; every stage holds the same one), ``budget`` the block arithmetic of the backbone.
    """

    input_dependent = True
    reduces = True
    stage_label = ""
    rows = "cls"
    head_norms = True

    def __init__(self, *, budget: FlopsBudget, keep_rate: float = 0.7, num_prefix: int = 1, num_tokens: int,
                 stage: int = 1, threshold: float = 0.001, temperature: float = 1e-4, weight: float = 2.0) -> None:
        super().__init__()
        # 1-D: DeepSpeed cannot broadcast a 0-D parameter.
        self.threshold = nn.Parameter(torch.full((1,), float(threshold)))
        self.budget, self.keep_rate, self.num_prefix, self.num_tokens = budget, keep_rate, num_prefix, num_tokens
        self.stage, self.temperature, self.weight = stage, temperature, weight
        self.mode: str | None = None

    def set_mode(self, mode: str | None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode

    def scores(self, info: AttnInfo) -> torch.Tensor:
        """(B, n) token scores ``s_j = sum_h a(h, cls, j) w(h, j)`` of the non-prefix tokens."""
        rows = info.rows[..., self.num_prefix :].float()  # (B, H, n)
        norms = info.head_norms[..., self.num_prefix :].float()
        return (rows * norms / (norms.sum(dim=1, keepdim=True) + 1e-8)).sum(dim=1)

    @staticmethod
    def alive(state: TokenState, scores: torch.Tensor) -> torch.Tensor:
        """(B, n) which tokens are still in the set: not dropped by an earlier stage, not padding."""
        if state.key_bias is None:
            return torch.ones_like(scores, dtype=torch.bool)
        return state.key_bias > ALIVE

    def forward(self, x: torch.Tensor, state: TokenState, info: AttnInfo) -> tuple[torch.Tensor, TokenState]:
        scores = self.scores(info)
        alive = self.alive(state, scores)
        if self.training and self.mode is None:
            soft = torch.sigmoid((scores - self.threshold) / self.temperature)
            # Straight-through: the value is the hard decision, the gradient the sigmoid's. A token an earlier stage
            # dropped stays dropped (published: the later decision is over all tokens, but a dropped token's class
            # attention is ~0, so it is dropped again unless a threshold falls to ~0).
            mask = ((soft > 0.5).to(soft.dtype) - soft.detach() + soft) * alive
            # The published mask multiplies the attention weights: A_ij = e_ij P_ij / sum_k e_ik P_ik with P_ij = m_j
            # (j != i) and P_ii = 1. As a key bias log(m_j + f): A_ij = e_ij (m_j + f) / sum_k e_ik (m_k + f). Forward:
            # the [CLS] and every kept query get the published weights (up to f); a dropped query attends to the
            # kept tokens only, not to itself, and its output reaches nothing that is kept (it is masked as a key
            # everywhere). Gradient: d/dm_j of e_ij (m_j + f) is e_ij, as of e_ij m_j, for dropped keys (m_j = 0)
            # as for kept ones; the one difference is a kept query's own key, constant (P_ii = 1) in the published.
            state = replace(state, key_bias=torch.log(mask + MASK_FLOOR))
            keep = mask.detach() > 0.5
            return x, state.record(self._record(mask)).stage(torch.where(keep, state.ids, NO_GRID_ID))
        keep = (scores > self.threshold) & alive
        if self.mode == "mask":
            bias = torch.zeros_like(scores).masked_fill(~keep, float("-inf"))
            state = replace(state, key_bias=bias).record(self._record(keep.float()))
            return x, state.stage(torch.where(keep, state.ids, NO_GRID_ID))
        record = self._record(keep.float())
        x, state = pack_kept(x, state, keep, self.num_prefix)
        return x, state.record(record)

    def _record(self, mask: torch.Tensor) -> StageTokens:
        kept = mask.sum(dim=1)
        return StageTokens(value=kept + self.num_prefix, kept=kept.detach() / self.num_tokens, budget=self.budget,
                           keep_rate=self.keep_rate, weight=self.weight)

    def extra_repr(self) -> str:
        return f"keep_rate={self.keep_rate}, stage={self.stage}, temperature={self.temperature}"
