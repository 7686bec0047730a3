"""Registered variants, specs and ``create_model``: the one way the rest of the project builds models.

``make_spec`` resolves what to build (variant, pre-trained geometry, method options), ``build`` builds exactly a
spec, ``create_model`` does both and loads a pre-trained backbone; ``load_backbone`` takes only the backbone of a
file, whatever method wrote it."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import CheckpointError
from .convert import Converted, to_video_st
from .refit import adapt_to_model
from .methods import SlotContext, get_method, mark_trainable, option_names
from .spec import ModelSpec, save_model_file
from .vit import VideoViT

_log = logging.getLogger(__name__)

_VARIANTS: dict[str, dict[str, Any]] = {}


def register_variant(name: str, **defaults: Any) -> None:
    _VARIANTS[name] = defaults


# ViT sizes of Dosovitskiy et al.; patch 16, 8 frames at 224 with 2-frame tubelets unless overridden.
register_variant("vit_small_patch16", embed_dim=384, depth=12, num_heads=6)
register_variant("vit_base_patch16", embed_dim=768, depth=12, num_heads=12)
register_variant("vit_large_patch16", embed_dim=1024, depth=24, num_heads=16)
# For tests and the CPU demo: 4 layers of width 64, 4 frames of 32 x 32 -> 2 x 4 x 4 = 32 tokens. Reducing
# methods reduce at its layers 2 and 3 (the paper's relative positions would give 1, 2, 3 of 4: the first layer's
# [CLS] attention has seen too little to rank tokens).
register_variant(
    "vit_tiny_test", embed_dim=64, depth=4, num_heads=4, patch_size=8, img_size=32, num_frames=4, num_classes=10,
    sparse_layers=(2, 3),
)

_SIGNATURE = inspect.signature(VideoViT.__init__).parameters
BACKBONE_KEYS = tuple(k for k in _SIGNATURE if k not in ("self", "slots"))
VIDEO_VIT_DEFAULTS = {k: _SIGNATURE[k].default for k in BACKBONE_KEYS}


def list_models() -> list[str]:
    return sorted(_VARIANTS)


def model_keys() -> set[str]:
    """Valid keys of a config's ``model`` section: create_model's own, the backbone's and every method option
    (each method then accepts only its own options)."""
    own = set(inspect.signature(create_model).parameters) - {"kwargs"}
    return own | set(BACKBONE_KEYS) | option_names()


def make_spec(arch: str, *, method: str = "full", geometry: dict[str, Any] | None = None,
              classes: Sequence[str] | None = None, **kwargs: Any) -> ModelSpec:
    """The complete spec of ``arch`` for ``method``: variant defaults < ``geometry`` (what pre-trained weights
    fix) < ``kwargs``, which are backbone keyword arguments or options of ``method`` (anything else is an
    error naming it)."""
    if arch not in _VARIANTS:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(list_models())}")
    record = get_method(method)
    variant = _VARIANTS[arch]
    backbone = {**VIDEO_VIT_DEFAULTS, **{k: v for k, v in variant.items() if k in BACKBONE_KEYS}, **(geometry or {})}
    backbone.update({k: v for k, v in kwargs.items() if k in BACKBONE_KEYS})
    # A variant may set defaults for method options (the tiny model's sparse layers): for the methods that take them.
    options = {k: v for k, v in variant.items() if k not in BACKBONE_KEYS and k in record.options}
    options.update({k: v for k, v in kwargs.items() if k not in BACKBONE_KEYS})
    options = record.resolve(options, depth=backbone["depth"])
    if classes is not None and backbone["num_classes"] != len(classes):
        raise ValueError(f"num_classes={backbone['num_classes']} but {len(classes)} class names were given")
    return ModelSpec(arch=arch, method=method, backbone=backbone, options=options,
                     classes=None if classes is None else tuple(classes))


def slot_context(backbone: dict[str, Any]) -> SlotContext:
    t = backbone["num_frames"] // backbone["tubelet_size"]
    side = backbone["img_size"] // backbone["patch_size"]
    return SlotContext(dim=backbone["embed_dim"], depth=backbone["depth"], class_tokens=int(backbone["class_token"]),
                       num_tokens=t * side * side, global_pool=backbone["global_pool"],
                       mlp_hidden=int(backbone["embed_dim"] * backbone["mlp_ratio"]),
                       patch_volume=backbone["in_chans"] * backbone["tubelet_size"] * backbone["patch_size"] ** 2)


def build(spec: ModelSpec) -> VideoViT:
    """Exactly the model ``spec`` describes (fresh weights), with what its method does not train frozen."""
    record = get_method(spec.method)
    backbone = dict(spec.backbone)
    options = record.resolve(spec.options, depth=backbone["depth"])
    model = VideoViT(**backbone, slots=record.build(slot_context(backbone), options))
    mark_trainable(model, spec.method)
    model.spec = spec
    return model


def create_model(
    arch: str,
    *,
    method: str = "full",
    pretrained: str | os.PathLike | None = None,
    inflation: str = "central",
    classes: Sequence[str] | None = None,
    **kwargs: Any,
) -> VideoViT:
    """Build ``arch`` for ``method``; load the backbone of ``pretrained`` (any format tools/convert_checkpoint.py
    reads, or any file video_st wrote: only its backbone is taken, never its method's parts or head) and freeze
    what the method does not train.

    Keyword arguments are backbone arguments (``num_frames``, ``img_size``, ``tubelet_size``, ``num_classes``,
    ...) or options of ``method`` (see :mod:`video_st.models.methods`; e.g. ``keep_rate``, ``sparse_layers``).
    Precedence: variant defaults < what the checkpoint's weights fix (e.g. no [CLS] token for VideoMAE) < method
    defaults < your keyword arguments.
    """
    converted = to_video_st(pretrained) if pretrained is not None else None
    geometry = None
    if converted is not None:
        # The weights prove the width and depth: a mismatch with the named variant means the wrong arch was
        # asked for (never a silent rebuild under the wrong name).
        same_variant = converted.spec is not None and converted.spec.arch == arch  # its own (maybe resized) variant
        _check_arch(arch, {} if same_variant else _VARIANTS.get(arch, {}), converted.arch, kwargs)
        geometry = converted.arch
        if kwargs.get("class_token") and not converted.arch.get("class_token", True):
            raise CheckpointError(
                f"{pretrained}: checkpoint has no [CLS] token; build with class_token=False and global_pool='avg' "
                "(VideoMAE's own head; Sparse-Tuning then scores tokens by the mean query's attention)"
            )
    model = build(make_spec(arch, method=method, geometry=geometry, classes=classes, **kwargs))
    if converted is not None:
        load_backbone(model, converted, inflation=inflation, origin=os.fspath(pretrained))
    return model


def _check_arch(arch: str, variant: dict[str, Any], found: dict[str, Any], kwargs: dict[str, Any]) -> None:
    for key in ("embed_dim", "depth", "num_heads"):
        want = kwargs.get(key, variant.get(key))
        if key in found and want is not None and found[key] != want:
            raise CheckpointError(f"checkpoint has {key}={found[key]} but {arch} has {key}={want}")


# Backbone tensors a pre-trained checkpoint may lack: image and pre-training checkpoints have no temporal table
# and (timm) no fc_norm; both start from their init.
OPTIONAL_BACKBONE = ("pos_embed_temporal", "fc_norm.")


def backbone_state(converted: Converted) -> dict[str, torch.Tensor]:
    """The backbone tensors of a converted checkpoint. A trained video_st file's method parts (adapters, LoRA,
    prompts, gates, thresholds) and its head are left out: seeding method B from method A's file takes the
    backbone only. Foreign files and their conversions (content "backbone") keep their head, as timm does: a
    fine-tuned VideoMAE's head is its classifier (``adapt_to_model`` drops a head of another size)."""
    if converted.spec is None or converted.content == "backbone":
        return dict(converted.state_dict)
    with torch.device("meta"):  # the structure of the file's model, without allocating its weights
        source = build(converted.spec)
    method = tuple(f"{n}." for n in source.slot_module_names())
    return {k: v for k, v in converted.state_dict.items() if not k.startswith(method) and not k.startswith("head.")}


def load_backbone(model: VideoViT, converted: Converted, *, inflation: str = "central",
                  origin: str = "checkpoint") -> None:
    """Load a converted checkpoint's backbone after fitting its geometry; backbone tensors may not be missing."""
    sd = adapt_to_model(backbone_state(converted), model, inflation=inflation)
    own = model.state_dict()
    for key in list(sd):
        if key in own and own[key].shape != sd[key].shape:
            raise CheckpointError(f"{origin}: {key} has shape {tuple(sd[key].shape)}, model expects {tuple(own[key].shape)}")
    result = model.load_state_dict(sd, strict=False)
    method = tuple(f"{n}." for n in model.slot_module_names())
    missing = [k for k in result.missing_keys
               if not k.startswith(method) and not k.startswith(("head.", *OPTIONAL_BACKBONE))]
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
    """Convert ``src`` to a video_st backbone file at the geometry of ``model_kwargs``; written atomically.

    Returns the metadata stored with it (source format, spec)."""
    converted = to_video_st(src)
    kwargs = dict(model_kwargs)
    kwargs.setdefault("num_classes", converted.state_dict["head.weight"].shape[0] if "head.weight" in converted.state_dict else 0)
    if converted.arch.get("class_token") is False:
        kwargs.setdefault("class_token", False)
        kwargs.setdefault("global_pool", "avg")
    model = create_model(arch or _guess_arch(converted.arch), pretrained=src, inflation=inflation, **kwargs)
    return save_model_file(dst, model.state_dict(), spec=model.spec, content="backbone", source=converted.source,
                           inflation=inflation)


def _guess_arch(found: dict[str, Any]) -> str:
    for name, variant in _VARIANTS.items():
        if variant["embed_dim"] == found.get("embed_dim") and variant["depth"] == found.get("depth"):
            return name
    raise CheckpointError(f"no registered variant has embed_dim={found.get('embed_dim')}, depth={found.get('depth')}; pass arch")
