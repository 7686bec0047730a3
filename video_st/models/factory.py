"""Registered variants, method presets and ``create_model``: the one way the rest of the project builds models."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from ..fileio import atomic_open
from .adapters import TRAINABLE_PREFIXES, mark_trainable
from .convert import CheckpointError, adapt_to_model, to_video_st
from .vit import VideoViT

_log = logging.getLogger(__name__)

_VARIANTS: dict[str, dict[str, Any]] = {}


def register_variant(name: str, **defaults: Any) -> None:
    _VARIANTS[name] = defaults


# ViT sizes of Dosovitskiy et al.; patch 16, 8 frames at 224 with 2-frame tubelets unless overridden.
register_variant("vit_small_patch16", embed_dim=384, depth=12, num_heads=6)
register_variant("vit_base_patch16", embed_dim=768, depth=12, num_heads=12)
register_variant("vit_large_patch16", embed_dim=1024, depth=24, num_heads=16)
# For tests and the CPU demo: 4 layers of width 64, 4 frames of 32 x 32 -> 2 x 4 x 4 = 32 tokens.
register_variant(
    "vit_tiny_test", embed_dim=64, depth=4, num_heads=4, patch_size=8, img_size=32, num_frames=4, num_classes=10
)

# What each method puts into the backbone's slots. Reducing methods prune at the paper's ViT-B layers (4, 7, 10
# of 12) unless told otherwise, scaled to other depths by the same relative positions; the others ignore
# sparse_layers. Bottlenecks and scales are the published defaults; trainable counts for ViT-B are checked
# against the published figures in tests/test_peft.py.
PAPER_SPARSE_LAYERS = (4, 7, 10)
_ADAPTFORMER = {"adapter": "parallel", "adapter_bottleneck": 64, "adapter_scale": 0.1}
METHODS: dict[str, dict[str, Any]] = {
    "full": {"reducer": None},
    "linear": {"reducer": None},
    "adapter": {"reducer": None, "adapter": "sequential", "adapter_bottleneck": 64, "adapter_scale": 1.0},
    "adaptformer": {"reducer": None, **_ADAPTFORMER},
    "dense_adapter": {"reducer": None, "adapter": "dense", "adapter_bottleneck": 32, "adapter_scale": 1.0},
    "sparse_tuning": {"reducer": "topk", "adapter": "dense", "adapter_bottleneck": 32, "adapter_scale": 1.0,
                      "keep_rate": 0.7},
    "lora": {"reducer": None, "lora_rank": 8},  # q and v, rank 8, scale 1 (alpha = rank)
    "vpt": {"reducer": None, "num_prompts": 8},  # deep prompts; 8 per layer is the Sparse-Tuning Table 2 count
    "bitfit": {"reducer": None},
    # DyT: AdaptFormer's adapters on every token, a dispatcher per layer in front of the MLP (adapter="moe" for
    # the MoE adapter, 4 experts).
    "dyt": {"reducer": None, **_ADAPTFORMER, "dispatch": True, "dispatch_target": 0.5},
    # AS-ViT in the PEFT setting of this project: the same adapters as DyT, thresholds at the reducing layers.
    "asvit": {"reducer": "threshold", **_ADAPTFORMER, "keep_rate": 0.7},
    "evit": {"reducer": "topk", "keep_rate": 0.7},
    "tome": {"reducer": "tome", "keep_rate": 0.7},
}
assert set(METHODS) == set(TRAINABLE_PREFIXES), "every method needs a trainable set in adapters.py"


def list_models() -> list[str]:
    return sorted(_VARIANTS)


def list_methods() -> list[str]:
    return sorted(METHODS)


def default_sparse_layers(depth: int) -> tuple[int, ...]:
    return tuple(sorted({max(1, min(depth, round(i * depth / 12))) for i in PAPER_SPARSE_LAYERS}))


def create_model(
    arch: str,
    *,
    method: str = "full",
    pretrained: str | os.PathLike | None = None,
    inflation: str = "central",
    **kwargs: Any,
) -> VideoViT:
    """Build ``arch`` for ``method``; load ``pretrained`` (any format ``tools/convert_checkpoint.py`` reads, or a
    converted file) and freeze what the method does not train.

    Keyword arguments are ``VideoViT``'s (``num_frames``, ``img_size``, ``tubelet_size``, ``num_classes``,
    ``keep_rate``, ``sparse_layers``, ...). Precedence: variant defaults < what the checkpoint's weights fix
    (e.g. no [CLS] token for VideoMAE) < method preset < your keyword arguments.
    """
    if arch not in _VARIANTS:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(list_models())}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(list_methods())}")
    converted = to_video_st(pretrained) if pretrained is not None else None
    args: dict[str, Any] = dict(_VARIANTS[arch])
    if converted is not None:
        # A converted file records its whole architecture; other sources only prove some of it, and a mismatch
        # with the named variant means the wrong arch was asked for.
        _check_arch(arch, {} if converted.source == "video_st" else args, converted.arch, kwargs)
        args.update(converted.arch)
    args.update(METHODS[method])
    args.update(kwargs)
    if args.get("reducer") is None:
        if args.get("sparse_layers"):
            _log.info("method %s reduces no tokens: sparse_layers=%s ignored (pass reducer= to add a reducer)",
                      method, list(args["sparse_layers"]))
        args["sparse_layers"] = ()
    elif "sparse_layers" not in kwargs:
        args["sparse_layers"] = default_sparse_layers(args.get("depth", 12))
    if converted is not None and args.get("class_token", True) and not converted.arch.get("class_token", True):
        raise CheckpointError(
            f"{pretrained}: checkpoint has no [CLS] token; build with class_token=False and global_pool='avg' "
            "(VideoMAE's own head; Sparse-Tuning then scores tokens by the mean query's attention)"
        )
    model = VideoViT(**args)
    if converted is not None:
        load_converted(model, converted.state_dict, inflation=inflation, origin=os.fspath(pretrained))
    mark_trainable(model, method)
    model.create_args = {"arch": arch, "method": method, **args}
    return model


def _check_arch(arch: str, variant: dict[str, Any], found: dict[str, Any], kwargs: dict[str, Any]) -> None:
    for key in ("embed_dim", "depth", "num_heads"):
        want = kwargs.get(key, variant.get(key))
        if key in found and want is not None and found[key] != want:
            raise CheckpointError(f"checkpoint has {key}={found[key]} but {arch} has {key}={want}")


# Parameters a checkpoint may lack: the new parts of a fine-tuning model.
_NEW_PARAM_MARKERS = (".adapter.", ".lora_", ".dispatcher.", ".reducer.", "head.", "pos_embed_temporal", "fc_norm.",
                      "prompts")


def load_converted(
    model: VideoViT, state_dict: dict[str, torch.Tensor], *, inflation: str = "central", origin: str = "checkpoint"
) -> None:
    """Load a VideoViT-named state dict after fitting its geometry; backbone keys may not be missing."""
    sd = adapt_to_model(state_dict, model, inflation=inflation)
    own = model.state_dict()
    for key in list(sd):
        if key in own and own[key].shape != sd[key].shape:
            raise CheckpointError(f"{origin}: {key} has shape {tuple(sd[key].shape)}, model expects {tuple(own[key].shape)}")
    result = model.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if not any(m in f".{k}" for m in _NEW_PARAM_MARKERS)]
    if missing:
        raise CheckpointError(f"{origin}: backbone weights missing from checkpoint: {missing[:6]}{' ...' if len(missing) > 6 else ''}")
    if result.unexpected_keys:
        _log.warning("%s: ignored %d keys the model does not have: %s", origin, len(result.unexpected_keys), result.unexpected_keys[:6])
    fresh = [k for k in result.missing_keys if k not in missing]
    _log.info("%s: loaded %d tensors; %d new parameters start from their init", origin, len(sd), len(fresh))


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    arch: str | None = None,
    inflation: str = "central",
    **model_kwargs: Any,
) -> dict[str, Any]:
    """Convert ``src`` to a VideoViT file at the geometry of ``model_kwargs``; written atomically.

    Returns the metadata stored with it (source format, architecture keyword arguments)."""
    converted = to_video_st(src)
    kwargs = dict(model_kwargs)
    kwargs.setdefault("num_classes", converted.state_dict["head.weight"].shape[0] if "head.weight" in converted.state_dict else 0)
    if converted.arch.get("class_token") is False:
        kwargs.setdefault("class_token", False)
        kwargs.setdefault("global_pool", "avg")
    model = create_model(arch or _guess_arch(converted.arch), pretrained=src, inflation=inflation, **kwargs)
    return save_video_st(model.state_dict(), dst, create_args=model.create_args, source=converted.source,
                         inflation=inflation)


def save_video_st(state_dict: dict[str, torch.Tensor], dst: str | os.PathLike, *, create_args: dict[str, Any],
                  **extra: Any) -> dict[str, Any]:
    """Write ``{"state_dict", "video_st": meta}`` atomically: the file format every loader of the project reads
    (``create_model(pretrained=...)``, tools/test_net.py). ``meta["arch"]`` holds the backbone's geometry only
    (no method settings), so the file can seed any method; ``meta["create_args"]`` rebuilds the exact model."""
    meta = {"source": "video_st", "arch_name": create_args["arch"], **extra}
    meta["arch"] = {k: v for k, v in create_args.items()
                    if k not in ("arch", "method", "sparse_layers", "keep_rate", "fuse", "dense_inputs")
                    and not k.startswith("adapter")}
    meta["create_args"] = dict(create_args)
    with atomic_open(dst, "wb") as f:
        torch.save({"state_dict": state_dict, "video_st": meta}, f)
    return meta


def _guess_arch(found: dict[str, Any]) -> str:
    for name, variant in _VARIANTS.items():
        if variant["embed_dim"] == found.get("embed_dim") and variant["depth"] == found.get("depth"):
            return name
    raise CheckpointError(f"no registered variant has embed_dim={found.get('embed_dim')}, depth={found.get('depth')}; pass arch")
