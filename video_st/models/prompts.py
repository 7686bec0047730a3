"""VPT-Deep (Jia et al. 2022): learnable prompt tokens inserted after [CLS] before every layer."""

from __future__ import annotations

import math

import torch
from torch import nn

from .slots import Prompts


class DeepPrompts(Prompts):
    """``num_prompts`` fresh prompts per layer: layer 0 inserts its prompts after the class token(s), each later
    layer replaces the previous layer's, and they are removed before the head. The blocks see them as prefix
    tokens (never reduced, never scored)."""

    def __init__(self, *, depth: int, num_prompts: int, dim: int, patch_volume: int) -> None:
        super().__init__()
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
        self.num_prompts, self.patch_volume = num_prompts, patch_volume
        self.weight = nn.Parameter(torch.empty(depth, num_prompts, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # VPT's Xavier-uniform range over the patch's fan-in (channels x tube volume) and the width.
        bound = math.sqrt(6.0 / (self.patch_volume + self.weight.shape[-1]))
        nn.init.uniform_(self.weight, -bound, bound)

    def insert(self, x: torch.Tensor, layer: int, num_class_tokens: int) -> torch.Tensor:
        c = num_class_tokens
        prompts = self.weight[layer].expand(x.shape[0], -1, -1).to(x.dtype)
        rest = x[:, c:] if layer == 0 else x[:, c + self.num_prompts :]
        return torch.cat([x[:, :c], prompts, rest], dim=1)

    def remove(self, x: torch.Tensor, num_class_tokens: int) -> torch.Tensor:
        c = num_class_tokens
        return torch.cat([x[:, :c], x[:, c + self.num_prompts :]], dim=1)
