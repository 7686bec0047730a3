"""Dynamic Tuning's token dispatcher (learned, input-dependent: tokens it switches off skip the block's MLP).

Three execution paths that must agree:
- training ("soft"): every token is computed and a straight-through Gumbel-sigmoid mask multiplies the MLP
  output, so the gate learns;
- ``set_mode("mask")``: the hard decision of inference applied as a mask over all tokens (the reference the tests
  and the FLOP comparison use);
- inference (default in eval): the skipped tokens are not computed at all (the active tokens of the whole batch
  are gathered, normalised, run through the MLP and scattered back: the authors normalise only the active tokens
  too, so the FLOPs are theirs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .slots import MODES, Dispatcher
from .sparsify import NO_GRID_ID, TokenState


@dataclass(frozen=True)
class ActivationRate:
    """DyT: the mean MLP mask per sample of one layer; its loss is ``weight * (mean over layers - target)^2``."""

    name = "activation"  # the loss term's name in LossTerms.losses (and loss_activation in the training log)

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
        # The authors' start: a small random gate weight and a zero bias (about half the tokens active at the
        # default target); the `calibrate` option shifts the bias to the target on real clips instead. (A zero
        # weight would tie every token at logit 0 and switch all of them off in eval.)
        nn.init.trunc_normal_(self.gate.weight, std=0.02)
        nn.init.zeros_(self.gate.bias)

    def forward(self, x: torch.Tensor, norm: nn.Module, mlp: nn.Module,
                state: TokenState) -> tuple[torch.Tensor, TokenState]:
        """``x``: the residual stream (B, P + n, D) the gate reads; the MLP runs on ``norm(x)`` of the active tokens."""
        if state.full_tokens:
            return mlp(norm(x)), state
        p = self.num_prefix
        logits = self.gate(x[:, p:]).squeeze(-1).float()  # (B, n)
        if self.training and self.mode is None:
            u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
            soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / self.temperature)
            mask = (soft > 0.5).to(soft.dtype) + soft - soft.detach()  # straight-through
            full = F.pad(mask, (p, 0), value=1.0).to(x.dtype)
            out = mlp(norm(x)) * full[..., None]
            state = state.record(ActivationRate(mask.mean(dim=1), self.target, self.weight))
            keep = mask.detach() > 0.5
        else:
            keep = logits > 0
            full = F.pad(keep, (p, 0), value=True)
            if self.mode == "mask":
                out = mlp(norm(x)) * full[..., None].to(x.dtype)
            else:  # gather the active tokens of the whole batch, normalise them and run the MLP on them only
                active = mlp(norm(x[full]))
                out = active.new_zeros(x.shape)
                out[full] = active
            state = state.record(ActivationRate(keep.float().mean(dim=1), self.target, self.weight))
        return out, state.stage(torch.where(keep, state.ids, NO_GRID_ID))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, target={self.target}"
