"""The slots of a :class:`~video_st.models.vit.Block` and of the model, each one small interface with a
do-nothing default.

A method is nothing but what it puts into these slots (:mod:`video_st.models.methods` holds the table), so the
backbone never asks which method it runs:

- :class:`Reducer`, after the attention residual: ``(x, state, info) -> (x, state)``; may shrink the token set.
  It tells the attention what it needs to score tokens (``rows``: the [CLS] or mean query's attention row;
  ``keys``: the mean keys; ``head_norms``: each head's output norm per token) and how many tokens it leaves
  (``tokens_after``), so token counts are asked of it, never re-derived elsewhere.
- :class:`Dispatcher`, around the MLP: ``(x, norm, mlp, state) -> (mlp_out, state)``; may run the MLP (and the
  norm before it) on fewer tokens.
- :class:`Adapter`, beside or after the FFN: ``(x, mlp_out, state) -> (mlp_out, beside, state)``: it may rewrite
  the MLP's output (a sequential adapter) and/or return a branch added beside the FFN (``beside``; None: none);
  ``enter(x, state) -> state`` first sees the block's input (the published Dense Adapter's first stage).
- :class:`Prompts`, model-wide: prefix tokens inserted before each layer and removed before the head.

The LoRA update of the attention's projections is a slot of :class:`~video_st.models.layers.Attention` itself
(``layers.QKVUpdate``). Every slot module initialises itself (``reset_parameters``); the backbone's own
initialisation never touches a slot (:func:`is_slot`).

``input_dependent`` marks slots whose computed tokens depend on the input (DyT's dispatcher, AS-ViT's pruner);
``set_mode("mask")`` makes them apply their hard inference decisions as masks over all tokens (the reference their
skipping paths are tested against).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .layers import QKVUpdate

MODES = (None, "mask")  # set_mode: None (soft in training, real skipping in eval) | "mask" (hard decisions as masks)

if TYPE_CHECKING:
    from .layers import AttnInfo
    from .sparsify import TokenState


class Slot(nn.Module):
    """Common base: what the model asks every slot."""

    input_dependent = False
    stage_label: str | None = None  # a stage of forward_features' kept ids, e.g. "" or " MLP"; None: no stage

    def set_mode(self, mode: str | None) -> None:  # noqa: ARG002 - only input-dependent slots have modes
        return None


class Reducer(Slot):
    """Token reduction after the attention residual; the default keeps every token."""

    rows: str | None = None  # "cls" | "mean": the attention row this reducer scores tokens with
    keys: bool = False  # whether it needs the attention's mean keys (ToMe)
    head_norms: bool = False  # whether it needs each head's output norm per token (AS-ViT)
    reduces = False  # whether it has a keep rate (set_keep_rate addresses it)

    def forward(self, x: torch.Tensor, state: TokenState, info: AttnInfo) -> tuple[torch.Tensor, TokenState]:
        return x, state

    def tokens_after(self, n: int) -> int:
        """Non-prefix tokens left after this step when ``n`` come in (for input-independent reducers)."""
        return n


class Dispatcher(Slot):
    """What runs the block's MLP (``mlp(norm(x))``: the pre-norm is per token, so a dispatcher that runs the MLP
    on some tokens normalises only those); the default runs it on every token."""

    def forward(self, x: torch.Tensor, norm: nn.Module, mlp: nn.Module,
                state: TokenState) -> tuple[torch.Tensor, TokenState]:
        return mlp(norm(x)), state


class Adapter(Slot):
    """The adapter slot; the default adds nothing. ``enter`` sees the block's input before its attention (the
    published Dense Adapter's first stage sums from it); the default passes the state through."""

    def enter(self, x: torch.Tensor, state: TokenState) -> TokenState:  # noqa: ARG002 - a hook with a no-op default
        return state

    def forward(self, x: torch.Tensor, mlp_out: torch.Tensor,
                state: TokenState) -> tuple[torch.Tensor, torch.Tensor | None, TokenState]:
        return mlp_out, None, state


class Prompts(Slot):
    """Model-wide prefix tokens after [CLS]; the default has none."""

    num_prompts = 0

    def insert(self, x: torch.Tensor, layer: int, num_class_tokens: int) -> torch.Tensor:
        return x

    def remove(self, x: torch.Tensor, num_class_tokens: int) -> torch.Tensor:
        return x


def is_slot(module: nn.Module) -> bool:
    return isinstance(module, (Slot, QKVUpdate))
