"""Load exactly the model that was trained, from any file or folder video_st writes, and check a config against it.

What can be loaded (``load_model``):
- a run's checkpoint folder (``OUTPUT/checkpoints``: its best.json, else latest) or one engine checkpoint
  folder (DeepSpeed or DDP; verified against its MANIFEST.json, the model spec in its ``spec.json``);
- a single file (``model_final.pt``, a converted backbone): the spec in its metadata;
- an adapter-only file (``trainable_final.pt``) over ``backbone=`` (a file holding the backbone it was trained
  on: the converted pre-trained checkpoint, or any video_st file of the same geometry).

The model is rebuilt from the spec, never from a config. Nothing is unpickled beyond tensors and plain
containers: every ``.pt`` file is read with ``weights_only=True`` and a file that needs more is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import CheckpointError
from ..models.adapters import load_trainable_state_dict
from ..models.convert import read_checkpoint, to_video_st, unwrap
from ..models.factory import build, load_backbone
from ..models.spec import ModelSpec, SpecError, file_spec
from ..models.vit import VideoViT
from .backends import checkpoint_state_dict, is_checkpoint_dir
from .checkpoint import SPEC_FILE, verify

# Keys of a config's model section that may differ from a trained file without changing what it computes at
# test: where its pre-trained weights came from, and training-only regularisation.
NOT_COMPARED = ("arch", "method", "pretrained", "inflation", "drop_rate", "attn_drop_rate", "drop_path_rate")


@dataclass(frozen=True)
class Loaded:
    model: VideoViT
    spec: ModelSpec
    path: str
    kind: str  # "engine checkpoint" | "model" | "trainable over backbone" | "backbone"
    step: int | None = None


def resolve_checkpoint(path: str) -> str:
    """A run's checkpoint folder -> the checkpoint it points at (best.json, else latest); anything else as is."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint file or folder")
    if os.path.isdir(path) and not is_checkpoint_dir(path) and not _hf_folder(path):
        for pointer in ("best.json", "latest"):
            file = os.path.join(path, pointer)
            if os.path.exists(file):
                with open(file, encoding="utf-8") as f:
                    tag = json.load(f)["tag"] if pointer == "best.json" else f.read().strip()
                return os.path.join(path, tag)
        raise CheckpointError(f"{path}: no best.json or latest (not a run's checkpoint folder) and no weights "
                              "of a Hugging Face folder")
    return path


def _hf_folder(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in ("model.safetensors", "pytorch_model.bin"))


def is_video_st_file(path: str) -> bool:
    """Whether ``path`` is a checkpoint video_st wrote (engine folder or file with metadata), not a foreign one."""
    path = resolve_checkpoint(path)
    if os.path.isdir(path):
        return is_checkpoint_dir(path)
    return unwrap(read_checkpoint(path)[0])[1] is not None


def check_weights_only(folder: str) -> None:
    """Every ``.pt`` file of an engine checkpoint folder must load with ``weights_only=True`` before anything
    (DeepSpeed included) reads it fully: a pickled payload would otherwise run while it loads."""
    for name in sorted(os.listdir(folder)):
        if name.endswith(".pt"):
            file = os.path.join(folder, name)
            try:
                torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as err:  # an UnpicklingError for a payload, RuntimeError for a damaged archive
                raise CheckpointError(f"{file}: refused: not loadable as weights only ({type(err).__name__}: "
                                      f"{str(err).splitlines()[0][:200]})") from err


def read_folder_spec(folder: str) -> ModelSpec:
    file = os.path.join(folder, SPEC_FILE)
    if not os.path.exists(file):
        raise SpecError(f"{folder}: no {SPEC_FILE}: written by an older video_st; retrain, or test its "
                        "model_final.pt")
    with open(file, encoding="utf-8") as f:
        return ModelSpec.from_dict(json.load(f), source=file)


def load_model(path: str | os.PathLike, backbone: str | os.PathLike | None = None) -> tuple[VideoViT, ModelSpec]:
    """The model a video_st file or folder holds, rebuilt from its spec, and the spec (public API)."""
    loaded = load(os.fspath(path), backbone=None if backbone is None else os.fspath(backbone))
    return loaded.model, loaded.spec


def load(path: str, *, backbone: str | None = None) -> Loaded:
    path = resolve_checkpoint(path)
    if os.path.isdir(path) and is_checkpoint_dir(path):
        problem = verify(path)
        if problem is not None:
            raise CheckpointError(f"{path}: damaged checkpoint ({problem})")
        check_weights_only(path)
        spec = read_folder_spec(path)
        model = build(spec)
        _load_all(model, checkpoint_state_dict(path), path)
        return Loaded(model, spec, path, "engine checkpoint")
    raw, _ = read_checkpoint(path)
    state, meta = unwrap(raw)
    if meta is None:
        raise CheckpointError(f"{path}: not a video_st file (no model spec); a pre-trained checkpoint seeds a "
                              "model through model.pretrained instead")
    spec, content = file_spec(meta, source=path), meta.get("content", "model")
    model = build(spec)
    if content == "trainable":
        if backbone is None:
            raise CheckpointError(f"{path} holds only the trained parts of a {spec.method} model; give the backbone "
                                  "it was trained on (model.pretrained)")
        load_backbone(model, to_video_st(backbone), origin=backbone)
        try:
            load_trainable_state_dict(model, state)
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"{path}: {err}") from err
        return Loaded(model, spec, path, "trainable over backbone", meta.get("step"))
    _load_all(model, state, path)
    return Loaded(model, spec, path, content, meta.get("step"))


def _load_all(model: VideoViT, state: Mapping[str, torch.Tensor], origin: str) -> None:
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise CheckpointError(f"{origin}: weights do not match the model its spec describes (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}, shapes {bad[:3]})")
    model.load_state_dict(dict(state))


def _normal(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    return value


def config_disagreements(spec: ModelSpec, model_cfg: Mapping[str, Any], clip: tuple[int, int]) -> list[str]:
    """Each key of a config's model section (and the data's clip geometry) that says something else than the
    trained spec, as ``"key=config value (config) vs trained value (file)"``."""
    found = []
    for key in ("arch", "method"):
        if key in model_cfg and model_cfg[key] != getattr(spec, key):
            found.append(f"model.{key}={model_cfg[key]} in the config but {getattr(spec, key)} in the file")
    for key, value in model_cfg.items():
        if key in NOT_COMPARED or value is None and key not in spec.backbone and key not in spec.options:
            continue
        trained = spec.backbone.get(key, spec.options.get(key, "<no such option>"))
        if key not in spec.backbone and key not in spec.options:
            found.append(f"model.{key}={value} in the config, but the file's method {spec.method} has no such option")
        elif _normal(value) != _normal(trained):
            found.append(f"model.{key}={_normal(value)} in the config but {_normal(trained)} in the file")
    frames, size = spec.clip
    if clip != (frames, size):
        found.append(f"data.num_frames={clip[0]}, data.size={clip[1]} in the config but the model takes "
                     f"{frames} frames of {size} x {size}")
    return found
