"""The spatio-temporal ViT: tube embedding, [CLS], position tables, pre-norm blocks with explicit method slots.

One backbone for every method. A method only decides what goes into the slots of each :class:`Block`:
- the reducer slot, after the attention residual: top-k + fuse (Sparse-Tuning, EViT), ToMe merging, or AS-ViT's
  threshold pruning (:mod:`video_st.models.sparsify`, :mod:`video_st.models.dispatch`); the MLP of that layer
  and every later layer see fewer tokens;
- the dispatcher slot: DyT's token dispatcher, which lets tokens skip the MLP;
- the adapter slot: nothing, a parallel adapter (AdaptFormer, DyT, AS-ViT), a sequential one (Houlsby), an MoE
  adapter, or a Dense Adapter fed by the previous layers' adapters;
- and, model-wide, deep prompts (VPT) and LoRA on the attention's query and value.

Interface (timm's): ``forward_features``, ``forward_head(pre_logits=False)``, ``forward``, ``no_weight_decay``,
``set_grad_checkpointing``; plus ``set_keep_rate`` for keep-rate schedules and ``auxiliary_losses`` for the
methods that add a loss term (DyT's activation rate and self-distillation, AS-ViT's budget).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .adapters import DenseAdapter, MoEAdapter, ParallelAdapter, SequentialAdapter
from .dispatch import ThresholdPruner, TokenDispatcher
from .layers import Attention, DropPath, LayerScale, LoRA, Mlp, PatchEmbed3d, fixed_grid_table
from .sparsify import FUSE_MODES, TokenState, TopKFuse, ToMeMerge, expand_keep_rates

ADAPTERS = (None, "parallel", "dense", "sequential", "moe")
REDUCERS = (None, "topk", "tome", "threshold")


class Block(nn.Module):
    """Pre-norm transformer block: attention -> [reducer] -> MLP [dispatched] beside/after [adapter].

    ``forward`` is a pure function of its inputs (no state is mutated), so gradient checkpointing may recompute
    it: ``(x, state) -> (x, state)`` where ``state`` (:class:`TokenState`) carries the original-grid ids of the
    tokens, the previous Dense Adapters' states, token sizes or key masks, and the auxiliary-loss records.
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
        reducer: nn.Module | None = None,
        dispatcher: TokenDispatcher | None = None,
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
        self.reducer = reducer
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), drop=proj_drop)
        self.dispatcher = dispatcher
        self.ls2 = LayerScale(dim=dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path)
        self.adapter = adapter
        self.num_prefix = num_prefix
        self.history_len = history_len  # how many earlier Dense Adapter outputs later layers still need

    @property
    def reduces(self) -> bool:
        return self.reducer is not None

    def forward(self, x: torch.Tensor, state: TokenState) -> tuple[torch.Tensor, TokenState]:
        reducer = self.reducer
        attn_out, info = self.attn(self.norm1(x), key_bias=state.attention_bias(self.num_prefix),
                                   rows=reducer.rows if reducer is not None else None,
                                   keys=reducer is not None and reducer.keys)
        x = x + self.drop_path1(self.ls1(attn_out))
        if reducer is not None:
            x, state = reducer(x, state, info)

        h = self.norm2(x)
        if self.dispatcher is not None and not state.full_tokens:
            mlp_out, state = self.dispatcher(x, h, self.mlp, state)
        else:
            mlp_out = self.mlp(h)
        if isinstance(self.adapter, SequentialAdapter):
            mlp_out = self.adapter(mlp_out)
        ffn = self.drop_path2(self.ls2(mlp_out))
        if isinstance(self.adapter, DenseAdapter):
            history = state.history
            previous = tuple(reversed(history))[: self.adapter.num_inputs - 1]
            adapted, adapter_state = self.adapter(x, previous)
            history = (*history, adapter_state)[-self.history_len :] if self.history_len else ()
            state = state.with_history(history)
            return x + ffn + adapted, state
        if self.adapter is not None and not isinstance(self.adapter, SequentialAdapter):
            return x + ffn + self.adapter(x), state
        return x + ffn, state


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
        adapter_experts: int = 4,
        sparse_layers: Sequence[int] = (),
        reducer: str | None = "topk",
        keep_rate: float | Sequence[float] = 0.7,
        fuse: str = "mean",
        threshold_temperature: float = 0.1,
        budget_weight: float = 2.0,
        lora_rank: int = 0,
        num_prompts: int = 0,
        dispatch: bool = False,
        dispatch_target: float = 0.5,
        dispatch_temperature: float = 5.0,
        dispatch_weight: float = 2.0,
        distill_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if pos_embed not in ("learned", "sincos"):
            raise ValueError(f"pos_embed must be 'learned' or 'sincos', got {pos_embed!r}")
        if adapter not in ADAPTERS:
            raise ValueError(f"adapter must be one of {ADAPTERS}, got {adapter!r}")
        if reducer not in REDUCERS:
            raise ValueError(f"reducer must be one of {REDUCERS}, got {reducer!r}")
        if fuse not in FUSE_MODES:
            raise ValueError(f"fuse must be one of {FUSE_MODES}, got {fuse!r}")
        sparse_layers = tuple(sorted(set(int(i) for i in sparse_layers)))
        if any(not 1 <= i <= depth for i in sparse_layers):
            raise ValueError(f"sparse_layers are 1-based layer numbers in 1..{depth}, got {sparse_layers}")
        if sparse_layers and reducer is None:
            raise ValueError(f"sparse_layers={sparse_layers} given but reducer=None")
        if reducer == "threshold" and global_pool == "avg":
            # Pruned samples keep different token counts; an average over a padded set would count the padding.
            raise ValueError("reducer='threshold' (AS-ViT) needs a [CLS] head: global_pool='token'")
        if not 0.0 < dispatch_target <= 1.0:
            raise ValueError(f"dispatch_target must be in (0, 1], got {dispatch_target}")
        if num_prompts < 0:
            raise ValueError(f"num_prompts must be >= 0, got {num_prompts}")

        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.global_pool = global_pool
        self.num_prefix_tokens = 1 if class_token else 0
        self.sparse_layers = sparse_layers
        self.num_prompts = num_prompts
        self.budget_weight, self.dispatch_weight, self.distill_weight = budget_weight, dispatch_weight, distill_weight
        self.grad_checkpointing = False
        self.last_aux: tuple = ()  # the auxiliary-loss records of the latest forward pass
        self.last_teacher: torch.Tensor | None = None  # DyT's full-token logits of the latest training pass

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
        # VPT-Deep: fresh prompts per layer after the [CLS] token; the blocks treat them as prefix tokens.
        self.prompts = nn.Parameter(torch.zeros(depth, num_prompts, embed_dim)) if num_prompts else None
        num_prefix = self.num_prefix_tokens + num_prompts

        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        history_len = dense_inputs - 1 if adapter == "dense" else 0
        stages = {layer: stage for stage, layer in enumerate(sparse_layers, start=1)}
        blocks = []
        for i in range(depth):
            if adapter in ("parallel", "sequential"):
                kind = ParallelAdapter if adapter == "parallel" else SequentialAdapter
                block_adapter = kind(dim=embed_dim, bottleneck=adapter_bottleneck, scale=adapter_scale)
            elif adapter == "moe":
                block_adapter = MoEAdapter(dim=embed_dim, bottleneck=adapter_bottleneck, experts=adapter_experts,
                                           scale=adapter_scale)
            elif adapter == "dense":
                block_adapter = DenseAdapter(
                    dim=embed_dim, bottleneck=adapter_bottleneck, num_inputs=min(i, history_len) + 1, scale=adapter_scale
                )
            else:
                block_adapter = None
            block_reducer: nn.Module | None = None
            if (i + 1) in stages:
                if reducer == "topk":
                    block_reducer = TopKFuse(fuse=fuse, num_prefix=num_prefix)
                elif reducer == "tome":
                    block_reducer = ToMeMerge(num_prefix=num_prefix)
                else:
                    block_reducer = ThresholdPruner(num_prefix=num_prefix, num_tokens=self.patch_embed.num_patches,
                                                    stage=stages[i + 1], temperature=threshold_temperature)
            dispatcher = (TokenDispatcher(dim=embed_dim, num_prefix=num_prefix, temperature=dispatch_temperature,
                                          target=dispatch_target) if dispatch else None)
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
                    reducer=block_reducer,
                    dispatcher=dispatcher,
                    num_prefix=num_prefix,
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
        if self.prompts is not None:
            # VPT's Xavier-uniform range over the patch's fan-in and the width.
            bound = math.sqrt(6.0 / (3 * math.prod(self.patch_embed.proj.kernel_size) + self.embed_dim))
            nn.init.uniform_(self.prompts, -bound, bound)
        # Adapters last: their zero-initialised up-projections make a fresh model equal to its backbone.
        for module in self.modules():
            if isinstance(module, (ParallelAdapter, DenseAdapter, MoEAdapter, LoRA, TokenDispatcher)):
                module.reset_parameters()

    @property
    def reducing_blocks(self) -> list[Block]:
        return [b for b in self.blocks if b.reduces]

    def set_keep_rate(self, keep_rate: float | Sequence[float]) -> None:
        """Set the keep rate of every sparsification stage (one float, or one per stage); a schedule calls this."""
        blocks = self.reducing_blocks
        for block, rate in zip(blocks, expand_keep_rates(keep_rate, len(blocks)), strict=True):
            block.reducer.keep_rate = rate

    @property
    def keep_rates(self) -> tuple[float, ...]:
        return tuple(b.reducer.keep_rate for b in self.reducing_blocks)

    @property
    def input_dependent(self) -> bool:
        """Whether the computed tokens (hence FLOPs and time) depend on the input: DyT and AS-ViT."""
        return any(b.dispatcher is not None or isinstance(b.reducer, ThresholdPruner) for b in self.blocks)

    def stage_names(self) -> list[str]:
        """A label per entry of ``forward_features(..., return_token_ids=True)[1]``."""
        names = []
        for i, block in enumerate(self.blocks, start=1):
            if block.reducer is not None:
                names.append(f"layer {i}")
            if block.dispatcher is not None:
                names.append(f"layer {i} MLP")
        return names

    def set_dispatch_mode(self, mode: str | None) -> None:
        """None: soft decisions in training, real skipping/pruning in eval; "mask": the hard decisions applied as
        masks over all tokens (the reference the skipping paths are tested against)."""
        for module in self.modules():
            if isinstance(module, (TokenDispatcher, ThresholdPruner)):
                module.mode = mode

    def merge_lora(self) -> None:
        """Fold every LoRA update into the frozen weights (for inference and export); a no-op without LoRA."""
        for block in self.blocks:
            block.attn.merge_lora()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed_spatial", "pos_embed_temporal", "prompts"}

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

    def _insert_prompts(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        # Layer 0 inserts its prompts after the [CLS] token; each later layer replaces the previous layer's.
        c = self.num_prefix_tokens
        prompts = self.prompts[layer].expand(x.shape[0], -1, -1).to(x.dtype)
        rest = x[:, c:] if layer == 0 else x[:, c + self.num_prompts :]
        return torch.cat([x[:, :c], prompts, rest], dim=1)

    def forward_features(
        self, x: torch.Tensor, return_token_ids: bool = False, full_tokens: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, C, T, H, W) -> (B, N', D) final tokens.

        With ``return_token_ids=True`` also returns, per stage (see :meth:`stage_names`), a (B, n_s) long tensor
        with the original-grid id ``t * H' * W' + h * W' + w`` of every token that stage kept (-1: a fused token
        or padding, or a token the dispatcher sent past the MLP). ``full_tokens=True`` runs DyT's full-token pass.
        """
        x = self._pos_embed(self.patch_embed(x))
        num_tokens = x.shape[1] - self.num_prefix_tokens
        state = TokenState(ids=torch.arange(num_tokens, device=x.device).expand(x.shape[0], -1), full_tokens=full_tokens)
        for layer, block in enumerate(self.blocks):
            if self.prompts is not None:
                x = self._insert_prompts(x, layer)
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x, state = checkpoint(block, x, state, use_reentrant=False)
            else:
                x, state = block(x, state)
        if self.prompts is not None:
            x = torch.cat([x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens + self.num_prompts :]], dim=1)
        self.last_aux = state.aux
        x = self.norm(x)
        return (x, list(state.kept)) if return_token_ids else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, self.num_prefix_tokens :].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.forward_head(self.forward_features(x))
        self.last_teacher = None
        if self.training and self.distill_weight > 0 and any(b.dispatcher is not None for b in self.blocks):
            aux = self.last_aux
            self.last_teacher = self.forward_head(self.forward_features(x, full_tokens=True))
            self.last_aux = aux
        return logits

    def auxiliary_losses(
        self, logits: torch.Tensor, criterion: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """The method's loss terms for the latest forward pass (empty for methods without any).

        - ``activation`` (DyT): ``dispatch_weight * (mean mask over layers and tokens - target)^2``;
        - ``budget`` (AS-ViT): ``budget_weight * mean over stages of (kept fraction - keep_rate^stage)^2``;
        - ``full_token`` and ``distill`` (DyT with ``distill_weight > 0``): the full-token pass trains on the task
          loss (``criterion``) too, and the dynamic pass is pulled to its (detached) predictions by KL divergence.
        """
        losses: dict[str, torch.Tensor] = {}
        rates = [(value, target) for kind, value, target in self.last_aux if kind == "activation"]
        if rates:
            mean_rate = torch.stack([value.float().mean() for value, _ in rates]).mean()
            losses["activation"] = self.dispatch_weight * (mean_rate - rates[0][1]) ** 2
        budgets = [(value.float().mean() - target) ** 2 for kind, value, target in self.last_aux if kind == "budget"]
        if budgets:
            losses["budget"] = self.budget_weight * torch.stack(budgets).mean()
        if self.last_teacher is not None:
            teacher = self.last_teacher.float()
            if criterion is not None:
                losses["full_token"] = criterion(teacher)
            losses["distill"] = self.distill_weight * F.kl_div(
                F.log_softmax(logits.float(), dim=-1), F.log_softmax(teacher.detach(), dim=-1), log_target=True,
                reduction="batchmean")
        return losses

    def token_stats(self) -> dict[str, float]:
        """Measured token use of the latest forward pass: DyT's MLP activation rate, AS-ViT's kept fraction at
        the last stage."""
        stats: dict[str, float] = {}
        rates = [value.detach().float().mean() for kind, value, _ in self.last_aux if kind == "activation"]
        if rates:
            stats["activation_rate"] = torch.stack(rates).mean().item()
        kept = [value.detach().float().mean() for kind, value, _ in self.last_aux if kind == "budget"]
        if kept:
            stats["kept_ratio"] = kept[-1].item()
        return stats
