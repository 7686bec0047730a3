"""Adaptive Sparse ViT's threshold pruner (learned, input-dependent: each sample keeps the tokens scoring above a
learnable threshold), in the reducer slot.

Three execution paths that must agree:
- training ("soft"): every token is computed and a sigmoid log-mask on the attention keys carries the decision,
  so the thresholds learn;
- ``set_mode("mask")``: the hard decision of inference applied as a mask over all tokens;
- inference (default in eval): each sample's kept tokens are packed (:func:`video_st.models.sparsify.pack_kept`)
  and the dropped ones are not computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .layers import AttnInfo
from .slots import MODES, Reducer
from .sparsify import NO_GRID_ID, TokenState, pack_kept


@dataclass(frozen=True)
class KeptFraction:
    """AS-ViT: the fraction of the grid's tokens one stage keeps per sample; its loss is
    ``weight * mean over stages of (kept - keep_rate^stage)^2``."""

    name = "budget"

    value: torch.Tensor  # (B,)
    target: float
    weight: float

    @staticmethod
    def loss(records: list[KeptFraction]) -> torch.Tensor:
        return records[0].weight * torch.stack([(r.value.float().mean() - r.target) ** 2 for r in records]).mean()

    @staticmethod
    def stats(records: list[KeptFraction]) -> dict[str, torch.Tensor]:
        return {"kept_ratio": records[-1].value.detach().float().mean()}



class ThresholdPruner(Reducer):
    """AS-ViT's pruning stage in the reducer slot: head-importance-weighted class attention against a learnable
    threshold; each sample keeps the tokens scoring above it.

    Score of token j: ``s_j = N0 * sum_h w_h a_hj`` with ``a_h`` head h's [CLS] attention row and ``w_h`` the
    head's importance, its row's L2 norm normalised over heads (a head whose class attention is concentrated
    on few tokens says more about which tokens matter than a uniform one). ``N0`` (the grid's token count)
    makes the uniform row score 1 whatever tokens earlier stages removed, so a threshold means the same in the
    training path (dropped tokens masked) and the inference path (dropped tokens gone).

    The threshold is learnt in log space (``log_threshold``; keep ``log s_j > log_threshold``) and the soft mask
    of training is ``sigmoid((log s_j - log_threshold) / temperature)``: attention scores spread over orders of
    magnitude, so a temperature on the linear score would be too sharp for the peaked tokens and too soft for the
    many near-zero ones (whose soft mask would sit near 0.5 while the hard rule keeps them; seen in training).

    ``keep_rate`` is the budget: the fraction of the previous stage's tokens this stage should keep on average;
    the budget loss target is ``keep_rate ** stage`` of the original tokens.
    """

    input_dependent = True
    reduces = True
    stage_label = ""
    rows = "cls"

    def __init__(self, *, keep_rate: float = 0.7, num_prefix: int = 1, num_tokens: int, stage: int = 1,
                 temperature: float = 0.1, threshold: float = 0.5, weight: float = 2.0) -> None:
        super().__init__()
        # 1-D: DeepSpeed cannot broadcast a 0-D parameter.
        self.log_threshold = nn.Parameter(torch.full((1,), math.log(threshold)))
        self.keep_rate, self.num_prefix, self.num_tokens, self.stage = keep_rate, num_prefix, num_tokens, stage
        self.temperature, self.weight = temperature, weight
        self.mode: str | None = None

    def set_mode(self, mode: str | None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode

    def scores(self, rows: torch.Tensor) -> torch.Tensor:
        """(B, H, P + n) class attention per head -> (B, n) log token scores."""
        body = rows[..., self.num_prefix :].float()
        weight = body.norm(dim=-1)
        weight = weight / weight.sum(dim=1, keepdim=True).clamp_min(1e-12)
        scores = self.num_tokens * torch.einsum("bh,bhn->bn", weight, body)
        return scores.clamp_min(1e-12).log()

    def forward(self, x: torch.Tensor, state: TokenState, info: AttnInfo) -> tuple[torch.Tensor, TokenState]:
        scores = self.scores(info.rows)
        prior = state.key_bias if state.key_bias is not None else scores.new_zeros(scores.shape)
        target = self.keep_rate**self.stage
        if self.training and self.mode is None:
            log_mask = prior + F.logsigmoid((scores - self.log_threshold) / self.temperature)
            state = replace(state, key_bias=log_mask).record(KeptFraction(log_mask.exp().mean(dim=1), target, self.weight))
            return x, state.stage(state.ids)
        keep = (scores > self.log_threshold) & (prior > float("-inf"))
        if self.mode == "mask":
            bias = prior.masked_fill(~keep, float("-inf"))
            state = replace(state, key_bias=bias).record(KeptFraction(keep.float().mean(dim=1), target, self.weight))
            return x, state.stage(torch.where(keep, state.ids, NO_GRID_ID))
        kept_ratio = keep.float().sum(dim=1) / self.num_tokens
        x, state = pack_kept(x, state, keep, self.num_prefix)
        return x, state.record(KeptFraction(kept_ratio, target, self.weight))

    def extra_repr(self) -> str:
        return f"keep_rate={self.keep_rate}, stage={self.stage}, temperature={self.temperature}"
