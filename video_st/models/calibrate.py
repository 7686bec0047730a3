"""Data-dependent start of the learned token selectors: DyT's gate biases and AS-ViT's thresholds.

Not the authors' recipe (DyT starts its gate bias at zero, AS-ViT its thresholds at 0.001 / 0.002 / 0.003): an
option of both methods, ``calibrate`` (default false), which the trainer honours at a fresh start
(:func:`wants_calibration`). The benchmarks call :func:`calibrate` on untrained models whatever the option, so that
their costs are those of the configured budget.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .dispatch import TokenDispatcher
from .pruning import ThresholdPruner


def wants_calibration(model: nn.Module) -> bool:
    """Whether ``model``'s method options ask for :func:`calibrate` before training (``calibrate: true``)."""
    spec = getattr(model, "spec", None)
    return bool(spec is not None and spec.options.get("calibrate", False))


@torch.no_grad()
def calibrate(model: nn.Module, clips: torch.Tensor) -> dict[str, list[float]]:
    """Start every dispatcher and threshold at its target on ``clips``, layer by layer (later layers see the
    calibrated earlier ones): DyT's gate bias is shifted so that the target fraction of gate logits is positive;
    AS-ViT's thresholds are set so that the model costs its FLOPs budget: every stage keeps the same fraction r of
    the tokens before it (:meth:`~video_st.models.pruning.FlopsBudget.stage_rate`), each threshold the score
    quantile that keeps r of its stage's tokens.

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
                    scores = module.scores(info)
                    captured["s"] = scores[module.alive(state, scores)]

                hook = pruner.register_forward_hook(spy)
                model(clips)
                hook.remove()
                rate = pruner.budget.stage_rate(pruner.keep_rate)
                scores = captured["s"]
                value = float(torch.quantile(scores, 1.0 - rate)) if rate < 1.0 and scores.numel() else -1.0
                pruner.threshold.fill_(value if math.isfinite(value) else 0.0)
                found["threshold"].append(float(pruner.threshold))
    finally:
        model.train(was_training)
    return found
