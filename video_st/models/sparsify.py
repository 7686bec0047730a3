"""Token reduction over the spatio-temporal token set: Sparse-Tuning's Token Sparsification (top-k + fuse, also the
EViT baseline), ToMe's bipartite merging, packing of per-sample kept sets, and keep-rate schedules.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from .layers import AttnInfo
from .slots import Reducer

FUSE_MODES = ("mean", "sum")
# Whose attention row scores the tokens: the [CLS] query's (the paper) or the mean query's (no [CLS] needed: what
# the whole clip attends to, not what the pretrained classifier token looks at); "random": the tokens kept are a
# uniform draw (torch's global generator), fused with the [CLS] row's weights: the control of an ablation, the
# selection any scoring has to beat.
SCORE_QUERIES = ("cls", "mean", "random")
# The id of a token with no place in the original grid, in the kept-token index maps: a fused token, padding of a
# shorter sample, or (DyT) a token the dispatcher sent past the MLP.
NO_GRID_ID = -1


@dataclass(frozen=True)
class TokenState:
    """Everything that travels with the token set through the blocks, beside the residual stream itself.

    Blocks never mutate it; a reduction returns a new one, so gradient checkpointing can recompute a block.
    """

    ids: torch.Tensor  # (B, n) original-grid id of every non-prefix token; -1: fused token or padding
    history: tuple = ()  # Dense Adapter states of earlier layers (see adapters.DenseAdapter), oldest first
    sizes: torch.Tensor | None = None  # (B, n) original tokens merged into each (ToMe)
    key_bias: torch.Tensor | None = None  # (B, n) attention-logit bias per key: log-masks, -inf for padding
    aux: tuple = ()  # records of the method's loss terms (dispatch.ActivationRate, pruning.StageTokens)
    kept: tuple = ()  # ids after each reduction / dispatch stage, for visualisation and token counting
    full_tokens: bool = False  # DyT's full-token pass (self-distillation teacher): dispatchers let all through
    # (B, N) bool over the original grid: tokens a top-k step keeps before any other (the ground-truth object:
    # the selection oracle, data.object_first); None: by score alone
    prefer: torch.Tensor | None = None
    # (B, N) bool over the original grid: the object's tokens the attention guide draws the scoring rows to in
    # training (models/guide.py, optim.attention_guide); None: no guide
    guide: torch.Tensor | None = None

    def attention_bias(self, num_prefix: int) -> torch.Tensor | None:
        """(B, P + n) bias for the attention's keys (zero for the prefix), or None when there is none."""
        bias = self.key_bias
        if self.sizes is not None:  # ToMe's proportional attention: a token standing for s tokens counts s times
            log_sizes = self.sizes.log()
            bias = log_sizes if bias is None else bias + log_sizes
        return None if bias is None else F.pad(bias, (num_prefix, 0))

    def record(self, item: object) -> "TokenState":
        return replace(self, aux=(*self.aux, item))

    def with_history(self, history: tuple) -> "TokenState":
        return replace(self, history=history)

    def stage(self, ids: torch.Tensor) -> "TokenState":
        return replace(self, kept=(*self.kept, ids))

    def realigned(self, ids: torch.Tensor, apply: Callable[[torch.Tensor], torch.Tensor], **changes: Any) -> "TokenState":
        """The state after a step that changed the token set: every tensor aligned with the tokens (the Dense
        Adapters' earlier states, (B, P + n, r + 1)) goes through ``apply``, the step's own map of (B, P + n, D)
        tokens; ``ids`` are the new tokens' grid ids, recorded as a stage; ``changes`` are the step's own fields
        (ToMe's sizes, a key bias). The one place a token step realigns the state."""
        history = tuple((apply(h_aug), up_aug) for h_aug, up_aug in self.history)
        return replace(self, ids=ids, history=history, **changes).stage(ids)


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
        return torch.cat([kept, kept.new_full((kept.shape[0], 1), NO_GRID_ID)], dim=1)

    def apply_state(self, state: TokenState) -> TokenState:
        return state.realigned(self.apply_ids(state.ids), self.apply)


def _gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    # Advanced indexing rather than torch.gather: gather's backward keeps its index expanded to (B, k, D) int64,
    # twice the bytes of the float32 tokens it selects; indexing keeps only the (B, k) indices.
    return x[torch.arange(x.shape[0], device=x.device)[:, None], idx]


def plan_reduction(scores: torch.Tensor, *, keep_rate: float, num_prefix: int, fuse: str = "mean",
                   rank: torch.Tensor | None = None) -> Reduction:
    """Plan one step from (B, n) importance scores of the non-prefix tokens (e.g. [CLS] attention): the top ones
    kept, the others fused with their scores as weights. ``rank``: (B, n), another order to keep tokens in,
    highest first (the fusion weights stay the scores); default the scores themselves."""
    if fuse not in FUSE_MODES:
        raise ValueError(f"fuse must be one of {FUSE_MODES}, got {fuse!r}")
    k = keep_count(int(scores.shape[1]), keep_rate)  # int(): under jit tracing shapes are tensors
    order = torch.argsort(scores if rank is None else rank, dim=1, descending=True, stable=True)
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


class TopKFuse(Reducer):
    """Sparse-Tuning's Token Sparsification step (and EViT's): keep the top tokens by [CLS] attention, fuse the
    rest into one token. Parameter-free; ``keep_rate`` is set by the model (and by keep-rate schedules)."""

    reduces = True
    stage_label = ""

    def __init__(self, *, keep_rate: float = 0.7, fuse: str = "mean", num_prefix: int = 1, class_token: bool = True,
                 score: str = "cls") -> None:
        super().__init__()
        if fuse not in FUSE_MODES:
            raise ValueError(f"fuse must be one of {FUSE_MODES}, got {fuse!r}")
        if score not in SCORE_QUERIES:
            raise ValueError(f"score must be one of {SCORE_QUERIES}, got {score!r}")
        self.keep_rate, self.fuse, self.num_prefix, self.score = keep_rate, fuse, num_prefix, score
        # a backbone without [CLS] has only the mean query; a random choice still fuses by attention weights
        self.rows = "mean" if not class_token else ("cls" if score == "random" else score)

    def tokens_after(self, n: int) -> int:
        k = keep_count(n, self.keep_rate)
        return k + 1 if k < n else n  # the kept tokens and the fused one, if any token was dropped

    def token_scores(self, info: AttnInfo) -> torch.Tensor:
        """(B, n) importance of the non-prefix tokens: their attention from the scoring row, mean over heads."""
        return info.rows.mean(dim=1)[:, self.num_prefix :]

    def forward(self, x: torch.Tensor, state: TokenState, info: AttnInfo) -> tuple[torch.Tensor, TokenState]:
        scores = self.token_scores(info)
        rank = torch.rand(scores.shape, device=scores.device) if self.score == "random" else None
        if state.prefer is not None:
            ids = state.ids
            preferred = state.prefer.gather(1, ids.clamp_min(0)) & (ids >= 0)  # a fused token is never preferred
            # attention weights and torch.rand lie in [0, 1]: + 2 ranks every preferred token above the rest
            rank = (scores if rank is None else rank) + 2.0 * preferred
        plan = plan_reduction(scores, rank=rank, keep_rate=self.keep_rate, num_prefix=self.num_prefix, fuse=self.fuse)
        return plan.apply(x), plan.apply_state(state)

    def extra_repr(self) -> str:
        return f"keep_rate={self.keep_rate}, fuse={self.fuse}, score={self.score}, rows={self.rows}"


@dataclass(frozen=True)
class Merge:
    """One ToMe step: every ``src`` token is merged into its ``dst`` token by a size-weighted average; the
    remaining tokens keep their original order. A linear map whose weights sum to one per output token, so it
    applies exactly to the Dense Adapters' bottleneck states too."""

    num_prefix: int
    keep_idx: torch.Tensor  # (B, n - r) tokens that remain, ascending
    src_idx: torch.Tensor  # (B, r) tokens merged away
    dst_idx: torch.Tensor  # (B, r) the token each src joins
    sizes: torch.Tensor  # (B, n) sizes before the merge

    def _merge(self, body: torch.Tensor) -> torch.Tensor:
        src = _gather_tokens(body, self.src_idx)
        index = self.dst_idx[..., None].expand(-1, -1, body.shape[-1])
        merged = body.scatter_add(1, index, src)
        return _gather_tokens(merged, self.keep_idx)

    @property
    def new_sizes(self) -> torch.Tensor:
        grown = self.sizes.scatter_add(1, self.dst_idx, torch.gather(self.sizes, 1, self.src_idx))
        return torch.gather(grown, 1, self.keep_idx)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        prefix, body = x[:, : self.num_prefix], x[:, self.num_prefix :]
        weights = self.sizes.to(body.dtype)[..., None]
        out = self._merge(body * weights) / self.new_sizes.to(body.dtype)[..., None]
        return torch.cat([prefix, out], dim=1)

    def apply_state(self, state: TokenState) -> TokenState:
        return state.realigned(torch.gather(state.ids, 1, self.keep_idx), self.apply, sizes=self.new_sizes)


def merge_count(n: int, keep_rate: float) -> int:
    """Tokens one ToMe step merges away: ``n - ceil(keep_rate * n)``, at most half (one bipartite step)."""
    return min(n - keep_count(n, keep_rate), (n + 1) // 2)


def plan_merge(metric: torch.Tensor, sizes: torch.Tensor, *, keep_rate: float, num_prefix: int) -> Merge:
    """Bipartite soft matching (Bolya et al., ToMe): split the non-prefix tokens alternately into sets A and B,
    join each A token to its most similar B token (cosine of the keys), and merge the ``r`` best-matched A tokens.

    ``r = n - ceil(keep_rate * n)``, capped at ``|A|`` (a bipartite step can remove at most half the tokens), so
    a ToMe stage keeps as many tokens as a top-k stage of the same rate keeps plus its fused token, or one less.
    """
    n = int(metric.shape[1])
    r = merge_count(n, keep_rate)
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    a, b = metric[:, ::2], metric[:, 1::2]
    if r == 0 or b.shape[1] == 0:
        idx = torch.arange(n, device=metric.device).expand(metric.shape[0], -1)
        empty = idx[:, :0]
        return Merge(num_prefix=num_prefix, keep_idx=idx, src_idx=empty, dst_idx=empty, sizes=sizes)
    best, match = (a @ b.transpose(-1, -2)).max(dim=-1)  # (B, |A|)
    src_a = best.argsort(dim=-1, descending=True, stable=True)[:, :r]
    src_idx = 2 * src_a
    dst_idx = 2 * torch.gather(match, 1, src_a) + 1
    keep = torch.ones_like(sizes).scatter(1, src_idx, 0.0)  # float: jit tracing (fvcore) rejects a bool scatter
    keep_idx = keep.argsort(dim=1, descending=True, stable=True)[:, : n - r].sort(dim=1).values
    return Merge(num_prefix=num_prefix, keep_idx=keep_idx, src_idx=src_idx, dst_idx=dst_idx, sizes=sizes)


class ToMeMerge(Reducer):
    """ToMe as a reducer in the same slot as :class:`TopKFuse`: merge tokens by key similarity, track how many
    tokens each one stands for, and weight attention by it (proportional attention)."""

    reduces = True
    stage_label = ""
    keys = True

    def __init__(self, *, keep_rate: float = 0.7, num_prefix: int = 1) -> None:
        super().__init__()
        self.keep_rate, self.num_prefix = keep_rate, num_prefix

    def tokens_after(self, n: int) -> int:
        return n - merge_count(n, self.keep_rate)

    def forward(self, x: torch.Tensor, state: TokenState, info: AttnInfo) -> tuple[torch.Tensor, TokenState]:
        sizes = state.sizes if state.sizes is not None else x.new_ones(state.ids.shape, dtype=torch.float32)
        plan = plan_merge(info.keys[:, self.num_prefix :], sizes, keep_rate=self.keep_rate, num_prefix=self.num_prefix)
        return plan.apply(x), plan.apply_state(state)

    def extra_repr(self) -> str:
        return f"keep_rate={self.keep_rate}"


def pack_kept(x: torch.Tensor, state: TokenState, keep: torch.Tensor, num_prefix: int) -> tuple[torch.Tensor, TokenState]:
    """Drop the tokens with ``keep`` False, each sample keeping its own number of tokens.

    The batch stays one tensor: kept tokens move to the front in their original order and the batch is cut to the
    longest kept set; the shorter samples' tail is padding, masked out of every later attention by a -inf key
    bias (and given id -1). With batch 1, or equal counts, nothing is padded and only kept tokens are computed.
    """
    counts = keep.sum(dim=1)
    width = max(1, int(counts.max()))
    order = (~keep).int().argsort(dim=1, stable=True)[:, :width]  # kept first, original order
    valid = torch.arange(width, device=x.device)[None, :] < counts[:, None]
    ids = torch.where(valid, torch.gather(state.ids, 1, order), NO_GRID_ID)
    bias = torch.zeros(valid.shape, dtype=torch.float32, device=x.device).masked_fill(~valid, float("-inf"))

    def pack(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t[:, :num_prefix], _gather_tokens(t[:, num_prefix:], order)], dim=1)

    return pack(x), state.realigned(ids, pack, key_bias=bias if not bool(valid.all()) else None)
