"""Pre-trained checkpoints -> VideoViT state dicts: pure ``state_dict -> state_dict`` functions.

Sources, recognised by their key names (never by file name):
- ``timm``: a timm ``VisionTransformer`` state dict (.pth/.bin/.safetensors), e.g. ImageNet-21k ViT-B/16;
- ``npz``: the original JAX release (``ViT-B_16.npz``: ``Transformer/encoderblock_0/...``) and big_vision npz;
- ``videomae``: VideoMAE checkpoints, pre-training (``encoder.`` keys, decoder dropped) and fine-tuned
  (``model``/``module`` wrappers), with ``q_bias``/``v_bias``;
- ``hf_videomae``: Hugging Face ``VideoMAEModel``/``VideoMAEForVideoClassification``/``...ForPreTraining``
  (a folder with config.json and model.safetensors, or the state dict alone);
- ``video_st``: a file written by ``tools/convert_checkpoint.py`` (already converted; geometry is re-adapted).

Conversion runs in two steps. ``to_video_st`` renames keys and reports the architecture it can read from the
weights, keeping the source geometry; ``refit.adapt_to_model`` then fits the geometry to the model being loaded:
- a 2-D patch kernel is inflated to the tube kernel: ``"central"`` puts it at temporal index ``t // 2`` with zeros
  elsewhere (ViViT's central-frame init: a tube sees exactly its central frame), ``"average"`` repeats it over t
  divided by t (I3D's: a static clip gives the image response). Both equal the image model on a static clip;
- the spatial position table is resized by bicubic interpolation and shared over time; the temporal table (zero
  for image sources) is linearly interpolated when the number of tubelets changes;
- VideoMAE's fixed sinusoidal table is not stored in checkpoints; the model rebuilds it for the grid it was
  pre-trained on (``pos_embed_grid``) and resamples it to its own grid (see ``VideoViT``).

VideoMAE has no [CLS] token: its checkpoints build a model with ``class_token=False``, mean pooling and
``fc_norm`` (exactly VideoMAE's head), and Sparse-Tuning then scores tokens by the attention of the mean query.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from .spec import ModelSpec, file_spec

_log = logging.getLogger(__name__)

VIDEOMAE_DEFAULT_FRAMES = 16  # every VideoMAE K400/SSv2 release was pre-trained on 16 frames at 224


@dataclass
class Converted:
    """A state dict in VideoViT names at its source geometry, and what the weights say about the architecture."""

    state_dict: dict[str, torch.Tensor]
    source: str
    arch: dict[str, Any] = field(default_factory=dict)  # VideoViT keyword arguments fixed by the weights
    spec: ModelSpec | None = None  # the file's own spec (video_st files)
    content: str = "backbone"  # a video_st file's content: "model", "trainable" or "backbone" (a conversion)


# What a video_st file's backbone says that seeding another model does not take: the head and the
# regularisation are the new run's own choices.
NOT_GEOMETRY = ("num_classes", "drop_rate", "attn_drop_rate", "drop_path_rate")


# -- reading files ---------------------------------------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Read a checkpoint file or Hugging Face folder -> (raw mapping, HF config or None). Never unpickles code."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file or folder")
    hf_config = None
    if os.path.isdir(path):
        config_path = os.path.join(path, "config.json")
        weights = [os.path.join(path, n) for n in ("model.safetensors", "pytorch_model.bin") if os.path.exists(os.path.join(path, n))]
        if not weights:
            raise CheckpointError(f"{path}: folder has neither model.safetensors nor pytorch_model.bin")
        if os.path.exists(config_path):
            try:
                with open(config_path) as f:
                    hf_config = json.load(f)
            except json.JSONDecodeError as err:
                raise CheckpointError(f"{config_path}: not valid JSON: {err}") from err
        raw, _ = read_checkpoint(weights[0])
        return raw, hf_config
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: file is empty")
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as arrays:
                return {k: torch.from_numpy(np.array(arrays[k])) for k in arrays.files}, None
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu"), None
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch, numpy and safetensors each raise their own types for a bad file
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj, None


def unwrap(raw: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Strip training wrappers: ``{"model": sd}``, ``{"module": sd}``, ``{"state_dict": sd}`` and ``module.``."""
    meta = raw.get("video_st") if isinstance(raw.get("video_st"), dict) else None
    for key in ("state_dict", "model", "module", "model_state"):
        if isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    sd = {k.removeprefix("module."): v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    return sd, meta


def detect_source(sd: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> str:
    if meta is not None:
        return "video_st"
    keys = list(sd)
    if any(k.startswith(("videomae.", "embeddings.patch_embeddings")) for k in keys):
        return "hf_videomae"
    if any("/" in k for k in keys):
        return "npz"
    if any(k.startswith("encoder.patch_embed") for k in keys) or any(k.endswith(".attn.q_bias") for k in keys):
        return "videomae"
    kernel = sd.get("patch_embed.proj.weight")
    if kernel is not None and kernel.ndim == 5 and "cls_token" not in sd:
        return "videomae"
    if kernel is not None and kernel.ndim == 4 and "blocks.0.attn.qkv.weight" in sd:
        return "timm"
    raise CheckpointError(f"unrecognised checkpoint layout; first keys: {keys[:8]}")


# -- source -> VideoViT names ------------------------------------------------------------------------------------
def _block_count(sd: dict[str, torch.Tensor], prefix: str = "blocks.") -> int:
    ids = {int(k[len(prefix) :].split(".")[0]) for k in sd if k.startswith(prefix)}
    return max(ids) + 1 if ids else 0


def _shape_arch(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture facts that the converted weights themselves prove."""
    kernel = sd["patch_embed.proj.weight"]
    embed_dim = kernel.shape[0]
    arch: dict[str, Any] = {
        "embed_dim": embed_dim,
        "depth": _block_count(sd),
        "patch_size": kernel.shape[-1],
        "mlp_ratio": sd["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
        "class_token": "cls_token" in sd,
        "init_values": 1.0 if "blocks.0.ls1.gamma" in sd else None,
    }
    if kernel.ndim == 5:
        arch["tubelet_size"] = kernel.shape[2]
    return arch


def timm_to_video_st(sd: dict[str, torch.Tensor]) -> Converted:
    if any(k in sd for k in ("reg_token", "attn_pool.latent")):
        raise CheckpointError("timm ViTs with register tokens or attention pooling are not supported")
    out = {}
    for key, value in sd.items():
        if key == "pos_embed":
            grid_tokens = value.shape[1] - (1 if "cls_token" in sd else 0)
            if "cls_token" in sd and math.isqrt(value.shape[1]) ** 2 == value.shape[1]:
                # no_embed_class models (DeiT-3 style) keep no [CLS] position: give it a zero one.
                value = torch.cat([value.new_zeros(1, 1, value.shape[2]), value], dim=1)
            elif math.isqrt(grid_tokens) ** 2 != grid_tokens:
                raise CheckpointError(f"pos_embed of shape {tuple(value.shape)} is not a square grid")
            out["pos_embed_spatial"] = value
        elif key.startswith("norm_pre."):
            raise CheckpointError("timm ViTs with a pre-norm (CLIP-style norm_pre) are not supported")
        else:
            out[key] = value
    arch = _shape_arch(out)
    arch.update(pos_embed="learned", global_pool="token" if "fc_norm.weight" not in out else "avg")
    return Converted(out, "timm", arch)


def npz_to_timm(arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original JAX ViT release (and big_vision) npz -> timm names. The representation layer (``pre_logits``,
    present in the ImageNet-21k ViT-B/16 release) is dropped, as timm does: fine-tuning uses a fresh head."""
    prefix = next((p for p in ("opt/target/", "params/img/", "params/", "") if f"{p}embedding/kernel" in arrays), None)
    if prefix is None:
        raise CheckpointError("npz has no 'embedding/kernel': not a ViT checkpoint of the JAX release")
    w = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
    if "Transformer/encoderblock/LayerNorm_0/scale" in w:
        raise CheckpointError("npz with scanned (stacked) encoder blocks is not supported")
    big_vision = "pos_embedding" in w
    mha, mlp, ln2 = (0, 0, 1) if big_vision else (1, 3, 2)

    def t(name: str) -> torch.Tensor:
        return w[name].float()

    sd = {
        "patch_embed.proj.weight": t("embedding/kernel").permute(3, 2, 0, 1),
        "patch_embed.proj.bias": t("embedding/bias"),
        "pos_embed": t("pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"),
        "norm.weight": t("Transformer/encoder_norm/scale"),
        "norm.bias": t("Transformer/encoder_norm/bias"),
    }
    if "cls" in w:
        sd["cls_token"] = t("cls")
    if "head/kernel" in w:
        sd["head.weight"], sd["head.bias"] = t("head/kernel").T, t("head/bias")
    depth = len({k.split("/")[1] for k in w if k.startswith("Transformer/encoderblock_")})
    for i in range(depth):
        src, dst = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        att = f"{src}MultiHeadDotProductAttention_{mha}/"
        sd[dst + "norm1.weight"], sd[dst + "norm1.bias"] = t(src + "LayerNorm_0/scale"), t(src + "LayerNorm_0/bias")
        sd[dst + "attn.qkv.weight"] = torch.cat([t(f"{att}{n}/kernel").flatten(1).T for n in ("query", "key", "value")])
        sd[dst + "attn.qkv.bias"] = torch.cat([t(f"{att}{n}/bias").flatten() for n in ("query", "key", "value")])
        sd[dst + "attn.proj.weight"] = t(f"{att}out/kernel").flatten(0, 1).T
        sd[dst + "attn.proj.bias"] = t(f"{att}out/bias")
        sd[dst + "norm2.weight"], sd[dst + "norm2.bias"] = t(f"{src}LayerNorm_{ln2}/scale"), t(f"{src}LayerNorm_{ln2}/bias")
        for r in range(2):
            sd[dst + f"mlp.fc{r + 1}.weight"] = t(f"{src}MlpBlock_{mlp}/Dense_{r}/kernel").T
            sd[dst + f"mlp.fc{r + 1}.bias"] = t(f"{src}MlpBlock_{mlp}/Dense_{r}/bias")
    return sd


def npz_num_heads(arrays: dict[str, torch.Tensor]) -> int | None:
    for key, value in arrays.items():
        if key.endswith("MultiHeadDotProductAttention_1/query/kernel") or key.endswith("MultiHeadDotProductAttention_0/query/kernel"):
            return int(value.shape[1])
    return None


def _qkv_bias(q_bias: torch.Tensor | None, v_bias: torch.Tensor | None, dim: int, like: torch.Tensor) -> torch.Tensor:
    # VideoMAE has no key bias; a key bias shifts every logit of a query row equally, which softmax ignores,
    # so a zero key bias in our fused qkv reproduces VideoMAE exactly.
    zeros = like.new_zeros(dim)
    return torch.cat([zeros if q_bias is None else q_bias, zeros, zeros if v_bias is None else v_bias])


def videomae_to_video_st(sd: dict[str, torch.Tensor]) -> Converted:
    if any(k.startswith("encoder.") for k in sd):  # pre-training checkpoint: keep the encoder only
        sd = {k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")}
    if "pos_embed" in sd:
        raise CheckpointError("VideoMAE checkpoints with a learned pos_embed are not supported (only the fixed table)")
    out = {}
    for key, value in sd.items():
        if key.endswith((".attn.q_bias", ".attn.v_bias")):
            continue
        key = key.replace(".gamma_1", ".ls1.gamma").replace(".gamma_2", ".ls2.gamma")
        out[key] = value
    dim = out["patch_embed.proj.weight"].shape[0]
    for i in range(_block_count(out)):
        p = f"blocks.{i}.attn."
        if p + "qkv.bias" not in out:
            out[p + "qkv.bias"] = _qkv_bias(sd.get(p + "q_bias"), sd.get(p + "v_bias"), dim, out[p + "qkv.weight"])
    if "fc_norm.weight" not in out and "norm.weight" in out:
        # Pre-training encoders end with a LayerNorm; VideoMAE fine-tuning pools first and normalises after, so
        # the encoder's final norm is the natural starting point for fc_norm.
        out["fc_norm.weight"], out["fc_norm.bias"] = out.pop("norm.weight"), out.pop("norm.bias")
    arch = _shape_arch(out)
    pooled = "fc_norm.weight" in out
    arch.update(class_token=False, global_pool="avg", fc_norm=pooled, pos_embed="sincos", norm_eps=1e-6)
    return Converted(out, "videomae", arch)


_HF_LAYER = {
    "attention.attention.query.weight": None,  # merged into qkv below
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
}


def hf_videomae_to_video_st(sd: dict[str, torch.Tensor], config: dict[str, Any] | None = None) -> Converted:
    sd = {k.removeprefix("videomae."): v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
    }
    depth = _block_count(sd, "encoder.layer.")
    dim = out["patch_embed.proj.weight"].shape[0]
    for i in range(depth):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        att = src + "attention.attention."
        out[dst + "attn.qkv.weight"] = torch.cat([sd[f"{att}{n}.weight"] for n in ("query", "key", "value")])
        q_bias = sd.get(att + "query.bias", sd.get(att + "q_bias"))
        v_bias = sd.get(att + "value.bias", sd.get(att + "v_bias"))
        out[dst + "attn.qkv.bias"] = _qkv_bias(q_bias, v_bias, dim, out[dst + "attn.qkv.weight"])
        for src_name, dst_name in _HF_LAYER.items():
            if dst_name is None:
                continue
            for leaf in ("weight", "bias"):
                out[f"{dst}{dst_name}.{leaf}"] = sd[f"{src}{src_name}.{leaf}"]
    for src_name, dst_name in (("layernorm", "norm"), ("fc_norm", "fc_norm"), ("classifier", "head")):
        for leaf in ("weight", "bias"):
            if f"{src_name}.{leaf}" in sd:
                out[f"{dst_name}.{leaf}"] = sd[f"{src_name}.{leaf}"]
    arch = _shape_arch(out)
    config = config or {}
    pooled = "fc_norm.weight" in out or config.get("use_mean_pooling", False)
    arch.update(
        class_token=False,
        global_pool="avg",
        fc_norm=pooled,
        pos_embed="sincos",
        norm_eps=config.get("layer_norm_eps", 1e-12),
        head_norm_eps=1e-5,  # transformers builds fc_norm with nn.LayerNorm's default eps
    )
    if "num_attention_heads" in config:
        arch["num_heads"] = config["num_attention_heads"]
    if "num_frames" in config and "image_size" in config:
        t = config["num_frames"] // config.get("tubelet_size", arch["tubelet_size"])
        hw = config["image_size"] // arch["patch_size"]
        arch["pos_embed_grid"] = (t, hw, hw)
    return Converted(out, "hf_videomae", arch)


def to_video_st(path: str | os.PathLike) -> Converted:
    """Read any supported checkpoint and rename it to VideoViT keys (source geometry kept)."""
    raw, hf_config = read_checkpoint(path)
    sd, meta = unwrap(raw)
    try:
        source = detect_source(sd, meta)
        if source == "video_st":
            spec = file_spec(meta, source=os.fspath(path))
            geometry = {k: v for k, v in spec.backbone.items() if k not in NOT_GEOMETRY}
            return Converted(sd, "video_st", geometry, spec=spec, content=meta.get("content", "model"))
        if source == "npz":
            converted = timm_to_video_st(npz_to_timm(sd))
            heads = npz_num_heads(sd)
            if heads:
                converted.arch["num_heads"] = heads
            converted.source = "npz"
            return converted
        if source == "hf_videomae":
            return hf_videomae_to_video_st(sd, hf_config)
        if source == "videomae":
            converted = videomae_to_video_st(sd)
            t = VIDEOMAE_DEFAULT_FRAMES // converted.arch["tubelet_size"]
            converted.arch.setdefault("pos_embed_grid", (t, 14, 14))
            return converted
        return timm_to_video_st(sd)
    except KeyError as err:
        raise CheckpointError(f"{os.fspath(path)}: missing key {err} for a {source!r} checkpoint") from err
    except CheckpointError as err:
        raise CheckpointError(f"{os.fspath(path)}: {err}") from err
