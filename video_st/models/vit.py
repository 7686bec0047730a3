"""The spatio-temporal ViT: tube embedding, [CLS], position tables, pre-norm blocks with explicit method slots.

One backbone for every method. A method only decides what goes into the slots (:mod:`video_st.models.slots`,
filled by the records of :mod:`video_st.models.methods`):
- the reducer slot, after the attention residual: top-k + fuse (Sparse-Tuning, EViT), ToMe merging, or AS-ViT's
  threshold pruning (:mod:`video_st.models.sparsify`, :mod:`video_st.models.pruning`); the MLP of that layer
  and every later layer see fewer tokens;
- the dispatcher slot: DyT's token dispatcher, which lets tokens skip the MLP;
- the adapter slot: a parallel adapter (AdaptFormer, DyT, AS-ViT), a sequential one (Houlsby), an MoE adapter, or
  a Dense Adapter fed by the previous layers' adapters (or, the published form, summed per stage and re-added);
- the attention's update slot (LoRA on query and value) and, model-wide, deep prompts (VPT).
Every slot defaults to doing nothing, so no code here asks which method it runs.

Interface (timm's): ``forward_features``, ``forward_head(pre_logits=False)``, ``forward``, ``no_weight_decay``,
``set_grad_checkpointing``; plus ``set_keep_rate`` for keep-rate schedules, and ``forward(x, return_terms=True)``
returning the method's :class:`~video_st.models.terms.LossTerms` (DyT's activation rate and self-distillation,
AS-ViT's budget, and the attention guide's term: ``set_attention_guide``, :mod:`video_st.models.guide`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .guide import guide_record
from .layers import Attention, DropPath, LayerScale, Mlp, PatchEmbed3d, QKVUpdate, fixed_grid_table
from .slots import Adapter, Dispatcher, Prompts, Reducer, Slot, is_slot
from .sparsify import TokenState, expand_keep_rates
from .terms import LossTerms, collect_terms

DEFAULT_SLOTS = (Reducer, Dispatcher, Adapter, Prompts, QKVUpdate)  # the do-nothing defaults


class Block(nn.Module):
    """Pre-norm transformer block: attention -> reducer -> MLP through the dispatcher -> adapter.

    The three slots (:mod:`video_st.models.slots`) default to doing nothing, so the block reads the same for every
    method. ``forward`` is a pure function of its inputs (no state is mutated), so gradient checkpointing may
    recompute it: ``(x, state) -> (x, state)`` where ``state`` (:class:`TokenState`) carries the original-grid
    ids of the tokens, the previous Dense Adapters' states, token sizes or key masks, and the loss records.
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
        num_prefix: int = 1,
        slots: BlockSlots | None = None,
    ) -> None:
        super().__init__()
        slots = slots or BlockSlots()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim=dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
                              qkv_update=slots.qkv)
        self.ls1 = LayerScale(dim=dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.reducer = slots.reducer or Reducer()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), drop=proj_drop)
        self.dispatcher = slots.dispatcher or Dispatcher()
        self.ls2 = LayerScale(dim=dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path)
        self.adapter = slots.adapter or Adapter()
        self.num_prefix = num_prefix
        # the attention guide (a training objective, set by VideoViT.set_attention_guide; not part of the model's
        # spec): its weight, and the row it guides when the reducer asks for none ("cls", or "mean" without [CLS])
        self.guide_weight = 0.0
        self.guide_rows = "cls"

    def forward(self, x: torch.Tensor, state: TokenState) -> tuple[torch.Tensor, TokenState]:
        state = self.adapter.enter(x, state)
        guided = self.guide_weight > 0 and state.guide is not None
        # a reducer's own scoring row is the one to guide: it is what its top-k ranks by
        rows = self.reducer.rows or (self.guide_rows if guided else None)
        attn_out, info = self.attn(self.norm1(x), key_bias=state.attention_bias(self.num_prefix),
                                   rows=rows, keys=self.reducer.keys, head_norms=self.reducer.head_norms)
        if guided:
            state = state.record(guide_record(info.rows, state, num_prefix=self.num_prefix, weight=self.guide_weight))
        x = x + self.drop_path1(self.ls1(attn_out))
        x, state = self.reducer(x, state, info)
        mlp_out, state = self.dispatcher(x, self.norm2, self.mlp, state)
        mlp_out, beside, state = self.adapter(x, mlp_out, state)
        x = x + self.drop_path2(self.ls2(mlp_out))
        return (x if beside is None else x + beside), state


@dataclass
class BlockSlots:
    """What a method puts into one block; None: the slot's do-nothing default."""

    reducer: Reducer | None = None
    dispatcher: Dispatcher | None = None
    adapter: Adapter | None = None
    qkv: QKVUpdate | None = None


@dataclass
class ModelSlots:
    """What a method puts into the model: one :class:`BlockSlots` per layer, prompts, the weight of the
    self-distillation from a full-token pass (DyT; 0: none) and the head's init std (None: the backbone's 0.02;
    DyT's recipe: 0.01)."""

    blocks: list[BlockSlots] = field(default_factory=list)
    prompts: Prompts | None = None
    distill_weight: float = 0.0
    head_init_std: float | None = None


class VideoViT(nn.Module):
    """ViT over video tubes (or images with ``num_frames=1, tubelet_size=1``): the backbone geometry plus the
    slot modules of a method (:class:`ModelSlots`, built by :mod:`video_st.models.methods`).

    Position embeddings: ``pos_embed="learned"`` is a spatial table laid out as timm's image ViT (the [CLS]
    position first) shared over time, plus a temporal table that starts at zero, so an inflated image model
    starts as the image model applied per tubelet; ``"sincos"`` is VideoMAE's fixed 1-D table over all tokens,
    built for ``pos_embed_grid`` (the (t, h, w) token grid of pre-training; default: the model's own grid) and
    resampled trilinearly to the model's grid, so a 16-frame VideoMAE checkpoint run on 8 frames sees the
    positions it learned with rather than the first half of its table.

    ``class_token=False`` with ``global_pool="avg"`` runs exactly as VideoMAE does (mean of the tokens, then
    ``fc_norm``). Without a [CLS] token the sparsifier scores tokens by the attention of the mean query, the
    closest stand-in for a [CLS] query that still costs one query against all keys.

    ``spec`` (a :class:`~video_st.models.spec.ModelSpec`) is set by the factory that built the model: what a
    file needs to rebuild exactly this model.
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
        slots: ModelSlots | None = None,
    ) -> None:
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if pos_embed not in ("learned", "sincos"):
            raise ValueError(f"pos_embed must be 'learned' or 'sincos', got {pos_embed!r}")
        slots = slots or ModelSlots()
        block_slots = slots.blocks or [BlockSlots() for _ in range(depth)]
        if len(block_slots) != depth:
            raise ValueError(f"got slots for {len(block_slots)} blocks, the model has depth={depth}")

        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.global_pool = global_pool
        self.num_prefix_tokens = 1 if class_token else 0
        self.distill_weight = slots.distill_weight
        self.head_init_std = slots.head_init_std
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
        self.prompts = slots.prompts or Prompts()
        num_prefix = self.num_prefix_tokens + self.prompts.num_prompts

        # Stochastic depth rising linearly over depth (plain floats: the model can be built on the meta device).
        dpr = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, norm_eps=norm_eps,
                  init_values=init_values, proj_drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[i],
                  num_prefix=num_prefix, slots=block_slots[i])
            for i in range(depth)
        )

        use_fc_norm = global_pool == "avg" if fc_norm is None else fc_norm
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(embed_dim, eps=norm_eps)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=head_norm_eps or norm_eps) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    # -- construction helpers -------------------------------------------------------------------------------
    def _init_weights(self) -> None:
        # The backbone's modules only: every slot module initialised itself (its reset_parameters), e.g. the
        # adapters' zero up-projections that make a fresh model equal its backbone.
        slot_prefixes = tuple(f"{name}." for name in self.slot_module_names())
        for name, module in self.named_modules():
            if f"{name}.".startswith(slot_prefixes):
                continue
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
        if self.head_init_std is not None and isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=self.head_init_std)

    def slot_module_names(self) -> list[str]:
        """Names of the method's modules (the non-default slots): what is not the backbone."""
        names = []
        for name, module in self.named_modules():
            if is_slot(module) and type(module) not in DEFAULT_SLOTS and not any(name.startswith(f"{n}.") for n in names):
                names.append(name)
        return names

    @property
    def reducing_blocks(self) -> list[Block]:
        return [b for b in self.blocks if b.reducer.reduces]

    def set_keep_rate(self, keep_rate: float | Sequence[float]) -> None:
        """Set the keep rate of every sparsification stage (one float, or one per stage); a schedule calls this."""
        blocks = self.reducing_blocks
        for block, rate in zip(blocks, expand_keep_rates(keep_rate, len(blocks)), strict=True):
            block.reducer.keep_rate = rate

    def set_attention_guide(self, weight: float, layers: Sequence[int] = ()) -> None:
        """Train the scoring rows of ``layers`` (1-based; empty: every layer) towards the tokens given as
        ``forward(..., guide=)`` with loss weight ``weight`` (models/guide.py); ``weight=0`` turns it off."""
        depth = len(self.blocks)
        bad = [layer for layer in layers if not 1 <= layer <= depth]
        if bad:
            raise ValueError(f"attention guide layers {bad}: the model has layers 1 to {depth}")
        for i, block in enumerate(self.blocks, start=1):
            block.guide_weight = weight if not layers or i in layers else 0.0
            block.guide_rows = "cls" if self.num_prefix_tokens else "mean"

    @property
    def keep_rates(self) -> tuple[float, ...]:
        return tuple(b.reducer.keep_rate for b in self.reducing_blocks)

    @property
    def input_dependent(self) -> bool:
        """Whether the computed tokens (hence FLOPs and time) depend on the input: DyT and AS-ViT."""
        return any(isinstance(m, Slot) and m.input_dependent for m in self.modules())

    def token_ratio(self) -> float | None:
        """Tokens the blocks process relative to dense (what a keep-rate schedule buys), asked of the reducers;
        None where it depends on the input (DyT, AS-ViT: their measured rates are in the loss terms' stats)."""
        if self.input_dependent:
            return None
        dense = n = self.patch_embed.num_patches
        total = 0
        for block in self.blocks:
            total += n
            n = block.reducer.tokens_after(n)
        return total / (dense * len(self.blocks))

    def stage_names(self) -> list[str]:
        """A label per entry of ``forward_features(..., return_token_ids=True)[1]``."""
        return [f"layer {i}{slot.stage_label}" for i, block in enumerate(self.blocks, start=1)
                for slot in (block.reducer, block.dispatcher) if slot.stage_label is not None]

    def set_dispatch_mode(self, mode: str | None) -> None:
        """None: soft decisions in training, real skipping/pruning in eval; "mask": the hard decisions applied as
        masks over all tokens (the reference the skipping paths are tested against)."""
        for module in self.modules():
            if isinstance(module, Slot):
                module.set_mode(mode)

    def merge_lora(self) -> None:
        """Fold every LoRA update into the frozen weights (for inference and export); a no-op without LoRA."""
        for block in self.blocks:
            block.attn.merge_update()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed_spatial", "pos_embed_temporal", "prompts.weight"}

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

    def _grid_mask(self, name: str, mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
        """A (B, T', H', W') or (B, N) token mask as (B, N) bool on x's device; a wrong shape is a ValueError."""
        if mask is None:
            return None
        batch, num_tokens = x.shape[0], x.shape[1] - self.num_prefix_tokens
        if mask.shape[0] != batch or mask[0].numel() != num_tokens:
            raise ValueError(f"{name}: {tuple(mask.shape)} for {batch} clips of {num_tokens} tokens "
                             f"(grid {tuple(self.patch_embed.grid_size)})")
        return mask.reshape(batch, num_tokens).to(device=x.device, dtype=torch.bool)

    def _features(self, x: torch.Tensor, full_tokens: bool = False, prefer: torch.Tensor | None = None,
                  guide: torch.Tensor | None = None) -> tuple[torch.Tensor, TokenState]:
        x = self._pos_embed(self.patch_embed(x))
        batch, num_tokens = x.shape[0], x.shape[1] - self.num_prefix_tokens
        state = TokenState(ids=torch.arange(num_tokens, device=x.device).expand(batch, -1), full_tokens=full_tokens,
                           prefer=self._grid_mask("prefer", prefer, x), guide=self._grid_mask("guide", guide, x))
        for layer, block in enumerate(self.blocks):
            x = self.prompts.insert(x, layer, self.num_prefix_tokens)
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x, state = checkpoint(block, x, state, use_reentrant=False)
            else:
                x, state = block(x, state)
        x = self.prompts.remove(x, self.num_prefix_tokens)
        return self.norm(x), state

    def forward_features(
        self, x: torch.Tensor, return_token_ids: bool = False, full_tokens: bool = False,
        prefer: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, C, T, H, W) -> (B, N', D) final tokens.

        With ``return_token_ids=True`` also returns, per stage (see :meth:`stage_names`), a (B, n_s) long tensor
        with the original-grid id ``t * H' * W' + h * W' + w`` of every token that stage kept (-1: a fused token
        or padding, or a token the dispatcher sent past the MLP). ``full_tokens=True`` runs DyT's full-token pass.
        ``prefer``: bool (B, T', H', W') or (B, N) over the grid, tokens the top-k steps keep before any other
        (the ground-truth object, for the selection oracle); the other reducers ignore it.
        """
        x, state = self._features(x, full_tokens, prefer)
        return (x, list(state.kept)) if return_token_ids else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, self.num_prefix_tokens :].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor, return_terms: bool = False, prefer: torch.Tensor | None = None,
                guide: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, LossTerms]:
        """Logits; with ``return_terms=True`` also the method's :class:`LossTerms` for this pass (the training
        loop adds ``terms.with_task(criterion)``; tools read ``terms.stats``). ``prefer``: as in
        :meth:`forward_features` (training with data.object_first). ``guide``: the object's tokens, shaped as
        ``prefer``, for the attention guide's loss term (:meth:`set_attention_guide`; optim.attention_guide)."""
        feats, state = self._features(x, prefer=prefer, guide=guide)
        logits = self.forward_head(feats)
        if not return_terms:
            return logits
        teacher = None
        if self.training and self.distill_weight > 0:  # DyT's self-distillation: the full-token pass as teacher
            teacher = self.forward_head(self._features(x, full_tokens=True)[0])
        return logits, collect_terms(state.aux, logits, teacher, self.distill_weight)
