"""Run configuration: typed defaults (dataclasses) + YAML deltas + CLI ``key=value`` overrides, merged once.

``load_config(["configs/datasets/k400.yaml", "configs/methods/lora.yaml"], ["optim.lr=5e-4", "data.root=/data/k400"])``
returns a validated, read-only OmegaConf object: the defaults, then each file (after its own ``base:`` files) left
to right, then the overrides. A file's ``base:`` is one path or a list of paths, relative to the file, merged in
order before it. Every key of every file and of the overrides is checked against the schema before merging, so a
typo is an error naming the key, where it came from, and the closest valid key. The ``model`` section holds the
keyword arguments of :func:`video_st.create_model`; it is checked against :func:`model_keys` (create_model's own
arguments, the backbone's and the method table's options) rather than repeated here.

Clip geometry is stated once, in ``data.num_frames`` and ``data.size``; the model is built at that geometry. A
``model.num_frames`` / ``model.img_size`` anywhere (a file or the command line) must equal it (anything else is a
ConfigError naming both keys) and is dropped from the resolved config. The resolved config is saved beside the
checkpoints.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError
from .fileio import write_atomic


@dataclass
class DataConfig:
    dataset: str = "k400"  # k400 (CSV) | ssv2 (labels + split JSON) | list ("path label") | frames | folder (CLASS/ dirs)
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
    # Training only, a diagnostic: the top-k steps (Sparse-Tuning, EViT) keep the ground-truth object's tokens
    # first, from the train split's masks (annotations/train_masks.npz beside the train file, data/masks.py; the
    # hard generated style writes them). Says what a perfect scorer in training would give (bench/hard_oracle).
    object_first: bool = False


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
    # The attention guide (models/guide.py), for making a stand-in pre-trained backbone on generated data: the
    # weight of a loss that draws the [CLS] attention of `attention_guide_layers` (1-based; empty: every layer)
    # onto the object's tokens, from the train split's masks as data.object_first reads them. 0: off.
    attention_guide: float = 0.0
    attention_guide_layers: list[int] = field(default_factory=list)


@dataclass
class EngineConfig:
    kind: str = "deepspeed"  # deepspeed | ddp (DistributedDataParallel + torch.amp, same loop)
    # bf16 | fp16 (dynamic loss scaling) | fp32, in both engines as asked: bf16 also runs on a CPU (slower than
    # fp32 there, but it is what the GPU run will do); fp16 needs a GPU and is refused on a CPU.
    precision: str = "bf16"
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
    # Test a reducing model at other keep rates than it was trained with (one float, or one per stage), on
    # purpose: printed and recorded in summary.json. None: the trained keep rates (model.keep_rate must agree).
    keep_rate: Any = None


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
    "data.dataset": ("k400", "ssv2", "list", "frames", "folder"),
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


# model.<key> that repeats data.<key>: the clip geometry, stated in the data section only.
GEOMETRY = {"model.num_frames": "data.num_frames", "model.img_size": "data.size"}


def model_keys() -> set[str]:
    """Valid keys of the ``model`` section: create_model's own, the backbone's and every method's options (the
    method table then refuses an option its method does not take)."""
    from .models.factory import model_keys as keys

    return keys()


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
        if path in GEOMETRY:  # accepted here, checked against the data section after merging (_check_geometry)
            continue
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


Layer = tuple[str, DictConfig]  # (where it came from, its keys)

def _read_yaml(path: str, valid: set[str], chain: tuple[str, ...]) -> list[Layer]:
    """The file's layers: its ``base:`` file(s) first, in order (paths relative to the file), then the file."""
    if path in chain:
        raise ConfigError(f"config base cycle: {' -> '.join(chain + (path,))}")
    try:
        delta = OmegaConf.load(path)
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot read config {path}: {_yaml_error(err)}") from err
    except (OSError, OmegaConfBaseException, ValueError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from err
    if not isinstance(delta, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    layers: list[Layer] = []
    if "base" in delta:
        for base in _base_paths(delta.pop("base"), path):
            layers += _read_yaml(base, valid, chain + (path,))
    _check_keys(_delta_paths(OmegaConf.to_container(delta)), valid, path)
    return layers + [(path, delta)]


def _base_paths(value: Any, path: str) -> list[str]:
    items = list(value) if isinstance(value, ListConfig) else [value]
    if not items or any(not isinstance(item, str) or not item for item in items):
        raise ConfigError(f"{path}: base must be a path or a list of paths (relative to the file), got {value!r}")
    return [os.path.join(os.path.dirname(path), item) for item in items]


def _yaml_error(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    if not isinstance(err, yaml.MarkedYAMLError) or mark is None:
        return f"invalid YAML: {err}"
    context = f" ({err.context})" if err.context else ""
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {err.problem}{context}"


def _config_paths(path: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[str]:
    if path is None:
        return []
    if isinstance(path, (str, os.PathLike)):
        return [os.fspath(path)]
    return [os.fspath(p) for p in path]


def load_config(
    path: str | os.PathLike | Sequence[str | os.PathLike] | None = None, overrides: Sequence[str] = ()
) -> DictConfig:
    """Typed defaults <- YAML file(s), left to right, each after its ``base:`` files <- ``key=value`` overrides,
    validated; returns a read-only config. ``path`` is one file or a list (e.g. a dataset file and a method
    file)."""
    schema = OmegaConf.structured(Config)
    valid = _schema_paths(schema)
    layers: list[Layer] = [("the defaults", schema)]
    for file in _config_paths(path):
        layers += _read_yaml(file, valid, chain=())
    cli = _parse_overrides(overrides)
    _check_keys(_delta_paths(OmegaConf.to_container(cli)), valid, "command-line overrides")
    layers.append(("command-line overrides", cli))
    try:
        cfg = OmegaConf.merge(*(layer for _, layer in layers))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        raise ConfigError(f"invalid value for {key!r}: {str(getattr(err, 'msg', err)).splitlines()[0]}") from err
    _check_geometry(cfg, layers)
    _check_values(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


_UNSET = object()


def _origin(layers: list[Layer], key: str) -> str:
    """The last layer that sets ``key``."""
    for origin, layer in reversed(layers):
        if OmegaConf.select(layer, key, default=_UNSET) is not _UNSET:
            return origin
    return "the defaults"


def _check_geometry(cfg: DictConfig, layers: list[Layer]) -> None:
    """model.num_frames / model.img_size may only repeat data.num_frames / data.size; then they are dropped."""
    for model_key, data_key in GEOMETRY.items():
        name = model_key[len("model."):]
        if name not in cfg.model:
            continue
        stated, wanted = cfg.model[name], OmegaConf.select(cfg, data_key)
        if stated is not None and stated != wanted:
            raise ConfigError(
                f"{model_key}={stated!r} ({_origin(layers, model_key)}) but {data_key}={wanted!r} "
                f"({_origin(layers, data_key)}): clip geometry is stated once, in {data_key}; drop {model_key}"
            )
        cfg.model.pop(name)


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
    if cfg.optim.attention_guide < 0:
        raise ConfigError(f"optim.attention_guide must be >= 0 (0: off), got {cfg.optim.attention_guide}")
    if cfg.optim.attention_guide_layers and not cfg.optim.attention_guide:
        raise ConfigError(f"optim.attention_guide_layers={list(cfg.optim.attention_guide_layers)} does nothing with "
                          "optim.attention_guide=0: give the guide a weight, or drop the layers")
    user = masks_user(cfg)
    if user:
        # the masks follow a clip through the loader's crop and flip; these would move pixels or blend clips
        if cfg.data.rand_augment is not None:
            raise ConfigError(f"{user} needs data.rand_augment=null, got {list(cfg.data.rand_augment)}: "
                              "RandAugment's geometric ops would move the pixels off their masks")
        for key in ("optim.mixup_alpha", "optim.cutmix_alpha"):
            if OmegaConf.select(cfg, key):
                raise ConfigError(f"{user} needs {key}=0, got {OmegaConf.select(cfg, key)}: "
                                  "a blend of two clips has no one object")


def masks_user(cfg: DictConfig) -> str | None:
    """The setting that has the training loader read the train split's masks (data/masks.py), as it reads in an
    error message; None when none does."""
    if cfg.data.object_first:
        return "data.object_first=true"
    if cfg.optim.attention_guide > 0:
        return f"optim.attention_guide={cfg.optim.attention_guide}"
    return None


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    """The resolved config as YAML, written atomically."""
    write_atomic(path, OmegaConf.to_yaml(cfg, resolve=True))


def to_dict(node: DictConfig | ListConfig) -> Any:
    return OmegaConf.to_container(node, resolve=True)
