"""FLOP and parameter counting in the fvcore convention (one multiply-add = one FLOP), the one papers quote.

fvcore skips ``scaled_dot_product_attention``; the handle below counts it as the two matmuls of plain attention
(``q @ k^T`` and ``attn @ v``), which is what fvcore counts for a non-fused ViT. With it, ViT-B/16 on one 224
image is 17.58 GFLOPs and the dense tube ViT-B on 8 x 224 x 224 (tubelet 2) is 78.9 GFLOPs, as published.
Element-wise ops (softmax, GELU, adds), top-k and gathers are not counted, as in fvcore.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

_log = logging.getLogger(__name__)


def _sdpa_flops(inputs: list[Any], outputs: list[Any]) -> int:
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(inputs[i]) for i in range(3))
    *batch, nq, d = q
    nk, dv = k[-2], v[-1]
    b = 1
    for size in batch:
        b *= size
    return b * nq * nk * (d + dv)


def count_flops(model: nn.Module, input_shape: Sequence[int] | None = None, by_module: bool = False, *,
                inputs: torch.Tensor | None = None) -> float | dict[str, float]:
    """GFLOPs of one forward pass per sample, in eval mode, on zeros of ``input_shape`` (B, C, T, H, W) or on
    ``inputs``. Models whose computed tokens depend on the input (DyT, AS-ViT: ``model.input_dependent``) need
    real ``inputs``: the count is then the mean over those samples of what their inference path computes."""
    from fvcore.nn import FlopCountAnalysis

    if (input_shape is None) == (inputs is None):
        raise ValueError("give exactly one of input_shape and inputs")
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        x = torch.zeros(*input_shape, device=param.device, dtype=param.dtype) if inputs is None else inputs.to(param)
        analysis = FlopCountAnalysis(model, x)
        analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flops)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        batch = x.shape[0]
        if by_module:
            return {name: flops / batch / 1e9 for name, flops in analysis.by_module().items()}
        return analysis.total() / batch / 1e9
    finally:
        model.train(was_training)


def count_params(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}
