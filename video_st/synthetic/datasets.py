"""Small synthetic video-classification datasets in the real on-disk formats of Kinetics-400 and SSv2.

The demo and test data. Every video is a static random textured background with one or two random shapes (square
or disc, random hue, brighter than the background) moving across it; the class is ONLY the motion (direction, speed).
Colours, shapes, sizes, start positions and background are drawn independently of the class, so a single frame
cannot tell the class: frame 0 of a video is the same whatever its class (see :func:`render_frames`). The hard
style is harder on purpose (:mod:`.hard`: a small object among look-alikes, classes told by the order of motions).

K400 layout (``make_k400_style``)::

    ROOT/annotations/{train,val}.csv          label,youtube_id,time_start,time_end,split
    ROOT/{train,val}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4      H.264, yuv420p, no audio

SSv2 layout (``make_ssv2_style``)::

    ROOT/something-something-v2-labels.json       {"Moving something from left to right": "0", ...}
    ROOT/something-something-v2-{train,validation}.json   [{"id", "label", "template", "placeholders"}, ...]
    ROOT/videos/{id}.webm                         VP9, yuv420p, no audio

Hard layout (``make_hard_style``, the task in :mod:`.hard`): the K400 layout plus
``ROOT/annotations/{train,val}_masks.npz``, per video id the pixels the object covers (format: :mod:`.masks`).

All styles also write ``ROOT/classes.json`` (class names in index order) and ``ROOT/corrupt.json`` (planted corrupt
files, which keep their annotation rows like failed downloads). Class indices follow the alphabetical order of
the class names, as in the real label files, so a loader that sorts the label names agrees with classes.json.

Every file is written to ``name + ".tmp"`` and renamed, so a killed run never leaves a half-written video that
looks valid; the annotation files are written after all videos and ``classes.json`` last, so its presence marks
a complete dataset. Same seed -> byte-identical files (single-threaded encoders, bit-exact muxers).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..data.annotations import strip_template
from ..fileio import write_atomic
from .corrupt import CORRUPT_KINDS, CorruptFile, plant_corrupt
from .files import (SPLITS, SSV2_FILES, VP9, X264, encode, to_json, write_k400_annotations,
                    write_ssv2_annotations)
from .hard import DISTRACTORS as HARD_DISTRACTORS
from .hard import hard_classes, render_hard, sample_hard_scene
from .items import k400_items, plan_labels, ssv2_items
from ..data.masks import masks_path, video_id_of, write_masks
from .scenes import add_grain, class_motions, render_frames, sample_scene

_log = logging.getLogger(__name__)

STYLES = ("k400", "ssv2", "hard")


# decord2 3.4 cannot return frames of these widths (its RGB copy fails: "Check failed: from_size == to_size");
# measured for every even width from 16 to 400 and several heights. The project reads videos with decord.
DECORD_UNREADABLE_WIDTHS = frozenset({16, 24, 32, 48, 96, 144})

# ----------------------------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class DatasetSummary:
    style: str
    root: str
    classes: tuple[str, ...]  # index order, as in classes.json
    annotation_files: dict[str, str]  # "train", "val" (and "labels" for SSv2) -> absolute path
    num_videos: dict[str, int]  # per split, corrupt files included
    corrupt: tuple[CorruptFile, ...]
    classes_file: str
    corrupt_file: str
    seconds: float = field(default=0.0, compare=False)
    mask_files: dict[str, str] = field(default_factory=dict)  # "train", "val" -> absolute path (hard style)

    def describe(self) -> str:
        splits = ", ".join(f"{split} {n}" for split, n in self.num_videos.items())
        return (f"{self.style}: {sum(self.num_videos.values())} videos ({splits}), {len(self.classes)} classes, "
                f"{len(self.corrupt)} corrupt -> {self.root} in {self.seconds:.1f} s")


# ----------------------------------------------------------------------------------------------- public API


def make_dataset(
    root: str | os.PathLike,
    *,
    style: str,
    num_classes: int = 4,
    train_per_class: int = 16,
    val_per_class: int = 4,
    num_frames: int = 32,
    height: int = 66,
    width: int = 88,
    fps: int = 10,
    seed: int = 0,
    corrupt: Mapping[str, int] | None = None,
    overwrite: bool = False,
    grain: float = 0.0,
    task: str = "target",
    distractors: int | None = None,
    show_object: bool = True,
) -> DatasetSummary:
    """A generated dataset in the real format of ``style`` under ``root``.

    - ``"k400"``: Kinetics-400-style, CSV annotations, H.264 MP4 per split folder; classes "moving
      left/right/up/down" (num_classes <= 4), then the same directions "... fast" (up to 8).
    - ``"ssv2"``: Something-Something-v2-style, labels/train/validation JSON, VP9 WebM in videos/; templates
      "Moving [something] from left to right", "... from right to left", "Pushing [something] up", "Pulling
      [something] down", then "Quickly ..." versions (up to 8).
    - ``"hard"``: the K400 layout plus ``annotations/{train,val}_masks.npz`` (:mod:`.masks`); a small object among
      ``distractors`` look-alikes (default: 3 for the target task, 5 for pretrain) over a panning texture
      (:mod:`.hard`). ``task="target"``: "moving right then up", "moving up then right", ... (8: perpendicular
      directions in both orders, told apart only by their order); ``task="pretrain"``: "moving left first", ...
      "moving up-right first" (8: the direction of the first half; every sprite moves with it, then turns by the
      video's own rotation); ``task="pretrain_object"``: the same classes, the object alone moving with them (the
      distractors ride on the background). ``show_object=False`` writes the same videos without the object (a
      control with no class left in it; the masks stay).
      ``make_hard_style`` has its defaults: 8 classes x (128 + 16) videos of 16 frames of 64 x 64.

    ``corrupt`` maps kind -> count ("zero", "truncated", "garbage"), planted among train and val videos.
    Refuses a non-empty ``root`` unless ``overwrite`` (which replaces only the files this module writes).
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if style != "hard" and (task, distractors, show_object) != ("target", None, True):
        raise ValueError(f"task, distractors and show_object are options of the hard style, not of {style!r}")
    if style == "hard" and distractors is not None and distractors < 0:
        raise ValueError(f"distractors must be >= 0, got {distractors}")
    if distractors is None:
        distractors = HARD_DISTRACTORS.get(task, 0)  # an unknown task is refused with the class check
    return _make(root, style=style, num_classes=num_classes, train_per_class=train_per_class,
                 val_per_class=val_per_class, num_frames=num_frames, height=height, width=width, fps=fps,
                 seed=seed, corrupt=corrupt, overwrite=overwrite, grain=grain,
                 hard=_HardOptions(task, distractors, show_object))


# The styles by name (what the tools and tests call).
make_k400_style = functools.partial(make_dataset, style="k400")
make_ssv2_style = functools.partial(make_dataset, style="ssv2")
make_hard_style = functools.partial(make_dataset, style="hard", num_classes=8, train_per_class=128, val_per_class=16,
                                    num_frames=16, height=64, width=64)


# ----------------------------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class _HardOptions:
    task: str
    distractors: int
    show_object: bool


def _make(root: str | os.PathLike, *, style: str, num_classes: int, train_per_class: int, val_per_class: int,
          num_frames: int, height: int, width: int, fps: int, seed: int, corrupt: Mapping[str, int] | None,
          overwrite: bool, grain: float = 0.0, hard: _HardOptions) -> DatasetSummary:
    start = time.perf_counter()
    corrupt = dict(corrupt or {})
    _check_args(num_classes=num_classes, train_per_class=train_per_class, val_per_class=val_per_class,
                num_frames=num_frames, height=height, width=width, fps=fps, corrupt=corrupt,
                task=hard.task if style == "hard" else None)
    root = os.path.abspath(os.fspath(root))
    _prepare_root(root, overwrite=overwrite)

    if style == "hard":
        motions = hard_classes(hard.task, num_classes=num_classes)
        names = [m.name for m in motions]
    else:
        motions = class_motions(num_classes=num_classes)
        names = [m.k400_name if style == "k400" else strip_template(m.ssv2_template) for m in motions]
    order = sorted(range(num_classes), key=lambda i: names[i])  # index = alphabetical, like the real label files
    classes = [names[i] for i in order]
    motions = [motions[i] for i in order]

    rng = np.random.default_rng(seed)
    counts = {"train": train_per_class, "val": val_per_class}
    plan = plan_labels(rng, num_classes=num_classes, counts=counts)
    namer = ssv2_items if style == "ssv2" else k400_items
    items = namer(rng, plan=plan, motions=motions, classes=classes)
    encoder = VP9 if style == "ssv2" else X264
    _log.info("writing %d %s-style videos (%d classes, %d frames of %dx%d) to %s",
              len(items), style, num_classes, num_frames, height, width, root)

    masks: dict[str, dict[str, np.ndarray]] = {split: {} for split in SPLITS}
    for n, item in enumerate(items):
        appearance = np.random.default_rng(item.seed)
        if style == "hard":
            scene = sample_hard_scene(appearance, height=height, width=width, num_frames=num_frames,
                                      distractors=hard.distractors)
            frames, mask = render_hard(scene, item.motion, show_object=hard.show_object)
            masks[item.split][video_id_of(item.relpath)] = mask
        else:
            frames = render_frames(sample_scene(appearance, height=height, width=width), motion=item.motion,
                                   num_frames=num_frames)
        if grain > 0:
            frames = add_grain(frames, std=grain, rng=np.random.default_rng(item.seed + 1))
        encode(os.path.join(root, item.relpath), frames, fps=fps, **encoder)
        _log.debug("%d/%d %s (%s)", n + 1, len(items), item.relpath, classes[item.label])

    planted = plant_corrupt(rng, root=root, items=items, corrupt=corrupt)
    # Masks and annotations after the videos and classes.json last: a killed run has no classes.json.
    mask_files = {}
    if style == "hard":  # planted corrupt files keep their masks: the ground truth of what should be there
        for split in SPLITS:
            mask_files[split] = masks_path(root, split)
            write_masks(mask_files[split], masks[split])
    corrupt_file = os.path.join(root, "corrupt.json")
    write_atomic(corrupt_file, to_json([c.to_json() for c in planted]))
    if style != "ssv2":
        annotation_files = write_k400_annotations(root, items)
    else:
        annotation_files = write_ssv2_annotations(root, items, classes=classes)
    classes_file = os.path.join(root, "classes.json")
    write_atomic(classes_file, to_json(classes))

    summary = DatasetSummary(
        style=style, root=root, classes=tuple(classes), annotation_files=annotation_files,
        num_videos={split: sum(i.split == split for i in items) for split in SPLITS}, corrupt=tuple(planted),
        classes_file=classes_file, corrupt_file=corrupt_file, seconds=time.perf_counter() - start,
        mask_files=mask_files,
    )
    _log.info("%s", summary.describe())
    return summary


def _check_args(*, num_classes: int, train_per_class: int, val_per_class: int, num_frames: int, height: int,
                width: int, fps: int, corrupt: dict[str, int], task: str | None = None) -> None:
    if task is None:
        class_motions(num_classes=num_classes)  # raises on a bad count
    else:
        hard_classes(task, num_classes=num_classes)
    if train_per_class < 1 or val_per_class < 0:
        raise ValueError(f"need train_per_class >= 1 and val_per_class >= 0, got {train_per_class}, {val_per_class}")
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2 (motion needs two frames), got {num_frames}")
    if task is not None and num_frames < 4:
        raise ValueError(f"num_frames must be >= 4 for the hard style (two motions of two frames), got {num_frames}")
    if fps < 1:
        raise ValueError(f"fps must be >= 1, got {fps}")
    for name, value in (("height", height), ("width", width)):
        # yuv420p halves the chroma resolution: odd sizes cannot be encoded; shapes need a few pixels.
        if value < 20 or value % 2:
            raise ValueError(f"{name} must be even and >= 20, got {value}")
    if width in DECORD_UNREADABLE_WIDTHS:
        raise ValueError(f"width {width} is unreadable by decord2 3.4 (widths {sorted(DECORD_UNREADABLE_WIDTHS)} "
                         f"fail in its frame copy); choose another, e.g. {width - 8} or {width + 8}")
    bad = sorted(set(corrupt) - set(CORRUPT_KINDS))
    if bad:
        raise ValueError(f"unknown corrupt kinds {bad}; known: {', '.join(CORRUPT_KINDS)}")
    if any(n < 0 for n in corrupt.values()):
        raise ValueError(f"corrupt counts must be >= 0, got {corrupt}")
    total = num_classes * (train_per_class + val_per_class)
    if sum(corrupt.values()) > total:
        raise ValueError(f"{sum(corrupt.values())} corrupt files asked for, but only {total} videos")


def _prepare_root(root: str, *, overwrite: bool) -> None:
    if os.path.isdir(root) and os.listdir(root):
        if not overwrite:
            raise FileExistsError(f"output folder {root} exists and is not empty (pass overwrite=True / --overwrite "
                                  f"to replace a generated dataset there)")
        _remove_generated(root)
    elif os.path.exists(root) and not os.path.isdir(root):
        raise FileExistsError(f"output path {root} exists and is not a folder")
    os.makedirs(root, exist_ok=True)


def _remove_generated(root: str) -> None:
    # Only what this module writes: stale videos of a larger earlier run would otherwise stay beside the new
    # annotations. Anything else the folder holds is left alone.
    removed = 0
    for name in ["classes.json", "corrupt.json", *SSV2_FILES.values(), "annotations/train.csv", "annotations/val.csv",
                 "annotations/train_masks.npz", "annotations/val_masks.npz"]:
        for path in (os.path.join(root, name), os.path.join(root, name + ".tmp")):
            if os.path.isfile(path):
                os.remove(path)
                removed += 1
    for folder in ("train", "val", "videos"):
        folder = os.path.join(root, folder)
        if os.path.isdir(folder):
            for entry in os.scandir(folder):
                if entry.is_file() and entry.name.endswith((".mp4", ".webm", ".tmp")):
                    os.remove(entry.path)
                    removed += 1
    _log.info("overwrite: removed %d generated files under %s", removed, root)


