"""Ground-truth foreground masks of generated videos, and their mapping onto a model's token grid.

The file (written by the ``hard`` style next to each split's annotations)::

    ROOT/annotations/{train,val}_masks.npz        numpy .npz (zip, deflate), one entry per video and "__meta__"

- ``"__meta__"``: int64 ``[FORMAT, height, width]`` (FORMAT = 1): the pixel size of every video of the file.
- one entry per video, named by its video id (the K400 clip name without ".mp4",
  ``{youtube_id}_{time_start:06d}_{time_end:06d}``, what ``read_k400_csv`` records as ``video_id``): uint8
  ``(T, height, ceil(width / 8))``, ``np.packbits(mask, axis=-1)`` of the boolean ``(T, height, width)`` mask
  at the video's own pixel resolution, one frame per video frame; True where the object covers the pixel.

Reading it needs nothing but numpy: ``np.unpackbits(f[video_id], axis=-1, count=width).astype(bool)``
(:func:`read_masks` does that for every entry). Pixel resolution lets any patch size, resize and crop derive its
own token masks: :func:`token_masks` applies the test data path (the frames a temporal view samples, the short-side
resize and spatial crop of ``data.transforms.EvalTransform``) to the mask and pools it per token; in training
(data.object_first) the loader takes each clip's mask through the clip's own crop and flip
(``TrainTransform.apply``) and the engine pools it (:func:`pool_tokens`). A token is
foreground when the object covers at least ``min_fraction`` (default 0.25) of its pixels, averaged over the
tubelet's frames; ``min_fraction=0`` means any pixel.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ..errors import VideoSTError
from ..fileio import write_atomic
from .sampling import ClipSpec, view_indices
from .transforms import spatial_crop

FORMAT = 1
META = "__meta__"
MIN_FRACTION = 0.25


def masks_path(root: str | os.PathLike, split: str) -> str:
    """ROOT/annotations/{split}_masks.npz."""
    return os.path.join(os.fspath(root), "annotations", f"{split}_masks.npz")


def masks_beside(annotation_file: str | os.PathLike) -> str:
    """The masks file of an annotation file: ``annotations/val.csv`` -> ``annotations/val_masks.npz``."""
    return os.path.splitext(os.fspath(annotation_file))[0] + "_masks.npz"


def find_masks(video: str | os.PathLike) -> str | None:
    """The masks file a generated video's split has, if any: ROOT/SPLIT/NAME.mp4 -> ROOT/annotations/SPLIT_masks.npz."""
    folder = os.path.dirname(os.path.abspath(os.fspath(video)))
    path = masks_path(os.path.dirname(folder), os.path.basename(folder))
    return path if os.path.isfile(path) else None


def video_id_of(path: str | os.PathLike) -> str:
    """A video file's id in the masks file: its name without the extension."""
    return os.path.splitext(os.path.basename(os.fspath(path)))[0]


def encode_masks(masks: Mapping[str, np.ndarray]) -> bytes:
    """The file's bytes for ``{video_id: bool (T, H, W)}`` (all videos one H x W); same masks -> same bytes."""
    shapes = {m.shape[1:] for m in masks.values()}
    if len(shapes) > 1:
        raise ValueError(f"every mask of a file needs one frame size, got {sorted(shapes)}")
    if META in masks:
        raise ValueError(f"{META!r} is reserved")
    height, width = shapes.pop() if shapes else (0, 0)
    arrays = {META: np.array([FORMAT, height, width], dtype=np.int64)}
    arrays.update({vid: np.packbits(np.asarray(m, dtype=bool), axis=-1) for vid, m in sorted(masks.items())})
    out = io.BytesIO()
    np.savez_compressed(out, **arrays)  # zip entries carry numpy's fixed 1980 timestamp: deterministic bytes
    return out.getvalue()


def write_masks(path: str | os.PathLike, masks: Mapping[str, np.ndarray]) -> None:
    write_atomic(path, encode_masks(masks))


def read_masks(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{video_id: bool (T, H, W)}`` of a masks file."""
    with np.load(os.fspath(path), allow_pickle=False) as f:
        if META not in f.files:
            raise ValueError(f"{path}: not a masks file (no {META!r} entry)")
        version, _, width = (int(v) for v in f[META])
        if version != FORMAT:
            raise ValueError(f"{path}: masks format {version}, this reader knows {FORMAT}")
        return {vid: np.unpackbits(f[vid], axis=-1, count=width).astype(bool) for vid in f.files if vid != META}


class MasksError(VideoSTError):
    """No ground truth for a split: a missing or unreadable masks file, or videos it lacks."""


def masks_for(path: str | os.PathLike, video_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """``{video_id: bool (T, H, W)}`` for every id of ``video_ids`` from the masks file ``path``; a missing or
    unreadable file, or an id it lacks, is a :class:`MasksError` naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MasksError(f"{path}: no such masks file (the hard generated style writes one per split; see "
                         "video_st/data/masks.py)")
    try:
        masks = read_masks(path)
    except (ValueError, OSError) as err:
        raise MasksError(f"{path}: unreadable masks file ({err})") from err
    missing = [v for v in video_ids if v not in masks]
    if missing:
        raise MasksError(f"{path}: no mask for {len(missing)} of {len(video_ids)} videos (first: {missing[0]})")
    return {v: masks[v] for v in video_ids}


def load_masks(root: str | os.PathLike, split: str) -> dict[str, np.ndarray]:
    """The masks of ``split`` of the generated dataset at ``root``: ``{video_id: bool (T, H, W)}``."""
    return read_masks(masks_path(root, split))


def clip_coverage(mask: np.ndarray, *, frame_indices: Sequence[int], size: int, short_side: int | None = None,
                  spatial_idx: int = 0, num_crops: int = 1) -> np.ndarray:
    """float32 (T, size, size) in [0, 1]: the share of each model-input pixel the object covers, for the clip
    of ``frame_indices`` through EvalTransform's geometry (short-side resize to ``short_side`` (default
    ``size``), antialiased as the frames are, then crop ``spatial_idx`` of ``num_crops``)."""
    frames = torch.from_numpy(np.asarray(mask, dtype=bool)[list(frame_indices)].astype(np.float32))[:, None]
    frames = TF.resize(frames, [short_side or size], antialias=True)
    return spatial_crop(frames, size, spatial_idx, num_crops)[:, 0].clamp_(0, 1).numpy()


def token_masks(mask: np.ndarray, *, patch: int, tubelet: int, frame_indices: Sequence[int], size: int,
                short_side: int | None = None, spatial_idx: int = 0, num_crops: int = 1,
                min_fraction: float = MIN_FRACTION) -> np.ndarray:
    """bool (T', H', W') = (len(frame_indices) / tubelet, size / patch, size / patch): True where the object
    covers at least ``min_fraction`` of the token's pixels (mean over its ``tubelet`` frames and ``patch`` x
    ``patch`` pixels of :func:`clip_coverage`); ``min_fraction=0``: any pixel. Token ``(t, h, w)`` is grid id
    ``t * H' * W' + h * W' + w``, the ids ``forward_features(x, return_token_ids=True)`` returns."""
    if len(frame_indices) % tubelet or size % patch:
        raise ValueError(f"{len(frame_indices)} frames of {size} px do not tile into tubelets of {tubelet} x "
                         f"{patch} x {patch}")
    if not 0 <= min_fraction <= 1:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
    cover = clip_coverage(mask, frame_indices=frame_indices, size=size, short_side=short_side,
                          spatial_idx=spatial_idx, num_crops=num_crops)
    return pool_tokens(torch.from_numpy(cover), patch=patch, tubelet=tubelet, min_fraction=min_fraction).numpy()


def pool_tokens(cover: torch.Tensor, *, patch: int, tubelet: int, min_fraction: float = MIN_FRACTION) -> torch.Tensor:
    """bool (..., T / tubelet, H / patch, W / patch) from (..., T, H, W) pixel coverage in [0, 1] (or bool): True
    where the mean over the token's ``tubelet`` x ``patch`` x ``patch`` pixels is at least ``min_fraction``
    (``0``: any pixel). The training loader's masks (data.object_first) and :func:`token_masks` pool here."""
    *lead, t, h, w = cover.shape
    if t % tubelet or h % patch or w % patch:
        raise ValueError(f"{t} frames of {h} x {w} px do not tile into tubelets of {tubelet} x {patch} x {patch}")
    grid = cover.float().reshape(*lead, t // tubelet, tubelet, h // patch, patch, w // patch, patch)
    fraction = grid.mean(dim=(-5, -3, -1))
    # 1e-6: the antialiased resize leaves float dust where the object is absent, and rounding just below a share.
    return fraction > 1e-6 if min_fraction == 0 else fraction >= min_fraction - 1e-6


def view_token_masks(mask: np.ndarray, clip: ClipSpec, *, patch: int, tubelet: int, size: int,
                     short_side: int | None = None, min_fraction: float = MIN_FRACTION) -> np.ndarray:
    """bool (V, T', H', W'): the token masks of every test view of ``clip``, temporal-major with the spatial crops
    inside, in the order of ``VideoClipDataset``'s test item; the frame indices come from ``sampling.view_indices``
    over the mask's frame count (one mask frame per video frame)."""
    views = view_indices(mask.shape[0], sampling=clip.sampling, num_frames=clip.num_frames, stride=clip.stride,
                         num_temporal=clip.num_temporal_views)
    return np.stack([token_masks(mask, patch=patch, tubelet=tubelet, frame_indices=indices, size=size,
                                 short_side=short_side, spatial_idx=s, num_crops=clip.num_spatial_views,
                                 min_fraction=min_fraction)
                     for indices in views for s in range(clip.num_spatial_views)])


def foreground_share(masks: Mapping[str, np.ndarray]) -> float:
    """Share of all pixels of all frames the objects cover (a quick statistic of a masks file)."""
    total = sum(math.prod(m.shape) for m in masks.values())
    return sum(int(m.sum()) for m in masks.values()) / total if total else 0.0
