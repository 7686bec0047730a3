"""One clip, one checkpoint -> the token drawings: the clip goes through the project's own test path (decode,
temporal view, short-side resize, spatial crop, normalisation: video_st/engine/build.py eval_dataset), so the drawn
frames are exactly what the model saw; the model is loaded as tools/test_net.py loads it. Where the video has a
ground-truth object mask (the hard generated style's annotations/SPLIT_masks.npz), the object is outlined, mapped
through the same frames, resize and crop (video_st/data/masks.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig

from ..data.annotations import VideoRecord
from ..data.decode import open_video
from ..data.sampling import view_indices
from ..engine import multiview  # the test-time loading of tools/test_net.py: checkpoint_path, load_for_test
from ..engine.build import eval_dataset
from ..data.masks import clip_coverage, find_masks, read_masks, video_id_of
from .draw import default_scale, denormalize, draw_all
from .tokens import (VisualizeError, check_has_stages, geometry, kept_masks, kept_token_ids, stage_labels,
                     summary_lines)


@dataclass(frozen=True)
class Drawn:
    """What :func:`visualize` drew, from what."""

    video: str
    view: tuple[int, int]
    checkpoint: str
    kind: str  # how the checkpoint was loaded (engine.loading.Loaded.kind)
    written: list[str]
    summary: list[str]  # one line per stage
    masks: str | None = None  # the masks file the object's outline came from

    def report(self) -> str:
        lines = [f"{self.video}, view {self.view[0]},{self.view[1]}; checkpoint {self.checkpoint} ({self.kind})"]
        if self.masks:
            lines.append(f"object outlined from {self.masks}")
        return "\n".join(lines + [f"wrote {file}" for file in self.written] + self.summary)


def parse_view(text: str | None, temporal: int, spatial: int) -> tuple[int, int]:
    """``"T,S"`` -> (temporal view, spatial crop); None -> the centre ones (one view: that view)."""
    if text is None:
        return temporal // 2, spatial // 2
    try:
        t, s = (int(part) for part in text.split(","))
    except ValueError:
        raise VisualizeError(f"--view {text!r}: expected T,S (two integers), e.g. 0,1") from None
    if not (0 <= t < temporal and 0 <= s < spatial):
        raise VisualizeError(f"--view {text!r} outside the config's {temporal} temporal x {spatial} spatial views "
                             "(test.temporal_views, test.spatial_views)")
    return t, s


def load_clip(cfg: DictConfig, video: str, view: tuple[int, int], *, temporal: int,
              spatial: int) -> tuple[torch.Tensor, np.ndarray]:
    """The model input (C, T, H, W) of ``view`` among ``temporal`` x ``spatial`` views through the test data path,
    and the same clip as uint8 RGB frames (T, H, W, 3), denormalised with the transform's own mean/std."""
    record = VideoRecord(path=video, label=-1, video_id=os.path.basename(video))
    dataset = eval_dataset(cfg, [record], temporal_views=temporal, spatial_views=spatial)
    item = dataset[0]
    index = view[0] * spatial + view[1]  # views are temporal-major (VideoClipDataset)
    if item["views"] is None or not item["view_ok"][index]:
        raise VisualizeError(f"{video}: {item['error'] or f'view {view[0]},{view[1]} did not decode'}")
    clip = item["views"][index]
    return clip, denormalize(clip, dataset.transform.mean, dataset.transform.std)


def object_outlines(cfg: DictConfig, video: str, masks_file: str, view: tuple[int, int], *, temporal: int,
                    spatial: int) -> np.ndarray:
    """bool (T, size, size): where the object covers at least half of each drawn pixel of ``view``, from the video's
    mask in ``masks_file`` through the view's frames, resize and crop (what load_clip does to the pixels)."""
    try:
        masks = read_masks(masks_file)
    except (ValueError, OSError) as err:
        raise VisualizeError(f"{masks_file}: unreadable masks file ({err})") from err
    mask = masks.get(video_id_of(video))
    if mask is None:
        raise VisualizeError(f"{masks_file}: no mask for {video_id_of(video)} ({video})")
    frames = open_video(video, backend=cfg.data.backend).num_frames
    if frames != mask.shape[0]:
        raise VisualizeError(f"{masks_file}: the mask of {video} has {mask.shape[0]} frames, the video {frames}")
    indices = view_indices(frames, sampling=cfg.data.sampling, num_frames=cfg.data.num_frames, stride=cfg.data.stride,
                           num_temporal=temporal)[view[0]]
    cover = clip_coverage(mask, frame_indices=indices, size=cfg.data.size, short_side=cfg.data.short_side,
                          spatial_idx=view[1], num_crops=spatial)
    return cover >= 0.5


def load_model(cfg: DictConfig, checkpoint: str | None):
    """The model exactly as tools/test_net.py loads it (LoRA merged), in eval mode on the CPU: one clip does not
    need a GPU, and fp32 keeps the token ranking identical to the reference run. Returns (model, path, kind)."""
    path = multiview.checkpoint_path(cfg, checkpoint)
    loaded, _ = multiview.load_for_test(cfg, path)
    loaded.model.merge_lora()
    return loaded.model.eval(), path, loaded.kind


def draw_tokens(model, cfg: DictConfig, video: str, out: str, *, view: tuple[int, int], temporal: int,
                spatial: int, checkpoint: str, scale: int = 0, fps: float = 4.0,
                masks_file: str | None = None) -> tuple[list[str], list[str]]:
    """Draw the tokens an already loaded ``model`` (eval mode, on any device) kept over ``view`` of ``video``
    into ``out``, with the object of ``masks_file`` outlined when given. Returns (files written, one summary line
    per stage). tools/predict.py --tokens calls this with the predictor's model, so nothing is loaded twice."""
    geo = geometry(model)
    clip, frames = load_clip(cfg, video, view, temporal=temporal, spatial=spatial)
    outlines = None
    if masks_file:
        outlines = object_outlines(cfg, video, masks_file, view, temporal=temporal, spatial=spatial)
    device = next(model.parameters()).device
    kept = kept_token_ids(model, clip.to(device), checkpoint)
    labels = stage_labels(model, len(kept))
    masks = kept_masks(kept, geo)
    written = draw_all(frames, masks, labels, geo, scale=scale or default_scale(geo), fps=fps, view=view, out=out,
                       outlines=outlines)
    return written, summary_lines(masks, labels, geo)


def visualize(cfg: DictConfig, video: str, out: str, *, checkpoint: str | None = None, view: str | None = None,
              scale: int = 0, fps: float = 4.0, masks: str | None = None) -> Drawn:
    """Draw which tokens each reduction stage of the model at ``checkpoint`` kept over ``view`` ("T,S"; None: the
    centre one) of ``video`` into ``out``; ``scale`` 0 enlarges the frames to at least draw.MIN_TILE pixels.
    ``masks``: a masks file to outline the object from; None: ROOT/annotations/SPLIT_masks.npz for a video in
    ROOT/SPLIT/, when that file exists and holds the video."""
    picked = parse_view(view, cfg.test.temporal_views, cfg.test.spatial_views)
    if not os.path.exists(video):  # before loading a model: the cheapest mistake to report
        raise VisualizeError(f"{video}: no such file")
    if masks is not None and not os.path.isfile(masks):
        raise VisualizeError(f"--masks {masks}: no such file")
    if masks is None:
        found = find_masks(video)
        masks = found if found and video_id_of(video) in read_masks(found) else None
    model, path, kind = load_model(cfg, checkpoint)
    check_has_stages(model, path)
    written, summary = draw_tokens(model, cfg, video, out, view=picked, temporal=cfg.test.temporal_views,
                                   spatial=cfg.test.spatial_views, checkpoint=path, scale=scale, fps=fps,
                                   masks_file=masks)
    return Drawn(video, picked, path, kind, written, summary, masks)


def draw_predictions(predictor, predictions, out: str, *, scale: int = 0, fps: float = 4.0) -> list[str]:
    """tools/predict.py --tokens: for every predicted video, the tokens the predictor's model kept over the
    centre test view, drawn into ``out/NAME`` (NAME: the file's stem, numbered when two stems collide). Returns
    the folders written. The model is the predictor's own (same weights, device, merged LoRA)."""
    temporal, spatial = predictor.temporal_views, predictor.spatial_views
    view = parse_view(None, temporal, spatial)
    folders: list[str] = []
    taken: set[str] = set()
    for n, prediction in enumerate(predictions):
        if not prediction.ok:
            continue
        name = os.path.splitext(os.path.basename(prediction.path))[0] or f"video{n}"
        folder = name if name not in taken else f"{name}_{n}"
        taken.add(folder)
        folder = os.path.join(out, folder)
        draw_tokens(predictor.model, predictor.cfg, prediction.path, folder, view=view, temporal=temporal,
                    spatial=spatial, checkpoint=predictor.checkpoint, scale=scale, fps=fps)
        folders.append(folder)
    return folders
