"""Input-dependent token selection that is learned: Dynamic Tuning's token dispatcher and Adaptive Sparse ViT's
threshold pruner.

Both have three execution paths that must agree:
- training ("soft"): every token is computed and the decision enters as a differentiable mask (DyT: a
  straight-through Gumbel-sigmoid mask on the MLP output; AS-ViT: a sigmoid log-mask on the attention keys), so
  the gates and thresholds learn;
- ``mode="mask"``: the hard decision of inference applied as a mask over all tokens (the reference the tests and
  the FLOP comparison use);
- inference (default in eval): the skipped tokens are not computed at all (DyT gathers the active tokens of the
  whole batch, runs the MLP on them and scatters back; AS-ViT packs each sample's kept tokens, see
  :func:`video_st.models.sparsify.pack_kept`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .layers import AttnInfo
from .slots import Dispatcher, Reducer
from .sparsify import FUSED_TOKEN_ID, TokenState, pack_kept

MODES = (None, "mask")


@dataclass(frozen=True)
class ActivationRate:
    """DyT: the mean MLP mask per sample of one layer; its loss is ``weight * (mean over layers - target)^2``."""

    value: torch.Tensor  # (B,)
    target: float
    weight: float

    @staticmethod
    def loss(records: list[ActivationRate]) -> torch.Tensor:
        rate = torch.stack([r.value.float().mean() for r in records]).mean()
        return records[0].weight * (rate - records[0].target) ** 2

    @staticmethod
    def stats(records: list[ActivationRate]) -> dict[str, torch.Tensor]:
        return {"activation_rate": torch.stack([r.value.detach().float().mean() for r in records]).mean()}


@dataclass(frozen=True)
class KeptFraction:
    """AS-ViT: the fraction of the grid's tokens one stage keeps per sample; its loss is
    ``weight * mean over stages of (kept - keep_rate^stage)^2``."""

    value: torch.Tensor  # (B,)
    target: float
    weight: float

    @staticmethod
    def loss(records: list[KeptFraction]) -> torch.Tensor:
        return records[0].weight * torch.stack([(r.value.float().mean() - r.target) ** 2 for r in records]).mean()

    @staticmethod
    def stats(records: list[KeptFraction]) -> dict[str, torch.Tensor]:
        return {"kept_ratio": records[-1].value.detach().float().mean()}


LOSS_NAMES = {ActivationRate: "activation", KeptFraction: "budget"}


class TokenDispatcher(Dispatcher):
    """DyT's per-layer token dispatcher with MLP dispatch: tokens it switches off skip the block's MLP.

    A linear gate scores every non-prefix token; training samples a Gumbel-sigmoid at temperature ``temperature``
    with a straight-through hard mask (threshold 0.5); inference keeps the tokens with a positive gate logit (the
    noise-free mask). The prefix ([CLS], prompts) always runs. Each pass records the mean mask per sample for the
    activation-rate loss; the full-token pass of self-distillation (``state.full_tokens``) runs every token.
    """

    input_dependent = True
    stage_label = " MLP"

    def __init__(self, *, dim: int, num_prefix: int = 1, temperature: float = 5.0, target: float = 0.5,
                 weight: float = 2.0) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, 1)
        self.num_prefix, self.temperature, self.target, self.weight = num_prefix, temperature, target, weight
        self.mode: str | None = None
        self.reset_parameters()

    def set_mode(self, mode: str | None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode

    def reset_parameters(self) -> None:
        # Small random gate: about half the tokens start active (the default target); `calibrate` sets any other
        # target from data. (A zero gate would tie every token at logit 0 and switch all of them off in eval.)
        nn.init.trunc_normal_(self.gate.weight, std=0.02)
        nn.init.zeros_(self.gate.bias)

    def forward(self, x: torch.Tensor, h: torch.Tensor, mlp: nn.Module, state: TokenState) -> tuple[torch.Tensor, TokenState]:
        """``x``: the residual stream (B, P + n, D) the gate reads; ``h``: the MLP's (normalised) input."""
        if state.full_tokens:
            return mlp(h), state
        p = self.num_prefix
        logits = self.gate(x[:, p:]).squeeze(-1).float()  # (B, n)
        if self.training and self.mode is None:
            u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
            soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / self.temperature)
            mask = (soft > 0.5).to(soft.dtype) + soft - soft.detach()  # straight-through
            full = F.pad(mask, (p, 0), value=1.0).to(h.dtype)
            out = mlp(h) * full[..., None]
            state = state.record(ActivationRate(mask.mean(dim=1), self.target, self.weight))
            keep = mask.detach() > 0.5
        else:
            keep = logits > 0
            full = F.pad(keep, (p, 0), value=True)
            if self.mode == "mask":
                out = mlp(h) * full[..., None].to(h.dtype)
            else:  # gather the active tokens of the whole batch, run the MLP on them only, scatter back
                out = h.new_zeros(h.shape)
                out[full] = mlp(h[full]).to(out.dtype)
            state = state.record(ActivationRate(keep.float().mean(dim=1), self.target, self.weight))
        return out, state.stage(torch.where(keep, state.ids, FUSED_TOKEN_ID))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, target={self.target}"


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
            return x, state.stage(torch.where(keep, state.ids, FUSED_TOKEN_ID))
        kept_ratio = keep.float().sum(dim=1) / self.num_tokens
        x, state = pack_kept(x, state, keep, self.num_prefix)
        return x, state.record(KeptFraction(kept_ratio, target, self.weight))

    def extra_repr(self) -> str:
        return f"keep_rate={self.keep_rate}, stage={self.stage}, temperature={self.temperature}"


@torch.no_grad()
def calibrate(model: nn.Module, clips: torch.Tensor) -> dict[str, list[float]]:
    """Start every dispatcher and threshold at its target rate on ``clips``, layer by layer (later layers see
    the calibrated earlier ones): DyT's gate bias is shifted so that the target fraction of gate logits is
    positive; AS-ViT's threshold is set to the (log) score quantile that keeps ``keep_rate`` of the stage's tokens.

    A data-dependent initialisation (like ActNorm's): with the thresholds' small learning rate, a cold start
    far from the budget would spend much of a short fine-tuning run just reaching it. Returns what was set.
    """
    was_training = model.training
    model.eval()
    found: dict[str, list[float]] = {"dispatcher_bias": [], "threshold": []}
    captured: dict[str, torch.Tensor] = {}  # what the hooks below saw in the latest pass
    try:
        for block in model.blocks:
            captured.clear()
            if isinstance(block.dispatcher, TokenDispatcher):
                hook = block.dispatcher.gate.register_forward_hook(lambda m, i, o: captured.setdefault("g", o))
                model(clips)
                hook.remove()
                logits = captured["g"].float().flatten()
                shift = torch.quantile(logits, 1.0 - block.dispatcher.target)
                block.dispatcher.gate.bias -= shift.to(block.dispatcher.gate.bias.dtype)
                found["dispatcher_bias"].append(float(block.dispatcher.gate.bias))
            if isinstance(block.reducer, ThresholdPruner):
                pruner = block.reducer

                def spy(module: ThresholdPruner, args: tuple, _out: object) -> None:
                    _x, state, info = args
                    scores = module.scores(info.rows)
                    valid = torch.ones_like(scores, dtype=torch.bool) if state.key_bias is None else state.key_bias > float("-inf")
                    captured["s"] = scores[valid]

                hook = pruner.register_forward_hook(spy)
                model(clips)
                hook.remove()
                value = float(torch.quantile(captured["s"], 1.0 - pruner.keep_rate))
                pruner.log_threshold.fill_(value if math.isfinite(value) else 0.0)
                found["threshold"].append(math.exp(float(pruner.log_threshold)))
    finally:
        model.train(was_training)
    return found
