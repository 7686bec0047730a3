"""Building blocks of the video ViT: tube embedding, attention, MLP, stochastic depth, position tables.

Only torch and einops are imported here; nothing reads a config object. Names of parameters follow timm's
``VisionTransformer`` (``attn.qkv``, ``mlp.fc1``, ``ls1.gamma`` ...) so that image checkpoints map one to one.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class PatchEmbed3d(nn.Module):
    """Tube embedding: non-overlapping ``tubelet x patch x patch`` cubes -> one token each (Conv3d).

    Tokens come out flattened in ``(t h w)`` order, the order VideoMAE's sinusoidal table and the kept-token
    indices of the sparsifier refer to.
    """

    def __init__(
        self,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        num_frames: int = 8,
        tubelet_size: int = 2,
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} is not divisible by patch_size={patch_size}")
        if num_frames % tubelet_size:
            raise ValueError(f"num_frames={num_frames} is not divisible by tubelet_size={tubelet_size}")
        self.img_size, self.patch_size = img_size, patch_size
        self.num_frames, self.tubelet_size = num_frames, tubelet_size
        self.grid_size = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.num_patches = math.prod(self.grid_size)
        self.proj = nn.Conv3d(
            in_chans,
            embed_dim,
            kernel_size=(tubelet_size, patch_size, patch_size),
            stride=(tubelet_size, patch_size, patch_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.num_frames, self.img_size, self.img_size)
        if tuple(x.shape[2:]) != expected:
            raise ValueError(f"expected input (B, C, T, H, W) with T, H, W = {expected}, got {tuple(x.shape)}")
        return rearrange(self.proj(x), "b d t h w -> b (t h w) d")


class LoRA(nn.Module):
    """Low-rank update ``scale * up(down(x))`` of a frozen projection (Hu et al. 2021): down is Kaiming-uniform,
    up starts at zero, so a fresh LoRA leaves the model unchanged."""

    def __init__(self, *, dim_in: int, dim_out: int, rank: int, scale: float = 1.0) -> None:
        super().__init__()
        self.down = nn.Linear(dim_in, rank, bias=False)
        self.up = nn.Linear(rank, dim_out, bias=False)
        self.scale = scale
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x)) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """The (dim_out, dim_in) matrix this update adds to the projection's weight."""
        return (self.up.weight @ self.down.weight) * self.scale


class QKVUpdate(nn.Module):
    """The attention's update slot: ``(x, qkv) -> qkv`` after the frozen qkv projection; the default adds nothing.

    A method that adapts the attention weights (LoRA) fills it; ``merge_into`` folds the update into the
    projection's weight for inference, after which the slot does nothing again."""

    def forward(self, x: torch.Tensor, qkv: torch.Tensor) -> torch.Tensor:
        return qkv

    @property
    def mergeable(self) -> bool:
        return False

    def merge_into(self, qkv: nn.Linear) -> None:
        return None


class LoRAQV(QKVUpdate):
    """LoRA on the query and value projections (the original paper's choice), beside the frozen qkv."""

    def __init__(self, *, dim: int, rank: int, scale: float = 1.0) -> None:
        super().__init__()
        self.q = LoRA(dim_in=dim, dim_out=dim, rank=rank, scale=scale)
        self.v = LoRA(dim_in=dim, dim_out=dim, rank=rank, scale=scale)
        self.dim = dim

    def reset_parameters(self) -> None:
        self.q.reset_parameters()
        self.v.reset_parameters()

    def forward(self, x: torch.Tensor, qkv: torch.Tensor) -> torch.Tensor:
        d = self.dim
        return torch.cat([qkv[..., :d] + self.q(x), qkv[..., d : 2 * d], qkv[..., 2 * d :] + self.v(x)], -1)

    @property
    def mergeable(self) -> bool:
        return True

    @torch.no_grad()
    def merge_into(self, qkv: nn.Linear) -> None:
        qkv.weight[: self.dim] += self.q.delta_weight()
        qkv.weight[2 * self.dim :] += self.v.delta_weight()


class AttnInfo(NamedTuple):
    """What a token reducer may ask the attention for, beside its output."""

    rows: torch.Tensor | None  # (B, heads, N) softmax attention of the [CLS] (or mean) query over all keys
    keys: torch.Tensor | None  # (B, N, head_dim) keys averaged over heads (ToMe's similarity metric)
    # (B, heads, N) L2 norm of each head's attention output at each token, before the heads are merged (AS-ViT's
    # token-level head importance)
    head_norms: torch.Tensor | None = None


class Attention(nn.Module):
    """Multi-head self-attention through fused SDPA, with what token reducers need on request.

    ``rows`` is the softmax attention of ONE query (the [CLS] query, or the mean of all queries when the model
    has no [CLS]) against all keys, per head: an O(N) extra product, so the N x N map is never built and the
    attention itself stays in the fused kernel. ``head_norms`` is the norm of every head's output at every token,
    read off SDPA's (B, H, N, D) output before the heads are merged: O(N H D). ``key_bias`` (B, N) is added to
    every query's logits for that key: log-masks of pruned or padded tokens (-inf removes a key) and ToMe's log
    token sizes.
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        qkv_update: QKVUpdate | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.lora = qkv_update if qkv_update is not None else QKVUpdate()  # the update slot (LoRA)

    def merge_update(self) -> None:
        """Fold a mergeable update (LoRA) into qkv's weight and empty the slot: inference then costs what the
        backbone costs."""
        if self.lora.mergeable:
            self.lora.merge_into(self.qkv)
            self.lora = QKVUpdate()

    def forward(
        self,
        x: torch.Tensor,
        *,
        key_bias: torch.Tensor | None = None,
        rows: str | None = None,
        keys: bool = False,
        head_norms: bool = False,
    ) -> tuple[torch.Tensor, AttnInfo]:
        """Returns ``(output, info)``; ``info.rows`` is filled when ``rows`` is "cls" or "mean", ``info.keys``
        when ``keys`` is true, ``info.head_norms`` when ``head_norms`` is true."""
        qkv = self.lora(x, self.qkv(x))
        q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        bias = None if key_bias is None else key_bias.to(q.dtype)[:, None, None, :]  # (B, 1, 1, N) over queries
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.attn_drop if self.training else 0.0)
        row = None
        if rows is not None:
            query = q[:, :, :1] if rows == "cls" else q.mean(dim=2, keepdim=True)
            logits = torch.matmul(query * self.scale, k.transpose(-2, -1))  # (B, H, 1, N)
            if bias is not None:
                logits = logits + bias
            row = logits.softmax(dim=-1).squeeze(2)
        norms = out.norm(dim=-1) if head_norms else None  # (B, H, N)
        out = self.proj_drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))
        return out, AttnInfo(rows=row, keys=k.mean(dim=1) if keys else None, head_norms=norms)


class Mlp(nn.Module):
    def __init__(self, *, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth per sample (drops the whole residual branch of a sample)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class LayerScale(nn.Module):
    def __init__(self, *, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """VideoMAE's fixed 1-D sinusoidal table over the flattened (t h w) tokens: (1, num_positions, dim).

    Computed in float64 like the reference (numpy) implementation, so the float32 result is bit-identical.
    """
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponent = 2 * (torch.arange(dim, dtype=torch.float64) // 2) / dim
    angles = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponent)
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.float().unsqueeze(0)


def fixed_grid_table(grid: tuple[int, int, int], dim: int, source_grid: tuple[int, int, int]) -> torch.Tensor:
    """VideoMAE's table defined over ``source_grid`` and resampled (trilinear) to ``grid``: (1, t*h*w, dim)."""
    table = sinusoid_table(math.prod(source_grid), dim)
    if tuple(source_grid) == tuple(grid):
        return table
    volume = rearrange(table, "1 (t h w) d -> 1 d t h w", t=source_grid[0], h=source_grid[1], w=source_grid[2])
    volume = F.interpolate(volume, size=tuple(grid), mode="trilinear", align_corners=False)
    return rearrange(volume, "1 d t h w -> 1 (t h w) d")
