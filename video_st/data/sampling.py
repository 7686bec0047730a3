"""Frame-index arithmetic, pure and explicit (no video is opened here).

- Dense clips (Kinetics): ``num_frames`` indices ``stride`` apart from a start; random start in training, evenly
  spaced starts for the temporal test views.
- TSN segments (Something-Something): the video is cut into ``num_frames`` equal segments and one frame is taken
  from each: a random one in training, the segment's centre at test (shifted per temporal view).

A video shorter than a clip repeats its last frame (no division by zero, no negative index); one view works.
A test view is ``(temporal_idx, spatial_idx)``; this module handles the temporal part.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut from a video: ``dense`` (K400: frames ``stride`` apart) or ``segment`` (SSv2: TSN)."""

    sampling: str = "dense"
    num_frames: int = 8
    stride: int = 8
    num_temporal_views: int = 1
    num_spatial_views: int = 3


def clip_span(num_frames: int, stride: int) -> int:
    """Frames covered by a dense clip: first to last index inclusive."""
    return (num_frames - 1) * stride + 1


def dense_indices(video_frames: int, *, num_frames: int, stride: int, start: int) -> list[int]:
    """``num_frames`` indices from ``start`` every ``stride``, clamped to the last frame of a short video."""
    if video_frames < 1:
        raise ValueError("a video needs at least one frame")
    last = video_frames - 1
    return [min(max(0, start) + i * stride, last) for i in range(num_frames)]


def random_clip_start(video_frames: int, *, num_frames: int, stride: int, rng: random.Random) -> int:
    return rng.randint(0, max(0, video_frames - clip_span(num_frames, stride)))


def temporal_view_start(video_frames: int, *, num_frames: int, stride: int, view: int, num_views: int) -> int:
    """Start of temporal view ``view`` of ``num_views`` evenly spaced clips (one view: the centred clip)."""
    if not 0 <= view < num_views:
        raise ValueError(f"view {view} outside 0..{num_views - 1}")
    max_start = max(0, video_frames - clip_span(num_frames, stride))
    if num_views == 1:
        return max_start // 2
    return round(view * max_start / (num_views - 1))


def segment_indices(
    video_frames: int, *, num_segments: int, rng: random.Random | None = None, view: int = 0, num_views: int = 1
) -> list[int]:
    """TSN sampling: one index per equal segment; random within it with ``rng`` (training), else the point at
    ``(view + 0.5) / num_views`` of the segment (test views; one view: the centre)."""
    if video_frames < 1:
        raise ValueError("a video needs at least one frame")
    length = video_frames / num_segments
    out = []
    for s in range(num_segments):
        if rng is not None:
            offset = rng.random() * length
        else:
            offset = (view + 0.5) / num_views * length
        out.append(min(int(s * length + offset), video_frames - 1))
    return out


def view_indices(
    video_frames: int, *, sampling: str, num_frames: int, stride: int, num_temporal: int
) -> list[list[int]]:
    """Frame indices of every temporal test view of one video (decode their union once)."""
    if sampling == "dense":
        return [
            dense_indices(
                video_frames,
                num_frames=num_frames,
                stride=stride,
                start=temporal_view_start(video_frames, num_frames=num_frames, stride=stride, view=v, num_views=num_temporal),
            )
            for v in range(num_temporal)
        ]
    if sampling == "segment":
        return [segment_indices(video_frames, num_segments=num_frames, view=v, num_views=num_temporal) for v in range(num_temporal)]
    raise ValueError(f"sampling must be 'dense' or 'segment', got {sampling!r}")


def train_indices(video_frames: int, *, sampling: str, num_frames: int, stride: int, rng: random.Random) -> list[int]:
    if sampling == "dense":
        start = random_clip_start(video_frames, num_frames=num_frames, stride=stride, rng=rng)
        return dense_indices(video_frames, num_frames=num_frames, stride=stride, start=start)
    if sampling == "segment":
        return segment_indices(video_frames, num_segments=num_frames, rng=rng)
    raise ValueError(f"sampling must be 'dense' or 'segment', got {sampling!r}")
