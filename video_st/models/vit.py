"""The spatio-temporal ViT: tube embedding, [CLS], position tables, pre-norm blocks with reducer and adapter slots.

One backbone for every method. A method only decides what goes into two explicit slots of each :class:`Block`:
- the reducer slot (``reduces=True``): after the attention residual, keep the top tokens by [CLS] attention and
  fuse the rest (:mod:`video_st.models.sparsify`); the MLP of that layer and every later layer see fewer tokens;
- the adapter slot: nothing, a parallel adapter, or a Dense Adapter fed by the previous layers' adapters.

Interface (timm's): ``forward_features``, ``forward_head(pre_logits=False)``, ``forward``, ``no_weight_decay``,
``set_grad_checkpointing``; plus ``set_keep_rate`` for keep-rate schedules.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .adapters import AdapterState, DenseAdapter, ParallelAdapter
from .layers import Attention, DropPath, LayerScale, LoRA, Mlp, PatchEmbed3d, fixed_grid_table
from .sparsify import FUSE_MODES, expand_keep_rates, plan_reduction

History = tuple[AdapterState, ...]  # states of the most recent Dense Adapters, oldest first


class Block(nn.Module):
    """Pre-norm transformer block: attention -> [reducer] -> MLP beside [adapter].

    ``forward`` is a pure function of its inputs (no state is mutated), so gradient checkpointing may recompute
    it: ``(x, history, token_ids) -> (x, history, token_ids)`` where ``history`` holds the states of the previous
    Dense Adapters (see ``DenseAdapter``) and ``token_ids`` the original-grid id of every non-prefix token.
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        init_values: float | None = None,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        adapter: nn.Module | None = None,
        reduces: bool = False,
        keep_rate: float = 1.0,
        fuse: str = "mean",
        num_prefix: int = 1,
        history_len: int = 0,
        lora_rank: int = 0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim=dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
                              lora_rank=lora_rank)
        self.ls1 = LayerScale(dim=dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), drop=proj_drop)
        self.ls2 = LayerScale(dim=dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path)
        self.adapter = adapter
        self.reduces = reduces
        self.keep_rate = keep_rate
        self.fuse = fuse
        self.num_prefix = num_prefix
        self.history_len = history_len  # how many earlier Dense Adapter outputs later layers still need

    def forward(
        self, x: torch.Tensor, history: History, token_ids: torch.Tensor
    ) -> tuple[torch.Tensor, History, torch.Tensor]:
        score_query = ("cls" if self.num_prefix else "mean") if self.reduces else None
        attn_out, scores = self.attn(self.norm1(x), score_query=score_query)
        x = x + self.drop_path1(self.ls1(attn_out))

        if self.reduces:
            plan = plan_reduction(
                scores[:, self.num_prefix :], keep_rate=self.keep_rate, num_prefix=self.num_prefix, fuse=self.fuse
            )
            x = plan.apply(x)
            history = tuple((plan.apply(h_aug), up_aug) for h_aug, up_aug in history)
            token_ids = plan.apply_ids(token_ids)

        ffn = self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        if isinstance(self.adapter, DenseAdapter):
            previous = tuple(reversed(history))[: self.adapter.num_inputs - 1]
            adapted, state = self.adapter(x, previous)
            history = (*history, state)[-self.history_len :] if self.history_len else ()
            x = x + ffn + adapted
        elif self.adapter is not None:
            x = x + ffn + self.adapter(x)
        else:
            x = x + ffn
        return x, history, token_ids


class VideoViT(nn.Module):
    """ViT over video tubes (or images with ``num_frames=1, tubelet_size=1``), with Sparse-Tuning slots.

    Position embeddings: ``pos_embed="learned"`` is a spatial table laid out as timm's image ViT (the [CLS]
    position first) shared over time, plus a temporal table that starts at zero, so an inflated image model
    starts as the image model applied per tubelet; ``"sincos"`` is VideoMAE's fixed 1-D table over all tokens,
    built for ``pos_embed_grid`` (the (t, h, w) token grid of pre-training; default: the model's own grid) and
    resampled trilinearly to the model's grid, so a 16-frame VideoMAE checkpoint run on 8 frames sees the
    positions it learned with rather than the first half of its table.

    ``class_token=False`` with ``global_pool="avg"`` runs exactly as VideoMAE does (mean of the tokens, then
    ``fc_norm``). Without a [CLS] token the sparsifier scores tokens by the attention of the mean query, the
    closest stand-in for a [CLS] query that still costs one query against all keys.
    """

    def __init__(
        self,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        num_frames: int = 8,
        tubelet_size: int = 2,
        in_chans: int = 3,
        num_classes: int = 400,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        class_token: bool = True,
        global_pool: str = "token",
        fc_norm: bool | None = None,
        pos_embed: str = "learned",
        pos_embed_grid: Sequence[int] | None = None,
        norm_eps: float = 1e-6,
        head_norm_eps: float | None = None,
        init_values: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        adapter: str | None = None,
        adapter_bottleneck: int = 32,
        adapter_scale: float = 1.0,
        dense_inputs: int = 3,
        sparse_layers: Sequence[int] = (),
        keep_rate: float | Sequence[float] = 0.7,
        fuse: str = "mean",
        lora_rank: int = 0,
    ) -> None:
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if pos_embed not in ("learned", "sincos"):
            raise ValueError(f"pos_embed must be 'learned' or 'sincos', got {pos_embed!r}")
        if adapter not in (None, "parallel", "dense"):
            raise ValueError(f"adapter must be None, 'parallel' or 'dense', got {adapter!r}")
        if fuse not in FUSE_MODES:
            raise ValueError(f"fuse must be one of {FUSE_MODES}, got {fuse!r}")
        sparse_layers = tuple(sorted(set(int(i) for i in sparse_layers)))
        if any(not 1 <= i <= depth for i in sparse_layers):
            raise ValueError(f"sparse_layers are 1-based layer numbers in 1..{depth}, got {sparse_layers}")

        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.global_pool = global_pool
        self.num_prefix_tokens = 1 if class_token else 0
        self.sparse_layers = sparse_layers
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed3d(
            img_size=img_size,
            patch_size=patch_size,
            num_frames=num_frames,
            tubelet_size=tubelet_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
        )
        t, h, w = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed_kind = pos_embed
        if pos_embed == "learned":
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + h * w, embed_dim))
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, t, embed_dim))
        else:
            table = fixed_grid_table((t, h, w), embed_dim, tuple(pos_embed_grid or (t, h, w)))
            self.register_buffer("pos_embed_fixed", table, persistent=False)
        self.pos_drop = nn.Dropout(drop_rate)

        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        history_len = dense_inputs - 1 if adapter == "dense" else 0
        blocks = []
        for i in range(depth):
            if adapter == "parallel":
                block_adapter = ParallelAdapter(dim=embed_dim, bottleneck=adapter_bottleneck, scale=adapter_scale)
            elif adapter == "dense":
                block_adapter = DenseAdapter(
                    dim=embed_dim, bottleneck=adapter_bottleneck, num_inputs=min(i, history_len) + 1, scale=adapter_scale
                )
            else:
                block_adapter = None
            blocks.append(
                Block(
                    dim=embed_dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    norm_eps=norm_eps,
                    init_values=init_values,
                    proj_drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[i],
                    adapter=block_adapter,
                    reduces=(i + 1) in sparse_layers,
                    fuse=fuse,
                    num_prefix=self.num_prefix_tokens,
                    history_len=history_len,
                    lora_rank=lora_rank,
                )
            )
        self.blocks = nn.ModuleList(blocks)
        self.set_keep_rate(keep_rate)

        use_fc_norm = global_pool == "avg" if fc_norm is None else fc_norm
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(embed_dim, eps=norm_eps)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=head_norm_eps or norm_eps) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    # -- construction helpers -------------------------------------------------------------------------------
    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.pos_embed_kind == "learned":
            nn.init.trunc_normal_(self.pos_embed_spatial, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        # Adapters last: their zero-initialised up-projections make a fresh model equal to its backbone.
        for module in self.modules():
            if isinstance(module, (ParallelAdapter, DenseAdapter, LoRA)):
                module.reset_parameters()

    @property
    def reducing_blocks(self) -> list[Block]:
        return [b for b in self.blocks if b.reduces]

    def set_keep_rate(self, keep_rate: float | Sequence[float]) -> None:
        """Set the keep rate of every sparsification stage (one float, or one per stage); a schedule calls this."""
        blocks = self.reducing_blocks
        for block, rate in zip(blocks, expand_keep_rates(keep_rate, len(blocks)), strict=True):
            block.keep_rate = rate

    @property
    def keep_rates(self) -> tuple[float, ...]:
        return tuple(b.keep_rate for b in self.reducing_blocks)

    def merge_lora(self) -> None:
        """Fold every LoRA update into the frozen weights (for inference and export); a no-op without LoRA."""
        for block in self.blocks:
            block.attn.merge_lora()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed_spatial", "pos_embed_temporal"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    # -- forward ----------------------------------------------------------------------------------------------
    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        if self.pos_embed_kind == "learned":
            prefix_pos = self.pos_embed_spatial[:, : self.num_prefix_tokens]
            spatial = self.pos_embed_spatial[:, self.num_prefix_tokens :]
            # (t) + (h w) -> (t h w): the spatial table is shared over time, the temporal one over space.
            x = x + (self.pos_embed_temporal[:, :, None, :] + spatial[:, None, :, :]).flatten(1, 2)
        else:
            x = x + self.pos_embed_fixed.to(x.dtype)
        if self.cls_token is not None:
            cls = self.cls_token.expand(batch, -1, -1)
            if self.pos_embed_kind == "learned":
                cls = cls + prefix_pos
            x = torch.cat([cls, x], dim=1)
        return self.pos_drop(x)

    def forward_features(
        self, x: torch.Tensor, return_token_ids: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, C, T, H, W) -> (B, N', D) final tokens.

        With ``return_token_ids=True`` also returns, per sparsification stage, a (B, n_s) long tensor with the
        original-grid id ``t * H' * W' + h * W' + w`` of every token that stage kept (-1 for a fused token).
        """
        x = self._pos_embed(self.patch_embed(x))
        num_tokens = x.shape[1] - self.num_prefix_tokens
        token_ids = torch.arange(num_tokens, device=x.device).expand(x.shape[0], -1)
        history: History = ()
        kept: list[torch.Tensor] = []
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x, history, token_ids = checkpoint(block, x, history, token_ids, use_reentrant=False)
            else:
                x, history, token_ids = block(x, history, token_ids)
            if block.reduces:
                kept.append(token_ids)
        x = self.norm(x)
        return (x, kept) if return_token_ids else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, self.num_prefix_tokens :].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
