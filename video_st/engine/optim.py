"""Optimizer parameter groups and the per-step learning-rate schedule.

Only trainable parameters reach the optimizer. Weight decay skips biases, norms, and what the model's
``no_weight_decay()`` names (positions, [CLS]); full fine-tuning can add layer-wise lr decay (BEiT/VideoMAE:
block i of L gets ``decay ** (L + 1 - (i + 1))``, the embeddings ``decay ** (L + 1)``, the head 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParamGroup:
    params: list[nn.Parameter]
    weight_decay: float
    lr_scale: float
    names: tuple[str, ...]


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for block i, depth + 1 for the final norm and head."""
    if name.startswith(("cls_token", "pos_embed", "patch_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups(model: nn.Module, *, weight_decay: float, layer_decay: float | None = None) -> list[ParamGroup]:
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    depth = len(getattr(model, "blocks", ()))
    grouped: dict[tuple[float, float], list[tuple[str, nn.Parameter]]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(".bias") or name in skip
        scale = layer_decay ** (depth + 1 - layer_id(name, depth)) if layer_decay else 1.0
        grouped.setdefault((0.0 if no_decay else weight_decay, scale), []).append((name, param))
    if not grouped:
        raise ValueError("the model has no trainable parameters")
    return [ParamGroup(params=[p for _, p in items], weight_decay=wd, lr_scale=scale,
                       names=tuple(n for n, _ in items))
            for (wd, scale), items in sorted(grouped.items(), key=lambda kv: (-kv[0][1], kv[0][0]))]


def make_adamw(groups: list[ParamGroup], *, lr: float, betas: tuple[float, float], eps: float) -> torch.optim.AdamW:
    return torch.optim.AdamW([{"params": g.params, "weight_decay": g.weight_decay, "lr": lr * g.lr_scale}
                              for g in groups], lr=lr, betas=betas, eps=eps)


@dataclass(frozen=True)
class CosineSchedule:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine down to ``minimum`` at ``total_steps``."""

    peak: float
    total_steps: int
    warmup_steps: int = 0
    minimum: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak * (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.minimum + 0.5 * (self.peak - self.minimum) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer_groups: list[dict], groups: list[ParamGroup], lr: float) -> None:
    """Write ``lr`` (times each group's layer-decay scale) into the optimizer's param groups, same order."""
    for opt_group, group in zip(optimizer_groups, groups, strict=True):
        opt_group["lr"] = lr * group.lr_scale
