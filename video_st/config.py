"""Run configuration: typed defaults (dataclasses) + a YAML delta + CLI ``key=value`` overrides, merged once.

``load_config("configs/k400/sparse_tuning_vit_b16.yaml", ["optim.lr=5e-4", "data.root=/data/k400"])`` returns a
validated OmegaConf object. Every key of the YAML file and of the overrides is checked against the schema before
merging, so a typo is an error naming the key, where it came from, and the closest valid key. The ``model``
section holds the keyword arguments of :func:`video_st.create_model`; it is checked against the signatures of
``create_model`` and ``VideoViT`` rather than repeated here. The resolved config is saved beside the checkpoints.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .fileio import write_atomic


class ConfigError(ValueError):
    pass


@dataclass
class DataConfig:
    dataset: str = "k400"  # k400 (official CSV) | ssv2 (labels + split JSON) | list ("path label") | frames
    root: str = ""  # folder the annotation paths are relative to
    train: str = ""  # annotation file of each split
    val: str = ""
    test: str = ""  # the multi-view test split; empty: the val file
    labels: str = ""  # SSv2 labels JSON, or a class-name list for `list` / `frames`
    scan_list: str | None = None  # invalid-file list of `tools/preprocess.py scan`: those videos are excluded
    missing: str = "error"  # missing files at start: error (list them all) | skip (warn and exclude)
    backend: str = "decord"
    decode_threads: int = 1
    num_workers: int = 4
    batch_size: int = 8  # clips per process per micro-step
    num_frames: int = 8
    sampling: str = "dense"  # dense (K400: frames `stride` apart) | segment (SSv2: TSN segments)
    stride: int = 8
    size: int = 224
    short_side: int | None = None  # test-time resize before cropping; None: `size`
    scale: list[float] = field(default_factory=lambda: [0.25, 1.0])  # random resized crop area range
    hflip: str = "flip"  # flip | none (SSv2) | swap (flip and map labels through `label_swap`)
    label_swap: list[list[int]] = field(default_factory=list)  # mirrored class pairs for hflip=swap
    rand_augment: list[int] | None = field(default_factory=lambda: [2, 9])  # [num_ops, magnitude] or null
    augment_on: str = "device"  # where RandAugment + normalisation run: device (batched, after transfer) | worker
    repeats: int = 1  # repeated augmentation: clips drawn per video per step


@dataclass
class OptimConfig:
    lr: float = 1e-3  # at `base_batch`; scaled linearly to the global batch
    base_batch: int = 128
    global_batch: int | None = None  # None: batch_size x world size (no accumulation)
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    layer_decay: float | None = None  # layer-wise lr decay (full fine-tuning), e.g. 0.75
    epochs: int = 12
    warmup_epochs: float = 2.0
    min_lr: float = 1e-6
    clip_grad: float | None = None  # max global gradient norm
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.0  # 0 turns mixup off (and cutmix_alpha 0 cutmix)
    cutmix_alpha: float = 0.0
    cutmix_prob: float = 0.5  # share of mixed batches that use cutmix rather than mixup
    ema_decay: float | None = None  # EMA of the trainable weights, e.g. 0.9999
    keep_rate_warmup_epochs: float = 0.0  # Sparse-Tuning: keep rate 1.0 -> target over these epochs


@dataclass
class EngineConfig:
    kind: str = "deepspeed"  # deepspeed | ddp (DistributedDataParallel + torch.amp, same loop)
    precision: str = "bf16"  # bf16 | fp16 (dynamic loss scaling) | fp32; on a CPU-only machine bf16/fp16 -> fp32
    zero_stage: int = 0  # 0 | 1 | 2
    device: str = "auto"  # auto (cuda when present) | cuda | cpu
    seed: int = 0
    deterministic: bool = False
    grad_checkpointing: bool = False
    max_steps: int | None = None  # stop after this many optimizer steps (smoke runs); None: `optim.epochs`


@dataclass
class CheckpointConfig:
    dir: str = ""  # empty: OUTPUT_DIR/checkpoints
    every_epochs: int = 1
    every_steps: int = 0  # also every N optimizer steps (0: off)
    keep_last: int = 2
    resume: str = "auto"  # auto (newest valid checkpoint, if any) | none | a checkpoint directory


@dataclass
class TestConfig:
    temporal_views: int = 1
    spatial_views: int = 3
    ensemble: str = "prob"  # prob (mean softmax) | logit (mean logits) | max (max softmax)
    batch_size: int = 4  # videos per batch (each contributes temporal x spatial views)
    checkpoint: str = ""  # empty: the run's best checkpoint


@dataclass
class LogConfig:
    every_steps: int = 10
    tensorboard: bool = True
    progress: bool = True


@dataclass
class Config:
    output_dir: str = "outputs/run"
    model: dict[str, Any] = field(default_factory=lambda: {"arch": "vit_base_patch16", "method": "sparse_tuning"})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    test: TestConfig = field(default_factory=TestConfig)
    log: LogConfig = field(default_factory=LogConfig)


CHOICES: dict[str, tuple[Any, ...]] = {
    "data.dataset": ("k400", "ssv2", "list", "frames"),
    "data.missing": ("error", "skip"),
    "data.backend": ("decord", "pyav"),
    "data.sampling": ("dense", "segment"),
    "data.hflip": ("flip", "none", "swap"),
    "data.augment_on": ("device", "worker"),
    "engine.kind": ("deepspeed", "ddp"),
    "engine.precision": ("bf16", "fp16", "fp32"),
    "engine.zero_stage": (0, 1, 2),
    "engine.device": ("auto", "cuda", "cpu"),
    "test.ensemble": ("prob", "logit", "max"),
}


def model_keys() -> set[str]:
    """Valid keys of the ``model`` section: create_model's own arguments and VideoViT's."""
    from .models.factory import create_model
    from .models.vit import VideoViT

    keys = set(inspect.signature(create_model).parameters) | set(inspect.signature(VideoViT.__init__).parameters)
    return keys - {"self", "kwargs"}


def _schema_paths(node: Any, prefix: str = "") -> set[str]:
    paths = set()
    for key, value in node.items():
        path = f"{prefix}{key}"
        paths.add(path)
        if isinstance(value, DictConfig) and key != "model":
            paths |= _schema_paths(value, f"{path}.")
    return paths


def _delta_paths(node: Mapping[str, Any], prefix: str = "") -> Iterable[str]:
    for key, value in node.items():
        path = f"{prefix}{key}"
        yield path
        if isinstance(value, Mapping):
            if path == "model":  # one level: model kwargs may themselves be mappings
                yield from (f"model.{k}" for k in value)
            else:
                yield from _delta_paths(value, f"{path}.")


def _check_keys(paths: Iterable[str], valid: set[str], origin: str) -> None:
    for path in paths:
        if path.startswith("model."):
            name, candidates = path[len("model."):], model_keys()
            if "." in name or name not in candidates:
                raise ConfigError(_unknown(path, {f"model.{k}" for k in candidates}, origin))
        elif path not in valid:
            raise ConfigError(_unknown(path, valid, origin))


def _unknown(path: str, valid: set[str], origin: str) -> str:
    close = difflib.get_close_matches(path, sorted(valid), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown config key {path!r} in {origin}{hint}"


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(f"command-line overrides: {err}") from err


def _read_yaml(path: str, valid: set[str], chain: tuple[str, ...]) -> list[DictConfig]:
    """The file's layers: its ``base:`` file(s) first (a path relative to the file), then the file itself."""
    if path in chain:
        raise ConfigError(f"config base cycle: {' -> '.join(chain + (path,))}")
    try:
        delta = OmegaConf.load(path)
    except (OSError, OmegaConfBaseException, ValueError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from err
    if not isinstance(delta, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    layers: list[DictConfig] = []
    if "base" in delta:
        base = os.path.join(os.path.dirname(path), str(delta.pop("base")))
        layers += _read_yaml(base, valid, chain + (path,))
    _check_keys(_delta_paths(OmegaConf.to_container(delta)), valid, path)
    return layers + [delta]


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Typed defaults <- YAML file (after its ``base:`` chain) <- ``key=value`` overrides, validated; returns a
    read-only config."""
    schema = OmegaConf.structured(Config)
    valid = _schema_paths(schema)
    layers = [schema]
    if path is not None:
        layers += _read_yaml(os.fspath(path), valid, chain=())
    cli = _parse_overrides(overrides)
    _check_keys(_delta_paths(OmegaConf.to_container(cli)), valid, "command-line overrides")
    layers.append(cli)
    try:
        cfg = OmegaConf.merge(*layers)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        raise ConfigError(f"invalid value for {key!r}: {str(getattr(err, 'msg', err)).splitlines()[0]}") from err
    _check_values(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _check_values(cfg: DictConfig) -> None:
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}: expected one of {', '.join(map(repr, allowed))}")
    if "arch" not in cfg.model:
        raise ConfigError("model.arch is required")
    for key in ("data.batch_size", "optim.base_batch", "optim.epochs", "checkpoint.keep_last", "log.every_steps",
                "test.temporal_views", "test.spatial_views", "test.batch_size", "data.num_frames", "data.repeats"):
        if OmegaConf.select(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {OmegaConf.select(cfg, key)}")
    if len(cfg.data.scale) != 2 or not 0 < cfg.data.scale[0] <= cfg.data.scale[1] <= 1:
        raise ConfigError(f"data.scale must be [min, max] within (0, 1], got {list(cfg.data.scale)}")
    if cfg.data.rand_augment is not None and len(cfg.data.rand_augment) != 2:
        raise ConfigError(f"data.rand_augment must be [num_ops, magnitude] or null, got {list(cfg.data.rand_augment)}")


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    """The resolved config as YAML, written atomically."""
    write_atomic(path, OmegaConf.to_yaml(cfg, resolve=True))


def to_dict(node: DictConfig | ListConfig) -> Any:
    return OmegaConf.to_container(node, resolve=True)
