"""Config -> model, datasets and transforms; shared by training (engine/train.py) and testing (tools/test_net.py)."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from omegaconf import DictConfig

from ..config import masks_user, to_dict
from ..data.annotations import VideoRecord, read_k400_csv, read_ssv2
from ..data.lists import read_labelled_list
from ..data.folders import read_class_folders
from ..data.datasets import VideoClipDataset, check_files
from ..data.masks import MasksError, masks_beside, masks_for
from ..data.sampling import ClipSpec
from ..data.transforms import EvalTransform, TrainTransform
from ..errors import CheckpointError, ConfigError
from ..models.factory import create_model
from ..models.methods import get_method
from ..models.sparsify import TopKFuse
from ..models.vit import VideoViT

_log = logging.getLogger(__name__)


def build_model(cfg: DictConfig, *, classes: list[str] | None = None, for_training: bool = False,
                **overrides: Any) -> VideoViT:
    """The model of ``cfg.model``, initialised from ``engine.seed`` (identical on every rank).

    Clip geometry comes from the data section (``data.num_frames``, ``data.size``: stated once). For training, a
    method that freezes the backbone needs ``model.pretrained``: a random frozen backbone trains nothing useful,
    so it is an error unless ``model.pretrained=none`` says it is meant (then a warning)."""
    kwargs = {**to_dict(cfg.model), "num_frames": cfg.data.num_frames, "img_size": cfg.data.size, **overrides}
    arch, method = kwargs.pop("arch"), kwargs.get("method", "full")
    try:
        frozen = get_method(method).frozen_backbone
    except ValueError as err:
        raise ConfigError(f"model.method: {err}") from err
    pretrained = kwargs.get("pretrained")
    if isinstance(pretrained, str) and pretrained.lower() == "none":
        kwargs["pretrained"] = None
        if for_training and frozen:
            _log.warning("model.pretrained=none: training %s on a random, frozen backbone", method)
    elif pretrained is None and for_training and frozen:
        raise ConfigError(f"model.method={method} freezes the backbone, but model.pretrained is not set: it would "
                          "train on random frozen weights; give the pre-trained checkpoint (or model.pretrained=none "
                          "if that is what you want)")
    if kwargs.get("pretrained") is not None and not os.path.exists(kwargs["pretrained"]):
        raise ConfigError(f"model.pretrained={kwargs['pretrained']}: no such file or folder")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.engine.seed)
        try:
            return create_model(arch, classes=classes, **kwargs)
        except ValueError as err:
            if isinstance(err, CheckpointError):
                raise
            raise ConfigError(f"model: {err}") from err


def split_file(cfg: DictConfig, split: str) -> str:
    """The annotation file of ``split`` (the test split defaults to data.val), checked to exist."""
    key = split if cfg.data[split] or split != "test" else "val"
    path = cfg.data[key]
    if not path:
        raise ConfigError(f"data.{key} is empty: give the annotation file of the {split} split")
    if not os.path.isfile(path):
        raise ConfigError(f"data.{key}={path}: no such file")
    if cfg.data.root and not os.path.isdir(cfg.data.root):
        raise ConfigError(f"data.root={cfg.data.root}: no such folder")
    if cfg.data.labels and not os.path.isfile(cfg.data.labels):
        raise ConfigError(f"data.labels={cfg.data.labels}: no such file")
    return path


def _split_folder(cfg: DictConfig, split: str) -> str:
    """``data.dataset=folder``: the folder of ``split`` (its class folders inside). ``data.{split}`` names it: an
    absolute path as is, a relative one under ``data.root`` (under the working folder without a root); empty means
    ``ROOT/{split}`` (the test split: data.val's folder, as for the other formats)."""
    data = cfg.data
    key = split if data[split] or split != "test" else "val"
    if data.labels:
        raise ConfigError(f"data.labels={data.labels}: data.dataset=folder takes its class names from the class "
                          "folders; drop data.labels")
    name = data[key] or key
    if not data[key] and not data.root:
        raise ConfigError(f"data.{key} and data.root are empty: give data.root (the folder holding {key}/CLASS/...)"
                          f" or data.{key} (the {split} split's folder)")
    path = name if os.path.isabs(name) else os.path.join(data.root, name)
    if not os.path.isdir(path):
        raise ConfigError(f"data.{key}={data[key] or '(empty)'}: no such folder {path} (data.dataset=folder: "
                          f"{'data.root/' if not os.path.isabs(name) else ''}{name}/CLASS/video files)")
    return path


def read_split(cfg: DictConfig, split: str, class_names: list[str] | None = None) -> tuple[list[VideoRecord], list[str]]:
    """Records of ``split`` ("train", "val", "test") and the class names, with missing files checked all at once.

    Without ``class_names`` (training) the split's annotations define the classes. With them (val/test: the
    training classes, the model's) every format is matched to them by name: records come back labelled in
    ``class_names`` order whatever order the file lists its classes in, a class they do not hold is an
    ``AnnotationError`` naming it and the file, and ``class_names`` is returned. Bare class indices (a list without
    ``data.labels``) are matched by position only when ``class_names`` are bare indices too."""
    data = cfg.data
    if data.dataset == "folder":
        path = _split_folder(cfg, split)
        records, names = read_class_folders(path, data.root, class_names=class_names)
        return check_files(records, source=path, missing=data.missing, invalid_list=data.scan_list), names
    path = split_file(cfg, split)
    if data.dataset == "k400":
        records, names = read_k400_csv(path, data.root, class_names)
    elif data.dataset == "ssv2":
        if not data.labels:
            raise ConfigError("data.labels is empty: SSv2 needs its labels JSON")
        records, names = read_ssv2(data.labels, path, data.root, class_names=class_names)
    else:
        records, names = read_labelled_list(path, data.root, frames=data.dataset == "frames",
                                            labels=data.labels or None, class_names=class_names)
    records = check_files(records, source=path, missing=data.missing, invalid_list=data.scan_list)
    return records, names


def clip_spec(cfg: DictConfig, *, temporal_views: int = 1, spatial_views: int = 1) -> ClipSpec:
    return ClipSpec(sampling=cfg.data.sampling, num_frames=cfg.data.num_frames, stride=cfg.data.stride,
                    num_temporal_views=temporal_views, num_spatial_views=spatial_views)


def train_dataset(cfg: DictConfig, records: list[VideoRecord]) -> VideoClipDataset:
    data = cfg.data
    on_worker = data.augment_on == "worker"
    transform = TrainTransform(
        size=data.size, scale=tuple(data.scale), hflip=data.hflip,
        label_swap={a: b for a, b in data.label_swap} if data.label_swap else None,
        rand_augment=tuple(data.rand_augment) if data.rand_augment and on_worker else None,
        output="float" if on_worker else "uint8",
    )
    masks = None
    user = masks_user(cfg)
    if user:  # the masks beside the train file; the config check kept RandAugment and mixup out
        if data.dataset == "folder":
            raise ConfigError(f"{user} needs an annotation file to find the masks beside, not data.dataset=folder")
        try:
            masks = masks_for(masks_beside(split_file(cfg, "train")), [r.video_id for r in records])
        except MasksError as err:
            raise ConfigError(f"{user}: {err}") from err
    return VideoClipDataset(records, mode="train", clip=clip_spec(cfg), transform=transform, backend=data.backend,
                            decode_threads=data.decode_threads, repeats=data.repeats, seed=cfg.engine.seed,
                            masks=masks)


def set_mask_objectives(cfg: DictConfig, model: VideoViT) -> None:
    """Check what the training loader's masks are for (:func:`~video_st.config.masks_user`) against the built
    model, and turn the attention guide on in it; a ConfigError names the key."""
    if cfg.data.object_first and not any(type(b.reducer) is TopKFuse for b in model.blocks):
        raise ConfigError(f"data.object_first=true: model.method={cfg.model.method!r} has no top-k step to keep "
                          "the object's tokens first (sparse_tuning, evit)")
    if cfg.optim.attention_guide > 0:
        layers = list(cfg.optim.attention_guide_layers)
        try:
            model.set_attention_guide(cfg.optim.attention_guide, layers)
        except ValueError as err:
            raise ConfigError(f"optim.attention_guide_layers={layers}: {err}") from err


def eval_dataset(cfg: DictConfig, records: list[VideoRecord], *, temporal_views: int = 1,
                 spatial_views: int = 1) -> VideoClipDataset:
    transform = EvalTransform(size=cfg.data.size, short_side=cfg.data.short_side, num_crops=spatial_views)
    return VideoClipDataset(records, mode="test", clip=clip_spec(cfg, temporal_views=temporal_views,
                                                                 spatial_views=spatial_views),
                            transform=transform, backend=cfg.data.backend, decode_threads=cfg.data.decode_threads)


def output_path(cfg: DictConfig, *parts: str) -> str:
    return os.path.join(cfg.output_dir, *parts)
