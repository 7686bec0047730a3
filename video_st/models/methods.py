"""THE method table: one record per method, holding everything the project knows about it.

A record says what the method puts into each slot (:mod:`video_st.models.slots`), its options with their paper
defaults (an option not listed here cannot be given to the method: it would be silently ignored), what it trains,
which loss terms its forward returns, and whether it freezes the backbone (then it needs pre-trained weights).
Nothing else in the project branches on method names: the backbone reads slots, the trainer adds whatever loss
terms the forward returns, files record the method by name and its resolved options (:mod:`.spec`).

Adding a method is one record here plus its modules (docs/architecture.md, "Adding a method").

Trainable sets are rules over the model's structure, not name patterns: ``"all"`` (full fine-tuning),
``"head"``, ``"method"`` (every parameter of the method's slot modules: adapters, dispatchers, thresholds, LoRA,
prompts), ``"temporal_positions"`` (image checkpoints have no temporal table: it starts at zero and a frozen one
would leave the model blind to frame order beyond one tubelet; 4 x 768 values for ViT-B) and ``"biases"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .adapters import DenseAdapter, MoEAdapter, ParallelAdapter, PublishedDenseAdapter, SequentialAdapter
from .dispatch import TokenDispatcher
from .pruning import FlopsBudget, ThresholdPruner
from .layers import LoRAQV
from .prompts import DeepPrompts
from .slots import Adapter, Reducer
from .sparsify import FUSE_MODES, SCORE_QUERIES, ToMeMerge, TopKFuse, expand_keep_rates
from .vit import BlockSlots, ModelSlots

PAPER_SPARSE_LAYERS = (4, 7, 10)  # 1-based, of 12 layers (Sparse-Tuning, EViT, AS-ViT in ViT-B)
# The Dense Adapter's two forms: the paper's (adapters.DenseAdapter) and the authors' published code's
# (adapters.PublishedDenseAdapter). Each form's widths: FORM_OPTIONS; the other form's are an error to change.
DENSE_ADAPTER_FORMS = ("paper", "published")
FORM_OPTIONS = {"paper": ("adapter_bottleneck", "dense_inputs"),
                "published": ("published_bottleneck", "published_inner")}
TRAINABLE_RULES = ("all", "head", "method", "temporal_positions", "biases")


@dataclass(frozen=True)
class SlotContext:
    """The backbone facts slot modules are built from."""

    dim: int
    depth: int
    class_tokens: int  # 1 with a [CLS] token, else 0
    num_tokens: int  # spatio-temporal tokens of the grid
    patch_volume: int  # in_chans x tubelet x patch x patch (VPT's prompt init; the tube embedding's FLOPs per token)
    global_pool: str
    mlp_hidden: int  # the MLP's hidden width (AS-ViT's FLOPs budget)


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    trains: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)  # option -> paper default
    adapter: str | None = None  # "parallel" | "sequential" | "dense" | "moe"; the "adapter" option overrides it
    reducer: str | None = None  # "topk" | "tome" | "threshold", at options["sparse_layers"]
    dispatcher: bool = False  # DyT's token dispatcher in every layer
    lora: bool = False  # LoRA on the attention's query and value
    prompts: bool = False  # VPT-Deep
    losses: tuple[str, ...] = ()  # names of the loss terms its training forward returns
    frozen_backbone: bool = True

    def resolve(self, given: Mapping[str, Any], *, depth: int) -> dict[str, Any]:
        """The complete options: paper defaults <- ``given``; an option the method does not take is an error."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            owners = sorted(m.name for m in METHODS.values() if unknown[0] in m.options)
            where = f"; it is an option of {', '.join(owners)}" if owners else ""
            takes = ", ".join(sorted(self.options)) or "none"
            raise ValueError(f"method {self.name!r} has no option {unknown[0]!r} (its options: {takes}){where}")
        options = {**self.options, **given}
        if "sparse_layers" in options:
            layers = options["sparse_layers"]
            layers = default_sparse_layers(depth) if layers is None else tuple(sorted({int(i) for i in layers}))
            if not layers or any(not 1 <= i <= depth for i in layers):
                raise ValueError(f"sparse_layers are 1-based layer numbers in 1..{depth}, got {options['sparse_layers']}")
            options["sparse_layers"] = layers
        if "keep_rate" in options:
            rate = options["keep_rate"]
            options["keep_rate"] = float(rate) if isinstance(rate, (int, float)) else tuple(float(r) for r in rate)
            expand_keep_rates(options["keep_rate"], len(options["sparse_layers"]))  # checks range and count
        if options.get("fuse", "mean") not in FUSE_MODES:
            raise ValueError(f"fuse must be one of {FUSE_MODES}, got {options['fuse']!r}")
        if options.get("score", "cls") not in SCORE_QUERIES:
            raise ValueError(f"score must be one of {SCORE_QUERIES}, got {options['score']!r}")
        if "adapter" in options and options["adapter"] not in ADAPTER_CHOICES.get(self.name, ()):
            raise ValueError(f"method {self.name!r}: adapter must be one of {ADAPTER_CHOICES[self.name]}, "
                             f"got {options['adapter']!r}")
        for key in ("lora_rank", "num_prompts", "adapter_bottleneck", "adapter_experts", "dense_inputs",
                    "published_bottleneck", "published_inner"):
            if key in options and int(options[key]) < 1:
                raise ValueError(f"{key} must be >= 1, got {options[key]}")
        if "dispatch_target" in options and not 0.0 < options["dispatch_target"] <= 1.0:
            raise ValueError(f"dispatch_target must be in (0, 1], got {options['dispatch_target']}")
        if "adapter_dropout" in options and not 0.0 <= options["adapter_dropout"] < 1.0:
            raise ValueError(f"adapter_dropout must be in [0, 1), got {options['adapter_dropout']}")
        if options.get("head_init_std") is not None and not options["head_init_std"] > 0:
            raise ValueError(f"head_init_std must be > 0 (or null: the backbone's 0.02), got {options['head_init_std']}")
        if "calibrate" in options and not isinstance(options["calibrate"], bool):
            raise ValueError(f"calibrate must be true or false, got {options['calibrate']!r}")
        if "dense_adapter_form" in options:
            self._check_dense_form(options)
        if self.reducer == "threshold":
            options.update(_threshold_options(options))
        return options

    def _check_dense_form(self, options: Mapping[str, Any]) -> None:
        """A known form, and none of the other form's widths changed (they would be silently ignored)."""
        form = options["dense_adapter_form"]
        if form not in DENSE_ADAPTER_FORMS:
            raise ValueError(f"dense_adapter_form must be one of {DENSE_ADAPTER_FORMS}, got {form!r}")
        other = next(f for f in DENSE_ADAPTER_FORMS if f != form)
        changed = [k for k in FORM_OPTIONS[other] if options[k] != self.options[k]]
        if changed:
            raise ValueError(f"{changed[0]}={options[changed[0]]} sets the {other} form's Dense Adapter, but "
                             f"dense_adapter_form={form!r} (its widths: {', '.join(FORM_OPTIONS[form])})")

    def build(self, ctx: SlotContext, options: Mapping[str, Any]) -> ModelSlots:
        """The slot modules of this method for a backbone (``options`` resolved)."""
        o = options
        prompts = (DeepPrompts(depth=ctx.depth, num_prompts=o["num_prompts"], dim=ctx.dim,
                               patch_volume=ctx.patch_volume) if self.prompts else None)
        prefix = ctx.class_tokens + (prompts.num_prompts if prompts else 0)
        layers = o.get("sparse_layers", ())
        rates = expand_keep_rates(o["keep_rate"], len(layers)) if self.reducer else ()
        stage = {layer: s for s, layer in enumerate(layers, start=1)}
        if self.reducer == "threshold" and ctx.global_pool != "token":
            # Pruned samples keep different token counts; an average over a padded set would count the padding.
            raise ValueError(f"method {self.name!r} needs a [CLS] head: global_pool='token'")
        budget = (FlopsBudget(dim=ctx.dim, hidden=ctx.mlp_hidden, depth=ctx.depth, layers=tuple(layers),
                              tokens=ctx.num_tokens + prefix, prefix=prefix,
                              patch=ctx.num_tokens * ctx.dim * ctx.patch_volume / 1e9)
                  if self.reducer == "threshold" else None)
        blocks = []
        for i in range(ctx.depth):
            reducer = None
            if (i + 1) in stage:
                reducer = _reducer(self.reducer, ctx, o, prefix=prefix, stage=stage[i + 1],
                                   keep_rate=rates[stage[i + 1] - 1], budget=budget)
            dispatcher = (TokenDispatcher(dim=ctx.dim, num_prefix=prefix, temperature=o["dispatch_temperature"],
                                          target=o["dispatch_target"], weight=o["dispatch_weight"])
                          if self.dispatcher else None)
            blocks.append(BlockSlots(reducer=reducer, dispatcher=dispatcher, adapter=self._adapter(ctx, o, i),
                                     qkv=LoRAQV(dim=ctx.dim, rank=o["lora_rank"]) if self.lora else None))
        return ModelSlots(blocks=blocks, prompts=prompts, distill_weight=float(o.get("distill_weight", 0.0)),
                          head_init_std=o.get("head_init_std"))

    def _adapter(self, ctx: SlotContext, o: Mapping[str, Any], layer: int) -> Adapter | None:
        kind = o.get("adapter", self.adapter)
        if kind is None:
            return None
        size = {"dim": ctx.dim, "bottleneck": o["adapter_bottleneck"], "scale": o["adapter_scale"]}
        dropout = {"dropout": o["adapter_dropout"]} if "adapter_dropout" in o else {}
        if kind == "parallel":
            return ParallelAdapter(**size, **dropout)
        if kind == "sequential":
            return SequentialAdapter(**size, **dropout)
        if kind == "moe":
            return MoEAdapter(**size, experts=o["adapter_experts"], **dropout)
        if o.get("dense_adapter_form", "paper") == "published":
            return _published_dense_adapter(ctx, o, layer)
        history = o["dense_inputs"] - 1  # layer i (0-based) takes min(i, history) earlier adapters
        return DenseAdapter(**size, num_inputs=min(layer, history) + 1, history_len=history)


def _published_dense_adapter(ctx: SlotContext, o: Mapping[str, Any], layer: int) -> PublishedDenseAdapter:
    """Layer ``layer`` (0-based)'s adapter of the published form. Stages begin at the sparsification layers (the
    method's ``sparse_layers``; a method without them, dense_adapter: the paper's 4/7/10 scaled to the depth, the
    published code's stages whatever its keep rates); the first stage is the layers before the first one."""
    sparse = {i - 1 for i in (o.get("sparse_layers") or default_sparse_layers(ctx.depth))}  # 0-based
    last = ctx.depth - 1
    return PublishedDenseAdapter(dim=ctx.dim, bottleneck=o["published_bottleneck"], inner=o["published_inner"],
                                 scale=o["adapter_scale"], takes_input=layer == 0 and 0 not in sparse,
                                 counted=layer != last, closes=layer == last or layer + 1 in sparse)


def _reducer(kind: str, ctx: SlotContext, o: Mapping[str, Any], *, prefix: int, stage: int,
             keep_rate: float, budget: FlopsBudget | None) -> Reducer:
    if kind == "topk":
        return TopKFuse(keep_rate=keep_rate, fuse=o["fuse"], num_prefix=prefix, class_token=bool(ctx.class_tokens),
                        score=o["score"])
    if kind == "tome":
        return ToMeMerge(keep_rate=keep_rate, num_prefix=prefix)
    return ThresholdPruner(budget=budget, keep_rate=keep_rate, num_prefix=prefix, num_tokens=ctx.num_tokens,
                           stage=stage, threshold=o["threshold_init"][stage - 1],
                           temperature=o["threshold_temperature"], weight=o["budget_weight"])


def _threshold_options(o: Mapping[str, Any]) -> dict[str, Any]:
    """AS-ViT's keep_rate is one FLOPs budget (the published keep_ratio); threshold_init is one value per stage:
    a single number for all, or a list of at least as many values as stages, the first ones used (the published
    0.001 / 0.002 / 0.003 are for three stages; a two-stage model starts at 0.001 / 0.002)."""
    rate = o["keep_rate"]
    if not isinstance(rate, float):
        if len(set(rate)) != 1:
            raise ValueError(f"asvit's keep_rate is one FLOPs budget for the whole model (the fraction of the dense "
                             f"model's FLOPs), not one rate per stage: got {rate}")
        rate = rate[0]
    init = o["threshold_init"]
    stages = len(o["sparse_layers"])
    init = (float(init),) * stages if isinstance(init, (int, float)) else tuple(float(v) for v in init)
    if len(init) < stages:
        raise ValueError(f"threshold_init has {len(init)} values for {stages} pruning stages")
    if not o["threshold_temperature"] > 0:
        raise ValueError(f"threshold_temperature must be > 0, got {o['threshold_temperature']}")
    return {"keep_rate": rate, "threshold_init": init[:stages]}


def default_sparse_layers(depth: int) -> tuple[int, ...]:
    """The paper's ViT-B layers 4/7/10 of 12, scaled by relative position to other depths (ViT-L: 8/14/20)."""
    return tuple(sorted({max(1, min(depth, round(i * depth / 12))) for i in PAPER_SPARSE_LAYERS}))


# -- the table ------------------------------------------------------------------------------------------------
_ADAPTFORMER = {"adapter_bottleneck": 64, "adapter_scale": 0.1}
_REDUCTION = {"sparse_layers": None, "keep_rate": 0.7}  # None: PAPER_SPARSE_LAYERS scaled to the depth
_PEFT = ("head", "method", "temporal_positions")
# The paper's Dense Adapter (bottleneck 32, three inputs, scale 1); dense_adapter_form="published": the authors'
# code's (768 -> 64 -> 32 -> 64, concat, skip, -> 768; outputs summed per stage and re-added at the stage ends).
_DENSE = {"adapter_bottleneck": 32, "adapter_scale": 1.0, "dense_inputs": 3, "dense_adapter_form": "paper",
          "published_bottleneck": 64, "published_inner": 32}
ADAPTER_CHOICES = {"dyt": ("parallel", "moe")}

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("full", "full fine-tuning of every weight", trains=("all",), frozen_backbone=False),
    Method("linear", "linear probe: the head alone", trains=("head",)),
    Method("adapter", "Houlsby adapter in series with each FFN (one per block, as the ViT PEFT tables count)",
           trains=_PEFT, adapter="sequential", options={"adapter_bottleneck": 64, "adapter_scale": 1.0}),
    Method("adaptformer", "AdaptFormer: a scaled bottleneck beside each FFN", trains=_PEFT, adapter="parallel",
           options=_ADAPTFORMER),
    Method("dense_adapter", "Sparse-Tuning's Dense Adapters without token sparsification (dense_adapter_form="
           "'published': the authors' code's adapter)", trains=_PEFT,
           adapter="dense", options={**_DENSE}),
    Method("sparse_tuning", "Sparse-Tuning: top-k [CLS]-attention tokens kept, the rest fused into one, Dense "
           "Adapters (the paper's defaults: keep 0.7 at layers 4/7/10, bottleneck 32, three inputs; "
           "dense_adapter_form='published': the authors' code's adapter)",
           trains=_PEFT, adapter="dense", reducer="topk",
           options={**_REDUCTION, "fuse": "mean", "score": "cls", **_DENSE}),
    Method("lora", "LoRA on the query and value projections, rank 8, scale 1", trains=_PEFT, lora=True,
           options={"lora_rank": 8}),
    Method("vpt", "VPT-Deep: 8 prompts per layer (the Sparse-Tuning Table 2 count)", trains=_PEFT, prompts=True,
           options={"num_prompts": 8}),
    Method("bitfit", "BitFit: every bias", trains=("head", "biases", "temporal_positions")),
    # DyT's published recipe (NUS-HPC-AI-Lab/Dynamic-Tuning): dropout 0.1 in the adapter bottleneck, self-distillation
    # always on (the full-token pass's CE + KL, weight 1 each), gate bias at zero (calibrate=true: shifted to the
    # target rate on the first training clips instead), head init std 0.01.
    Method("dyt", "Dynamic Tuning: AdaptFormer adapters on every token, a token dispatcher per layer lets tokens "
           "skip the MLP (adapter='moe': the MoE adapter)", trains=_PEFT, adapter="parallel", dispatcher=True,
           losses=("activation", "distill", "full_token"),
           options={"adapter": "parallel", **_ADAPTFORMER, "adapter_dropout": 0.1, "adapter_experts": 4,
                    "dispatch_target": 0.5, "dispatch_temperature": 5.0, "dispatch_weight": 2.0,
                    "distill_weight": 1.0, "head_init_std": 0.01, "calibrate": False}),
    # AS-ViT as published (Cydia2018/AS-ViT; video_st/models/pruning.py): keep_rate is the FLOPs budget (0.7 of the
    # dense model), thresholds start at 0.001 / 0.002 / 0.003 (calibrate=true: at the budget's rate, from data).
    Method("asvit", "Adaptive Sparse ViT in the PEFT setting: DyT's adapters, learnable thresholds on the "
           "head-weighted [CLS] attention at the pruning layers, a FLOPs budget", trains=_PEFT, adapter="parallel",
           reducer="threshold", losses=("budget",),
           options={**_ADAPTFORMER, **_REDUCTION, "threshold_init": (0.001, 0.002, 0.003),
                    "threshold_temperature": 1e-4, "budget_weight": 2.0, "calibrate": False}),
    Method("evit", "EViT: top-k + fuse on a frozen backbone, head only (Sparse-Tuning Table 3 (b))",
           trains=("head",), reducer="topk", options={**_REDUCTION, "fuse": "mean", "score": "cls"}),
    Method("tome", "ToMe: bipartite token merging on a frozen backbone, head only", trains=("head",),
           reducer="tome", options=dict(_REDUCTION)),
)}


def list_methods() -> list[str]:
    return sorted(METHODS)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(list_methods())}")
    return METHODS[name]


def option_names() -> set[str]:
    """Every option any method takes (the config's model section may hold them)."""
    return {key for m in METHODS.values() for key in m.options}


def trainable_names(model: nn.Module, rules: Sequence[str]) -> set[str]:
    """Parameter names selected by trainable-set ``rules`` (see the module docstring)."""
    unknown = set(rules) - set(TRAINABLE_RULES)
    if unknown:
        raise ValueError(f"unknown trainable rules {sorted(unknown)}; known: {TRAINABLE_RULES}")
    method = tuple(f"{name}." for name in model.slot_module_names())
    tests: dict[str, Callable[[str], bool]] = {
        "all": lambda n: True,
        "head": lambda n: n.startswith("head."),
        "method": lambda n: n.startswith(method),
        "temporal_positions": lambda n: n == "pos_embed_temporal",
        "biases": lambda n: n.endswith(".bias"),
    }
    return {n for n, _ in model.named_parameters() if any(tests[r](n) for r in rules)}


def mark_trainable(model: nn.Module, method: str) -> list[str]:
    """Freeze everything but what ``method`` trains; returns the trainable parameter names."""
    names = trainable_names(model, get_method(method).trains)
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    return sorted(names)

