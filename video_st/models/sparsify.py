"""Token Sparsification (Sparse-Tuning, Sec. 3.2) as pure functions, plus keep-rate schedules.

A reduction step keeps the top ``k = ceil(rho * n)`` of the ``n`` non-prefix tokens by importance score and fuses
all the others into ONE token, their score-weighted average, appended after the kept ones. The plan of a step
(:class:`Reduction`) is computed once from the scores and applied to every tensor that shares the token layout
(the residual stream and the Dense Adapters' earlier outputs), so their token counts and fusions match.

Two choices differ from the authors' published image code; both are named options here:
- ``fuse="mean"`` (the paper's "attention-weighted average", default) divides by the summed weights;
  ``fuse="sum"`` is the published code's unnormalised weighted sum.
- kept tokens are returned in their original order (indices sorted ascending), so keep rate 1.0 is exactly the
  identity; the published code keeps them in score order. Attention is permutation-equivariant, so this changes
  no result, only makes the kept set easy to draw and to compare.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

FUSE_MODES = ("mean", "sum")
FUSED_TOKEN_ID = -1  # id of a fused token in the kept-token index maps (it has no place in the original grid)


def keep_count(num_tokens: int, keep_rate: float) -> int:
    """``ceil(keep_rate * num_tokens)``, robust to float noise (0.7 * 10 must give 7, not 8), at least 1."""
    if not 0.0 < keep_rate <= 1.0:
        raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate}")
    return max(1, min(num_tokens, math.ceil(round(keep_rate * num_tokens, 6))))


@dataclass(frozen=True)
class Reduction:
    """Which tokens one sparsification step keeps and how it fuses the rest; apply it to any aligned tensor."""

    num_prefix: int  # leading tokens ([CLS]) that always pass through untouched
    keep_idx: torch.Tensor  # (B, k) positions among the non-prefix tokens, ascending
    drop_idx: torch.Tensor  # (B, n - k) positions of the tokens fused into one
    drop_weight: torch.Tensor  # (B, n - k) fusion weights (sum to 1 in "mean" mode)

    @property
    def fuses(self) -> bool:
        return self.drop_idx.shape[1] > 0

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P + n, D) -> (B, P + k [+ 1], D): prefix, kept tokens, then the fused token if any was dropped."""
        prefix, body = x[:, : self.num_prefix], x[:, self.num_prefix :]
        parts = [prefix, _gather_tokens(body, self.keep_idx)]
        if self.fuses:
            dropped = _gather_tokens(body, self.drop_idx)
            parts.append(torch.einsum("bn,bnd->bd", self.drop_weight.to(dropped.dtype), dropped).unsqueeze(1))
        return torch.cat(parts, dim=1)

    def apply_ids(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Map (B, n) original-grid ids of the non-prefix tokens through this step; the fused token gets -1."""
        kept = torch.gather(token_ids, 1, self.keep_idx)
        if not self.fuses:
            return kept
        return torch.cat([kept, kept.new_full((kept.shape[0], 1), FUSED_TOKEN_ID)], dim=1)


def _gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    # Advanced indexing rather than torch.gather: gather's backward keeps its index expanded to (B, k, D) int64,
    # twice the bytes of the float32 tokens it selects; indexing keeps only the (B, k) indices.
    return x[torch.arange(x.shape[0], device=x.device)[:, None], idx]


def plan_reduction(scores: torch.Tensor, *, keep_rate: float, num_prefix: int, fuse: str = "mean") -> Reduction:
    """Plan one step from (B, n) importance scores of the non-prefix tokens (e.g. [CLS] attention)."""
    if fuse not in FUSE_MODES:
        raise ValueError(f"fuse must be one of {FUSE_MODES}, got {fuse!r}")
    k = keep_count(int(scores.shape[1]), keep_rate)  # int(): under jit tracing shapes are tensors
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    keep_idx = order[:, :k].sort(dim=1).values
    drop_idx = order[:, k:]
    weight = torch.gather(scores, 1, drop_idx)
    if fuse == "mean" and drop_idx.shape[1] > 0:
        weight = weight / weight.sum(dim=1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)
    return Reduction(num_prefix=num_prefix, keep_idx=keep_idx, drop_idx=drop_idx, drop_weight=weight)


def expand_keep_rates(keep_rate: float | Sequence[float], num_stages: int) -> tuple[float, ...]:
    """One keep rate per sparsification stage from a single float or a per-stage sequence."""
    rates = (float(keep_rate),) * num_stages if isinstance(keep_rate, (int, float)) else tuple(map(float, keep_rate))
    if len(rates) != num_stages:
        raise ValueError(f"got {len(rates)} keep rates for {num_stages} sparsification stages")
    for rate in rates:
        keep_count(1, rate)  # validates the range
    return rates


@dataclass(frozen=True)
class KeepRateWarmup:
    """Keep rate that starts at ``start`` (1.0: no token dropped) and moves linearly to ``target`` per stage over
    ``warmup_epochs`` (fractional epochs are fine: call it every step with ``epoch + step / steps_per_epoch``).

    Early in fine-tuning the [CLS] attention of a frozen backbone has not adapted to the new task yet; dropping
    tokens gradually keeps the first steps from discarding what the adapters would learn to use.
    """

    target: tuple[float, ...]
    warmup_epochs: float
    start: float = 1.0

    def __call__(self, epoch: float) -> tuple[float, ...]:
        if self.warmup_epochs <= 0 or epoch >= self.warmup_epochs:
            return self.target
        progress = max(0.0, epoch) / self.warmup_epochs
        return tuple(self.start + (t - self.start) * progress for t in self.target)
