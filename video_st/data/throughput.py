"""Data-pipeline throughput per worker, side by side in one process (``tools/benchmark.py data``).

Every measurement reads the same videos, interleaved video by video so that machine load hits all alike:
- training: the raw decoder (open + one batch read of a clip's frames: the floor) against each training pipeline
  on the same frames (open, read, random resized crop, flip, [RandAugment], normalise);
- testing, per view protocol (temporal x spatial): all views of a video (one read of the union of frames, every
  crop) against one clip (one read, one crop).
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .datasets import ClipSpec, VideoRecord
from .decode import open_video
from .sampling import train_indices, view_indices
from .transforms import EvalTransform, TrainTransform

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


def measure(records: Sequence[VideoRecord], *, clip: ClipSpec, transforms: Mapping[str, TrainTransform], size: int = 224,
            protocols: Mapping[str, ClipSpec] = TEST_PROTOCOLS, rounds: int = 3, backend: str = "decord",
            seed: int = 0) -> DataThroughput:
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
