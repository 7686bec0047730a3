"""Fitting converted weights to the model being loaded: tube kernel, position tables, head (see convert.py's
docstring for the choices: central vs average inflation, bicubic spatial and linear temporal resampling)."""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from ..errors import CheckpointError

_log = logging.getLogger(__name__)

INFLATIONS = ("central", "average")


def inflate_patch_kernel(kernel: torch.Tensor, tubelet_size: int, inflation: str = "central") -> torch.Tensor:
    """(D, C, p, p) image kernel -> (D, C, t, p, p) tube kernel."""
    if inflation not in INFLATIONS:
        raise ValueError(f"inflation must be one of {INFLATIONS}, got {inflation!r}")
    if inflation == "average":
        return kernel.unsqueeze(2).repeat(1, 1, tubelet_size, 1, 1) / tubelet_size
    out = kernel.new_zeros(kernel.shape[:2] + (tubelet_size,) + kernel.shape[2:])
    out[:, :, tubelet_size // 2] = kernel
    return out


def resample_spatial_pos(pos: torch.Tensor, grid: tuple[int, int], num_prefix: int) -> torch.Tensor:
    """(1, [1 +] h*w, D) -> (1, num_prefix + H*W, D), bicubic over the grid; the [CLS] slot is kept, added
    (zero) or dropped to match the model."""
    src_prefix = 0 if math.isqrt(pos.shape[1]) ** 2 == pos.shape[1] else 1
    prefix, body = pos[:, :src_prefix], pos[:, src_prefix:]
    side = math.isqrt(body.shape[1])
    if side * side != body.shape[1]:
        raise CheckpointError(f"spatial position table of {pos.shape[1]} tokens is not a square grid")
    if (side, side) != tuple(grid):
        img = body.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
        img = F.interpolate(img, size=tuple(grid), mode="bicubic", align_corners=False)
        body = img.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(pos.dtype)
    if num_prefix == 0:
        return body
    if src_prefix == 0:
        prefix = pos.new_zeros(1, 1, pos.shape[2])
    return torch.cat([prefix, body], dim=1)


def resample_temporal_pos(pos: torch.Tensor, length: int) -> torch.Tensor:
    if pos.shape[1] == length:
        return pos
    out = F.interpolate(pos.transpose(1, 2).float(), size=length, mode="linear", align_corners=False)
    return out.transpose(1, 2).to(pos.dtype)


def adapt_to_model(sd: dict[str, torch.Tensor], model: torch.nn.Module, inflation: str = "central") -> dict[str, torch.Tensor]:
    """Fit a VideoViT-named state dict to ``model``'s tubelet, grid and head; returns a new dict."""
    sd = dict(sd)
    embed = model.patch_embed
    kernel = sd.get("patch_embed.proj.weight")
    if kernel is not None:
        if kernel.shape[-1] != embed.patch_size:
            raise CheckpointError(f"checkpoint patch size {kernel.shape[-1]} != model patch size {embed.patch_size}")
        if kernel.ndim == 4:
            sd["patch_embed.proj.weight"] = inflate_patch_kernel(kernel, embed.tubelet_size, inflation)
        elif kernel.shape[2] != embed.tubelet_size:
            raise CheckpointError(f"checkpoint tubelet size {kernel.shape[2]} != model tubelet size {embed.tubelet_size}")
    t, h, w = embed.grid_size
    if "pos_embed_spatial" in sd and hasattr(model, "pos_embed_spatial"):
        sd["pos_embed_spatial"] = resample_spatial_pos(sd["pos_embed_spatial"], (h, w), model.num_prefix_tokens)
    if "pos_embed_temporal" in sd and hasattr(model, "pos_embed_temporal"):
        sd["pos_embed_temporal"] = resample_temporal_pos(sd["pos_embed_temporal"], t)
    head = getattr(model, "head", None)
    if "head.weight" in sd and (not isinstance(head, torch.nn.Linear) or head.weight.shape != sd["head.weight"].shape):
        _log.info("dropping the checkpoint's head (%s): the model has a new one", tuple(sd["head.weight"].shape))
        sd.pop("head.weight")
        sd.pop("head.bias", None)
    return sd
