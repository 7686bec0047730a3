"""Data-pipeline throughput per worker, side by side in one process (``tools/benchmark.py data``: ``report``).

Every measurement reads the same videos, interleaved video by video so that machine load hits all alike:
- training: the raw decoder (open + one batch read of a clip's frames: the floor) against each training pipeline
  on the same frames (open, read, random resized crop, flip, [RandAugment], normalise);
- testing, per view protocol (temporal x spatial): all views of a video (one read of the union of frames, every
  crop) against one clip (one read, one crop).
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.annotations import VideoRecord, read_k400_csv
from ..data.decode import open_video
from ..data.sampling import ClipSpec, train_indices, view_indices
from ..data.transforms import BatchAugment, EvalTransform, TrainTransform
from ..synthetic.datasets import make_k400_style

# The test protocols of the issues: K400 1 temporal x 3 spatial, SSv2 3 temporal x 1 spatial (TSN segments);
# and VideoMAE-style dense temporal clips, whose views lie in different parts of the video.
TEST_PROTOCOLS: dict[str, ClipSpec] = {
    "k400 1x3 (dense)": ClipSpec(sampling="dense", num_frames=8, stride=8, num_temporal_views=1, num_spatial_views=3),
    "ssv2 3x1 (segments)": ClipSpec(sampling="segment", num_frames=8, stride=1, num_temporal_views=3, num_spatial_views=1),
    "dense 3x1 (3 clips)": ClipSpec(sampling="dense", num_frames=8, stride=8, num_temporal_views=3, num_spatial_views=1),
}


@dataclass
class DataThroughput:
    videos: int
    raw_clips_s: float
    pipeline_clips_s: dict[str, float] = field(default_factory=dict)  # per training pipeline
    views_cost: dict[str, float] = field(default_factory=dict)  # all views / one clip, per protocol

    def overhead(self, pipeline: str) -> float:
        """Extra time of a training pipeline over raw decoding (0.15 = 15% more)."""
        return self.raw_clips_s / self.pipeline_clips_s[pipeline] - 1.0


class _Clock:
    """Adds the wall time of each ``with clock(key):`` block to ``totals[key]``."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._key, self._start = "", 0.0

    def __call__(self, key: str) -> _Clock:
        self._key = key
        return self

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.totals[self._key] = self.totals.get(self._key, 0.0) + time.perf_counter() - self._start


def pipeline_throughput(records: Sequence[VideoRecord], *, clip: ClipSpec, transforms: Mapping[str, TrainTransform],
                        size: int = 224, protocols: Mapping[str, ClipSpec] = TEST_PROTOCOLS, rounds: int = 3,
                        backend: str = "decord", seed: int = 0) -> DataThroughput:
    """Clips/s of the raw read and of each training pipeline, and each protocol's all-views / one-clip cost."""
    evals = {name: EvalTransform(size=size, num_crops=spec.num_spatial_views) for name, spec in protocols.items()}
    clock, count = _Clock(), 0
    for _ in range(rounds):
        for record in records:
            rng = random.Random(seed + count)
            frames_total = open_video(record.path, backend=backend).num_frames
            indices = train_indices(frames_total, sampling=clip.sampling, num_frames=clip.num_frames,
                                    stride=clip.stride, rng=rng)
            with clock("raw"):
                open_video(record.path, backend=backend).read(indices)
            for name, transform in transforms.items():
                with clock(f"pipeline {name}"):
                    transform(open_video(record.path, backend=backend).read(indices), record.label, rng)
            for name, spec in protocols.items():
                temporal = view_indices(frames_total, sampling=spec.sampling, num_frames=spec.num_frames,
                                        stride=spec.stride, num_temporal=spec.num_temporal_views)
                union = sorted({i for view in temporal for i in view})
                with clock(f"one {name}"):
                    evals[name](open_video(record.path, backend=backend).read(temporal[0]))
                with clock(f"all {name}"):
                    frames = dict(zip(union, open_video(record.path, backend=backend).read(union), strict=True))
                    for view in temporal:
                        evals[name].all_crops(np.stack([frames[i] for i in view]))
            count += 1
    t = clock.totals
    return DataThroughput(videos=len(records), raw_clips_s=count / t["raw"],
                          pipeline_clips_s={name: count / t[f"pipeline {name}"] for name in transforms},
                          views_cost={name: t[f"all {name}"] / t[f"one {name}"] for name in protocols})


def report(*, csv: str | None = None, root: str | None = None, videos: int = 16, video_frames: int = 300,
           height: int = 240, width: int = 320, grain: float = 5.0, frames: int = 8, stride: int = 8, size: int = 224,
           rounds: int = 3) -> str:
    """The data table: ``pipeline_throughput`` on the first ``videos`` of ``csv`` (or of a synthetic
    K400-style set generated in a temporary folder: ``video_frames`` long, ``height`` x ``width``, film grain
    ``grain``), then what augment_on=device moves into the training process (BatchAugment on this CPU). Sets torch
    to one thread: one loader worker's view of the machine."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if csv:
            records, _ = read_k400_csv(csv, root or os.path.dirname(csv))
        else:
            # 300 frames = 10 s at 30 fps, the length of a Kinetics clip.
            summary = make_k400_style(tmp, num_classes=4, train_per_class=max(1, videos // 4), val_per_class=1,
                                      num_frames=video_frames, height=height, width=width, fps=30, seed=0, grain=grain)
            records, _ = read_k400_csv(summary.annotation_files["train"], tmp)
        records = records[:videos]
        clip = ClipSpec(sampling="dense", num_frames=frames, stride=stride)
        pipelines = {"crop + flip (uint8 out: augment_on=device, the default)":
                         TrainTransform(size=size, rand_augment=None, output="uint8"),
                     "crop + flip + normalise": TrainTransform(size=size, rand_augment=None),
                     "crop + flip + RandAugment (2, 9) + normalise (augment_on=worker)":
                         TrainTransform(size=size, rand_augment=(2, 9))}
        result = pipeline_throughput(records, clip=clip, transforms=pipelines, size=size, rounds=rounds)
    source = csv or f"synthetic K400-style, {video_frames} frames at {height} x {width}, grain {grain}"
    lines = [f"{result.videos} videos ({source}) x {rounds} rounds, training clip {frames} x stride "
             f"{stride}, crop {size}, 1 thread (one loader worker)", "| measure | value |", "|---|---|",
             f"| raw decord read, clips/s | {result.raw_clips_s:.2f} |"]
    for name, clips_s in result.pipeline_clips_s.items():
        lines.append(f"| decode + {name}, clips/s (overhead over raw) | {clips_s:.2f} "
                     f"({100 * result.overhead(name):.1f}%) |")
    for name, cost in result.views_cost.items():
        lines.append(f"| test views {name}: all views / one clip | {cost:.2f}x |")
    # What augment_on=device moves into the training process, timed here on the CPU (on a GPU it is far cheaper).
    batch = torch.randint(0, 256, (8, 3, frames, size, size), dtype=torch.uint8)
    augment, start = BatchAugment(rand_augment=(2, 9)), time.perf_counter()
    for _ in range(rounds):
        augment(batch)
    per_clip = (time.perf_counter() - start) / (rounds * len(batch))
    lines.append(f"| BatchAugment (RandAugment 2, 9 + normalise) on this CPU, ms per clip | {1000 * per_clip:.1f} |")
    return "\n".join(lines)
