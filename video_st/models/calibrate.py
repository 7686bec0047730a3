"""Data-dependent start of the learned token selectors: DyT's gate biases and AS-ViT's thresholds."""

from __future__ import annotations

import math

import torch
from torch import nn

from .dispatch import TokenDispatcher
from .pruning import ThresholdPruner


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
