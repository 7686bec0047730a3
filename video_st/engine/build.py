"""Config -> model, datasets and transforms; shared by training (engine/train.py) and testing (tools/test_net.py)."""

from __future__ import annotations

import os

import torch
from omegaconf import DictConfig

from ..config import ConfigError, to_dict
from ..data.annotations import (
    VideoRecord,
    load_class_names,
    read_frame_list,
    read_k400_csv,
    read_path_label_list,
    read_ssv2,
)
from ..data.datasets import ClipSpec, VideoClipDataset, check_files
from ..data.transforms import EvalTransform, TrainTransform
from ..models.factory import create_model
from ..models.vit import VideoViT


def build_model(cfg: DictConfig, **overrides) -> VideoViT:
    """The model of ``cfg.model``, initialised from ``engine.seed`` (identical on every rank)."""
    kwargs = {**to_dict(cfg.model), **overrides}
    arch = kwargs.pop("arch")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.engine.seed)
        return create_model(arch, **kwargs)


def split_file(cfg: DictConfig, split: str) -> str:
    path = cfg.data[split] or (cfg.data.val if split == "test" else "")
    if not path:
        raise ConfigError(f"data.{split} is empty: give the annotation file of the {split} split")
    return path


def read_split(cfg: DictConfig, split: str, class_names: list[str] | None = None) -> tuple[list[VideoRecord], list[str]]:
    """Records of ``split`` ("train", "val", "test") and the class names (from the training file for K400 when not
    given), with missing files checked all at once."""
    data, path = cfg.data, split_file(cfg, split)
    if data.dataset == "k400":
        records, names = read_k400_csv(path, data.root, class_names)
    elif data.dataset == "ssv2":
        if not data.labels:
            raise ConfigError("data.labels is empty: SSv2 needs its labels JSON")
        records, names = read_ssv2(data.labels, path, data.root)
    else:
        reader = read_path_label_list if data.dataset == "list" else read_frame_list
        records = reader(path, data.root)
        names = class_names or (load_class_names(data.labels) if data.labels else
                                [str(i) for i in range(max(r.label for r in records) + 1)])
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
    return VideoClipDataset(records, mode="train", clip=clip_spec(cfg), transform=transform, backend=data.backend,
                            decode_threads=data.decode_threads, repeats=data.repeats, seed=cfg.engine.seed)


def eval_dataset(cfg: DictConfig, records: list[VideoRecord], *, temporal_views: int = 1,
                 spatial_views: int = 1) -> VideoClipDataset:
    transform = EvalTransform(size=cfg.data.size, short_side=cfg.data.short_side, num_crops=spatial_views)
    return VideoClipDataset(records, mode="test", clip=clip_spec(cfg, temporal_views=temporal_views,
                                                                 spatial_views=spatial_views),
                            transform=transform, backend=cfg.data.backend, decode_threads=cfg.data.decode_threads)


def output_path(cfg: DictConfig, *parts: str) -> str:
    return os.path.join(cfg.output_dir, *parts)
