"""What a preprocessing job is: its :class:`JobSpec`, its full video list (:func:`plan`, read from the input by
:mod:`video_st.data.annotations`), how the list is sharded, and where each output, manifest and list goes.

Pure bookkeeping, no decoding: the jobs themselves are :mod:`video_st.preprocess.run`, which uses
these names. See its docstring for the input formats and the files under OUTPUT.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigError
from ..data.annotations import (
    VIDEO_EXTENSIONS,
    AnnotationError,
    VideoRecord,
    load_class_names,
    read_k400_csv,
    read_ssv2,
)
from ..data.folders import read_video_folder
from ..data.lists import read_path_label_list

_log = logging.getLogger(__name__)

SUBCOMMANDS = ("scan", "resize", "frames")
CLASSES_FILE = "classes.json"  # frames: the class names the frame list's labels index
RESIZE_SHORT_SIDE = 320  # resize's default short side: Kinetics' common "320p" copies
INPUT_FORMATS = ("auto", "folder", "k400", "list", "ssv2")


@dataclass(frozen=True)
class VideoItem:
    index: int  # position in the full input list: sharding and merged lists follow it
    source: str  # absolute path of the video
    rel: str  # path relative to the input root, mirrored under OUTPUT
    label: int  # -1 where the input has none (folder input, unlabelled splits)


@dataclass(frozen=True)
class JobSpec:
    """Everything that defines a job's outputs (sharding and workers do not: they only split the work)."""

    subcommand: str
    input: str
    output: str
    root: str | None = None  # annotation input: videos are relative to it (default: the annotation's folder)
    input_format: str = "auto"
    classes: str | None = None  # K400: class names (JSON list or one per line); default the CSV's sorted names
    ssv2_labels: str | None = None  # SSv2: the labels JSON (template -> index); ``input`` is the split JSON
    short_side: int | None = None  # resize: None -> RESIZE_SHORT_SIDE; frames: None -> the source's size
    crf: int = 23
    preset: str = "medium"
    # Extra libx264 options ("key=value:key=value"). "mbtree=0" makes re-encodes bit-identical for tiny frames
    # whose width is not a multiple of 16, where x264's MB-tree rate control reads uninitialised memory
    # (seen at 54x40; 426x320 and 568x320 were bit-identical run to run with the defaults).
    x264_params: str = ""
    gop: int | None = None  # resize: a keyframe every ``gop`` frames (1: all-intra); None: x264's default (250)
    threads: int = 0  # encoder threads per video; 0 = the codec's choice
    fps: float | None = None
    quality: int = 90

    def __post_init__(self) -> None:
        checks = [
            (self.subcommand in SUBCOMMANDS, f"subcommand must be one of {SUBCOMMANDS}, got {self.subcommand!r}"),
            (self.input_format in INPUT_FORMATS, f"input format must be one of {INPUT_FORMATS}"),
            (self.short_side is None or self.short_side >= 2, f"short side must be at least 2, got {self.short_side}"),
            (self.gop is None or self.gop >= 1, f"GOP must be at least 1 frame, got {self.gop}"),
            (0 <= self.crf <= 51, f"crf must be in 0..51, got {self.crf}"),
            (self.threads >= 0, f"threads must be >= 0, got {self.threads}"),
            (self.fps is None or self.fps > 0, f"fps must be positive, got {self.fps}"),
            (1 <= self.quality <= 100, f"JPEG quality must be in 1..100, got {self.quality}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


# ---------------------------------------------------------------------------------------------------- inputs


def read_inputs(
    path: str | os.PathLike, *, root: str | os.PathLike | None = None, input_format: str = "auto",
    classes: str | os.PathLike | None = None, ssv2_labels: str | os.PathLike | None = None,
) -> list[VideoItem]:
    """The videos of a folder, a K400 CSV, a ``path label`` list or an SSv2 split JSON, in input order (see the
    module docstring), read by :mod:`video_st.data.annotations`."""
    return _read(path, root=root, input_format=input_format, classes=classes, ssv2_labels=ssv2_labels)[0]


def class_names(spec: JobSpec) -> list[str] | None:
    """The class names the items' integer labels index (K400: the CSV's sorted names or ``classes``; SSv2: the
    labels JSON), None where the input has none (a folder, a list). The frames job writes them to
    ``OUTPUT/classes.json`` so that a frame list is matched to a model by class name (``data.labels``)."""
    return _read(spec.input, root=spec.root, input_format=spec.input_format, classes=spec.classes,
                 ssv2_labels=spec.ssv2_labels)[1]


def _read(
    path: str | os.PathLike, *, root: str | os.PathLike | None, input_format: str,
    classes: str | os.PathLike | None, ssv2_labels: str | os.PathLike | None,
) -> tuple[list[VideoItem], list[str] | None]:
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise ConfigError(f"input not found: {path}")
    kind = _input_kind(path, input_format)
    if classes is not None and kind != "k400":
        raise ConfigError(f"--classes is for a K400 CSV; {path} is read as {kind}")
    if ssv2_labels is not None and kind != "ssv2":
        raise ConfigError(f"--ssv2-labels is for an SSv2 split JSON; {path} is read as {kind}")
    names = None
    if kind == "folder":
        records = read_video_folder(path)
    else:
        base = os.path.abspath(os.fspath(root)) if root is not None else os.path.dirname(path)
        if not os.path.isdir(base):
            raise ConfigError(f"video root not found: {base}")
        if kind == "k400":
            records, names = _read_k400(path, root=base, classes=classes)
        elif kind == "ssv2":
            if ssv2_labels is None:
                raise ConfigError(f"SSv2 input {path} needs its labels JSON (--ssv2-labels)")
            labels = _existing(ssv2_labels, "SSv2 labels file")
            records, names = read_ssv2(labels, path, base, ext=_ssv2_extension(base))
        else:
            records = read_path_label_list(path, base)
    return [_item(i, record) for i, record in enumerate(records)], names


def _item(index: int, record: VideoRecord) -> VideoItem:
    return VideoItem(index, record.path, record.rel, record.label)


def _input_kind(path: str, input_format: str) -> str:
    if input_format not in INPUT_FORMATS:
        raise ConfigError(f"input format must be one of {INPUT_FORMATS}, got {input_format!r}")
    is_dir = os.path.isdir(path)
    if input_format == "auto":
        if is_dir:
            return "folder"
        return {".csv": "k400", ".json": "ssv2"}.get(os.path.splitext(path)[1].lower(), "list")
    if (input_format == "folder") != is_dir:
        raise ConfigError(f"--input-format {input_format} does not fit {path}")
    return input_format


def _existing(path: str | os.PathLike, what: str) -> str:
    if not os.path.isfile(path):
        raise ConfigError(f"{what} not found: {os.fspath(path)}")
    return os.fspath(path)


def _read_k400(path: str, *, root: str, classes: str | os.PathLike | None) -> tuple[list[VideoRecord], list[str]]:
    names = None
    if classes is not None:
        classes = _existing(classes, "class list")
        try:
            names = load_class_names(classes)
        except json.JSONDecodeError as err:
            raise AnnotationError(classes, err.lineno, f"invalid JSON: {err.msg}") from err
    records, names = read_k400_csv(path, root, class_names=names)
    _log.info("K400 labels: %d classes, %s", len(names), f"from {classes}" if classes else "sorted names")
    return records, names


def _ssv2_extension(root: str) -> str:
    """SSv2 ships ``{id}.webm``; a converted copy may use another container: the extension most videos in ROOT
    have (one listing), .webm when ROOT holds no video."""
    try:
        exts = Counter(os.path.splitext(name)[1] for name in os.listdir(root))
    except OSError:
        return ".webm"
    found = [ext for ext in exts if ext.lower() in VIDEO_EXTENSIONS]
    ext = max(found, key=lambda e: (exts[e], e == ".webm")) if found else ".webm"
    if ext != ".webm":
        _log.info("SSv2 videos in %s are %s files", root, ext)
    return ext


def plan(spec: JobSpec) -> list[VideoItem]:
    """The job's full, deterministic video list: read, duplicates dropped, output collisions refused."""
    items = read_inputs(spec.input, root=spec.root, input_format=spec.input_format, classes=spec.classes,
                        ssv2_labels=spec.ssv2_labels)
    output = os.path.abspath(spec.output)
    if os.path.isdir(spec.input) and _is_within(output, os.path.abspath(spec.input)):
        # A later run would list the outputs (and temporaries) as inputs.
        raise ConfigError(f"output {output} is inside the input folder {spec.input}")
    unique, seen, owners = [], set(), {}
    for item in items:
        if item.rel in seen:
            _log.warning("duplicate input %s (kept the first)", item.rel)
            continue
        seen.add(item.rel)
        if spec.subcommand != "scan":
            target = output_path(item, spec=spec)
            if target in owners:
                raise ConfigError(f"{owners[target]} and {item.rel} would both write {target}")
            owners[target] = item.rel
        unique.append(VideoItem(len(unique), item.source, item.rel, item.label))
    return unique


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def shard_items(items: Sequence[VideoItem], *, shard: int, num_shards: int) -> list[VideoItem]:
    """Every ``num_shards``-th video starting at ``shard``: deterministic, and shards get similar mixes."""
    check_shard(shard=shard, num_shards=num_shards)
    return list(items[shard::num_shards])


def check_shard(*, shard: int, num_shards: int) -> None:
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ConfigError(f"shard {shard} is not in 0..{num_shards - 1}")


# --------------------------------------------------------------------------------------------------- paths


def output_path(item: VideoItem, *, spec: JobSpec) -> str | None:
    """resize: the mirrored path with ``.mp4``; frames: the mirrored path without extension (a folder); scan: None."""
    if spec.subcommand == "scan":
        return None
    stem = os.path.join(os.path.abspath(spec.output), os.path.splitext(item.rel)[0])
    return stem + ".mp4" if spec.subcommand == "resize" else stem


def manifest_path(output: str, subcommand: str, *, shard: int, num_shards: int) -> str:
    return os.path.join(output, f"manifest.{subcommand}{_shard_suffix(shard, num_shards)}.jsonl")


def list_path(output: str, subcommand: str, *, shard: int | None = None, num_shards: int = 1) -> str | None:
    """frames: ``frames.txt``; scan: ``invalid.txt``; with ``shard`` and n > 1 the shard's own list."""
    name = {"frames": "frames", "scan": "invalid"}.get(subcommand)
    if name is None:
        return None
    suffix = _shard_suffix(shard, num_shards) if shard is not None else ""
    return os.path.join(output, f"{name}{suffix}.txt")


def _shard_suffix(shard: int, num_shards: int) -> str:
    return "" if num_shards == 1 else f".shard{shard}of{num_shards}"
