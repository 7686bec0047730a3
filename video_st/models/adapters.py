"""Adapters for the adapter slot (:class:`~video_st.models.slots.Adapter`), and adapter-only state dicts:
parallel (AdaptFormer), sequential (Houlsby), MoE (DyT), and Sparse-Tuning's Dense Adapter in two forms, the
paper's (:class:`DenseAdapter`) and the authors' published code's (:class:`PublishedDenseAdapter`).

Every adapter's up-projection starts at zero, so a freshly built model computes exactly what its backbone does
and fine-tuning starts from the pre-trained function (one exception, as published: the published Dense
Adapter's first stage re-adds the embedded tokens, see :class:`PublishedDenseAdapter`). Each class keeps its
arithmetic in a method of its own (``delta`` / ``adapt``) and its place in the block in ``forward``, the slot
interface.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .slots import Adapter


class ParallelAdapter(Adapter):
    """AdaptFormer-style bottleneck beside the FFN: ``scale * up(dropout(relu(down(x))))`` on the FFN's input
    (DyT's published adapter has dropout 0.1 there)."""

    def __init__(self, *, dim: int, bottleneck: int = 64, scale: float = 0.1, dropout: float = 0.0) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim)
        self.scale = scale
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.dropout(self.act(self.down(x))))

    def forward(self, x, mlp_out, state):
        return mlp_out, self.delta(x), state


class SequentialAdapter(ParallelAdapter):
    """Houlsby-style bottleneck in series with a sub-layer: ``h + scale * up(relu(down(h)))`` on the FFN's
    output, before the residual add (Houlsby et al. 2019 place one after each sub-layer; the ViT PEFT
    comparisons - VPT, NOAH, Sparse-Tuning's Tables 1 and 2 - count one per block, after the FFN, as here)."""

    def __init__(self, *, dim: int, bottleneck: int = 64, scale: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__(dim=dim, bottleneck=bottleneck, scale=scale, dropout=dropout)

    def forward(self, x, mlp_out, state):
        return mlp_out + self.delta(mlp_out), None, state


class MoEAdapter(Adapter):
    """Dynamic Tuning's mixture-of-experts adapter: ``experts`` bottleneck adapters mixed by a learned router.

    The router weighs the experts per sample (from the mean of the sample's tokens) and the experts' WEIGHTS are
    mixed, not their outputs: each sample then runs one merged adapter, so the experts cost parameters but no
    per-token compute, in training and inference alike (:meth:`merged` returns that adapter). The published
    DyT code has no MoE adapter; this follows the paper's description. The router starts at zero (uniform mix).
    """

    def __init__(self, *, dim: int, bottleneck: int = 64, experts: int = 4, scale: float = 0.1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if experts < 1:
            raise ValueError(f"an MoE adapter needs at least one expert, got experts={experts}")
        self.down_weight = nn.Parameter(torch.empty(experts, bottleneck, dim))
        self.down_bias = nn.Parameter(torch.empty(experts, bottleneck))
        self.up_weight = nn.Parameter(torch.empty(experts, dim, bottleneck))
        self.up_bias = nn.Parameter(torch.empty(experts, dim))
        self.router = nn.Linear(dim, experts)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)  # in the bottleneck, as the parallel adapter's
        self.scale = scale
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for weight in self.down_weight:
            nn.init.kaiming_uniform_(weight, a=5**0.5)
        for p in (self.down_bias, self.up_weight, self.up_bias, self.router.weight, self.router.bias):
            nn.init.zeros_(p)

    def merged(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample adapter (down W (B, r, d), down b (B, r), up W (B, d, r), up b (B, d)) for tokens x."""
        gate = self.router(x.mean(dim=1)).softmax(dim=-1)  # (B, E)
        return (torch.einsum("be,erd->brd", gate, self.down_weight), gate @ self.down_bias,
                torch.einsum("be,edr->bdr", gate, self.up_weight), gate @ self.up_bias)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        down_w, down_b, up_w, up_b = self.merged(x)
        h = self.dropout(self.act(torch.einsum("bnd,brd->bnr", x, down_w) + down_b[:, None]))
        return self.scale * (torch.einsum("bnr,bdr->bnd", h, up_w) + up_b[:, None])

    def forward(self, x, mlp_out, state):
        return mlp_out, self.delta(x), state


AdapterState = tuple[torch.Tensor, torch.Tensor]  # (bottleneck activations + ones channel, matching up-projection)


class DenseAdapter(Adapter):
    """Dense Adapter (Sparse-Tuning, Sec. 3.2, Fig. 4 (b)): project, then fuse, then up-project.

    Input 0 is the current layer's features (the residual stream after attention, the FFN's input before its
    LayerNorm); inputs 1.. are the outputs ``A_j = s_j * up_j(h_j)`` of the Dense Adapters of the previous
    layers, most recent first. Each input has its own down-projection into one shared bottleneck space; the
    projections are summed there, pass a ReLU and one up-projection. With three inputs at most, a ViT-B with
    bottleneck 32 has 1.12 M adapter parameters (the paper reports 1.10 M); layer 1 has one input and layer 2 two
    ("one to three down-projection layers according to the position").

    Evaluation order (exact, not an approximation): ``down_k(A_j) = [h_j, 1] @ (W_k @ s_j [U_j, b_j])^T + b_k``.
    Later layers therefore receive each earlier adapter as its bottleneck activations with a ones channel
    (r + 1 values per token) and its scaled, bias-augmented up-projection, never as the d-wide output. Autograd
    then keeps r + 1 instead of d values per token for each dense connection (23x less for ViT-B) and the extra
    down-projections cost r(r+1) instead of d*r multiply-adds per token, with the same outputs and gradients.
    Token fusion is linear and the ones channel carries the fusion weights' sum, so this stays exact under
    Token Sparsification in both fuse modes.

    In the block, the earlier adapters' states travel in ``state.history`` (oldest first); ``history_len`` is
    how many of them later layers still need (the model's ``dense_inputs - 1``).
    """

    def __init__(
        self, *, dim: int, bottleneck: int = 32, num_inputs: int = 1, scale: float = 1.0, dropout: float = 0.0,
        history_len: int = 0,
    ) -> None:
        super().__init__()
        if num_inputs < 1:
            raise ValueError(f"a Dense Adapter needs at least one input, got num_inputs={num_inputs}")
        self.history_len = history_len
        self.downs = nn.ModuleList(nn.Linear(dim, bottleneck) for _ in range(num_inputs))
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim)
        self.scale = scale
        self.reset_parameters()

    @property
    def num_inputs(self) -> int:
        return len(self.downs)

    def reset_parameters(self) -> None:
        for down in self.downs:
            nn.init.kaiming_uniform_(down.weight, a=5**0.5)
            nn.init.zeros_(down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def augmented_up(self) -> torch.Tensor:
        """``s * [U, b]``: (dim, r + 1), so that ``A = [h, 1] @ augmented_up().T``."""
        return self.scale * torch.cat([self.up.weight, self.up.bias[:, None]], dim=1)

    def forward(self, x, mlp_out, state):
        previous = tuple(reversed(state.history))[: self.num_inputs - 1]
        adapted, mine = self.adapt(x, previous)
        history = (*state.history, mine)[-self.history_len :] if self.history_len else ()
        return mlp_out, adapted, state.with_history(history)

    def adapt(self, x: torch.Tensor, previous: Sequence[AdapterState] = ()) -> tuple[torch.Tensor, AdapterState]:
        """``x``: (B, N, dim); ``previous``: states of earlier Dense Adapters, most recent first.

        Returns this adapter's output (B, N, dim) and its state for later layers."""
        if len(previous) != self.num_inputs - 1:
            raise ValueError(f"this Dense Adapter takes {self.num_inputs - 1} earlier adapters, got {len(previous)}")
        fused = self.downs[0](x)
        for down, (h_aug, up_aug) in zip(self.downs[1:], previous, strict=True):
            fused = fused + nn.functional.linear(h_aug, down.weight @ up_aug, down.bias)
        h = self.dropout(self.act(fused))
        h_aug = torch.cat([h, h.new_ones(h.shape[:-1] + (1,))], dim=-1)
        return self.scale * self.up(h), (h_aug, self.augmented_up())


class PublishedDenseAdapter(Adapter):
    """The Dense Adapter of the authors' published code (liuting20/Sparse-Tuning: the ``Adapter`` of
    ``models/adapter.py`` and the stage sums of ``VisionTransformer.forward_features`` in ``models/vit_image.py``),
    the option ``dense_adapter_form="published"`` beside the paper's :class:`DenseAdapter`.

    In each block, beside the FFN on its input (as the paper's form and the published ``ffn_option="parallel"``),
    per token (ViT-B widths; the published names in brackets; every bias starts at zero, the weights of ``down``,
    ``inner_down`` and ``fuse`` as ``nn.Linear``'s, of ``inner_up`` and ``up`` at zero)::

        h = relu(down(x))              768 -> 64  [down1]
        s = inner_down(h)              64 -> 32   [down2], no activation
        u = inner_up(s)                32 -> 64   [up1]
        f = fuse(cat(s, u)) + h        96 -> 64   [down3], then the skip from h
        a = scale * up(f)              64 -> 768  [up2]; the published has no scale (1.0, the methods' default)

    ``bottleneck`` is the 64, ``inner`` the 32 (options ``published_bottleneck`` and ``published_inner``; the
    published widths are fixed, not scaled to the backbone, as the paper form's bottleneck 32 is not).

    The dense connection is across layers, not inside the adapter: the outputs ``a`` of the layers of one stage
    (from one sparsification layer up to the next; the published hard-codes layers 1-3, 4-6, 7-9, 10-12 of 12) are
    summed, and the sum is added to the residual stream once more after the stage's last layer, beside each
    output's own add in its block. As published, two irregular terms:

    - the first stage (the layers before the first sparsification) starts its sum from the block input of its
      first layer, the embedded tokens (``takes_input``; the published ``adapter_paraller_0 = x``): its end adds
      the embeddings once more, so a fresh model is its backbone plus that one term, not exactly its backbone;
    - the last layer's output is not in its stage's sum (``counted=False``; the published collects layers 10 and
      11 of 12 and adds them after layer 12).

    The running sum travels in ``state.history`` as ``((sum, None),)`` (the one tensor aligned with the tokens;
    any token step realigns it, though none falls inside a stage: stages begin at the sparsification layers).
    """

    def __init__(self, *, dim: int, bottleneck: int = 64, inner: int = 32, scale: float = 1.0,
                 takes_input: bool = False, counted: bool = True, closes: bool = False) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.ReLU()
        self.inner_down = nn.Linear(bottleneck, inner)
        self.inner_up = nn.Linear(inner, bottleneck)
        self.fuse = nn.Linear(inner + bottleneck, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.scale = scale
        self.takes_input, self.counted, self.closes = takes_input, counted, closes
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in (self.down, self.inner_down, self.fuse):
            nn.init.kaiming_uniform_(layer.weight, a=5**0.5)
        for layer in (self.inner_up, self.up):
            nn.init.zeros_(layer.weight)
        for layer in (self.down, self.inner_down, self.inner_up, self.fuse, self.up):
            nn.init.zeros_(layer.bias)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.down(x))
        s = self.inner_down(h)
        return self.scale * self.up(self.fuse(torch.cat([s, self.inner_up(s)], dim=-1)) + h)

    def enter(self, x, state):
        return state.with_history(((x, None),)) if self.takes_input else state

    def forward(self, x, mlp_out, state):
        adapted = self.delta(x)
        total = state.history[0][0] if state.history else None  # the stage's sum so far
        if self.counted:
            total = adapted if total is None else total + adapted
        if self.closes:  # the stage's end: its sum once more, beside this layer's own output
            return mlp_out, adapted if total is None else adapted + total, state.with_history(())
        return mlp_out, adapted, state.with_history(() if total is None else ((total, None),))


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the parameters that require grad (head + adapters for PEFT methods): the few-MB file to share."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load an adapter-only state dict on top of a model that already holds its backbone weights.

    Every key must exist in the model with the same shape, and every trainable parameter of the model must be in
    the file: a partial adapter file would silently leave zero-initialised adapters behind.
    """
    params = dict(model.named_parameters())
    unknown = sorted(set(state_dict) - set(params))
    if unknown:
        raise KeyError(f"adapter state dict has keys the model lacks: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in state_dict)
    if missing:
        raise KeyError(f"adapter state dict misses trainable parameters: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    with torch.no_grad():
        for name, value in state_dict.items():
            if params[name].shape != value.shape:
                raise ValueError(f"{name}: shape {tuple(value.shape)} in file, {tuple(params[name].shape)} in model")
            params[name].copy_(value)
