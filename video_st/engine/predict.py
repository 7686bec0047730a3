"""Predictions on videos without annotations (``video_st.Predictor``, tools/predict.py), by the test protocol.

A trained model (any checkpoint ``engine.loading`` reads) is loaded and its LoRA merged as tools/test_net.py does;
the videos go through the SAME data path: records -> ``build.eval_dataset`` (temporal views from
``data.sampling``, one decode per video, short-side resize, spatial crops, normalisation) -> ``make_loader`` ->
``evaluate.predict`` (views ensembled per video with ``ensemble_views``). So the scores of a video equal the ones
tools/test_net.py writes to probabilities.pt for the same checkpoint, data settings and views.

What the spec does not hold comes from elsewhere, and is said so:
- the clip geometry (frames, size) is the spec's;
- the data settings (``data.sampling``, ``data.stride``, ``data.short_side``, ``data.backend``) come from a config:
  ``config=`` (YAML file(s) or a loaded config), else the run's saved ``config.yaml`` when the checkpoint lies in a
  run folder, else the defaults of ``video_st/config.py``;
- the views: ``temporal_views`` / ``spatial_views`` arguments, else the config's ``test`` section (the defaults: 1
  temporal x 3 spatial, the K400 protocol; SSv2's configs say 2 x 3).

An unreadable or missing file never stops the others: its :class:`Prediction` carries the error.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..config import load_config
from ..data.annotations import VideoRecord
from ..data.folders import read_video_folder
from ..data.datasets import make_loader
from ..errors import ConfigError, VideoSTError
from ..fileio import write_atomic
from .backends import DTYPES
from .build import eval_dataset
from .evaluate import ENSEMBLES, predict
from .loading import Loaded, load, resolve_checkpoint

_log = logging.getLogger(__name__)

LIST_EXTENSIONS = (".txt", ".lst", ".list")


@dataclass(frozen=True)
class Prediction:
    """One input file: its top-k classes, or why it could not be predicted."""

    path: str
    classes: tuple[str, ...] = ()  # top-k class names, best first (empty when ``error``)
    scores: tuple[float, ...] = ()  # their ensembled scores: probabilities with ensemble="prob" (the default)
    probabilities: torch.Tensor | None = None  # (num_classes,) the whole ensembled score vector, in class order
    views: int = 0  # views that went into the scores
    error: str | None = None  # the file could not be read: no scores
    warning: str | None = None  # some of its views failed to decode; scored from the others

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def top1(self) -> str | None:
        return self.classes[0] if self.classes else None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "top_k": [{"class": c, "score": s} for c, s in
                                                             zip(self.classes, self.scores, strict=True)],
                "views": self.views, "error": self.error, "warning": self.warning}


def collect_inputs(items: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Paths to predict: a video file as is; a folder -> every video below it (recursively, sorted: class folders
    too); a list (``.txt``/``.lst``/``.list``) -> one path per line (blank lines and ``#`` comments skipped,
    relative paths under the list's folder). A path that does not exist is kept: it is reported, not raised."""
    if isinstance(items, (str, os.PathLike)):
        items = [items]
    paths: list[str] = []
    for item in map(os.fspath, items):
        if os.path.isdir(item):
            paths += [r.path for r in read_video_folder(item)]
        elif os.path.isfile(item) and item.lower().endswith(LIST_EXTENSIONS):
            folder = os.path.dirname(item)
            with open(item, encoding="utf-8") as f:
                lines = [line.strip() for line in f]
            paths += [line if os.path.isabs(line) else os.path.join(folder, line)
                      for line in lines if line and not line.startswith("#")]
        else:
            paths.append(item)
    return paths


def _run_folder_checkpoint(path: str) -> str:
    """A run's output folder (it holds checkpoints/ or model_final.pt) -> what test_net would test: the best
    checkpoint of checkpoints/, else model_final.pt. Anything else unchanged."""
    if os.path.isdir(path):
        if os.path.isdir(os.path.join(path, "checkpoints")):
            return os.path.join(path, "checkpoints")
        if os.path.isfile(os.path.join(path, "model_final.pt")):
            return os.path.join(path, "model_final.pt")
    return path


def _saved_config(checkpoint: str) -> str | None:
    """The run's config.yaml beside a run's files: OUTPUT/model_final.pt, OUTPUT/checkpoints/TAG."""
    folder = os.path.dirname(os.path.abspath(checkpoint))
    candidates = [os.path.join(folder, "config.yaml")]  # OUTPUT/model_final.pt, OUTPUT/trainable_final.pt
    if os.path.isdir(checkpoint) and os.path.basename(folder) == "checkpoints":  # OUTPUT/checkpoints/TAG
        candidates.append(os.path.join(os.path.dirname(folder), "config.yaml"))
    for file in candidates:
        if os.path.isfile(file):
            return file
    return None


class Predictor:
    """Top-k classes of videos, by the multi-view test protocol of tools/test_net.py.

    ``checkpoint``: a run folder, a run's checkpoints folder (its best, else newest), one checkpoint folder,
    model_final.pt, or an adapter-only file with ``backbone=`` (the backbone it was trained on). ``config``: YAML
    file(s) or a config, for the data settings and default views (module docstring); ``overrides``: key=value
    items over it. ``temporal_views`` x ``spatial_views``: the test views (None: the config's ``test`` section,
    by default 1 x 3, the K400 protocol). ``batch_size``: videos per forward batch (their views together).
    ``device``: "cpu", "cuda", "cuda:1", or "auto". ``precision``: autocast dtype on a GPU (fp32 on a CPU)."""

    def __init__(self, checkpoint: str | os.PathLike, *, backbone: str | os.PathLike | None = None,
                 config: str | os.PathLike | Sequence[str | os.PathLike] | DictConfig | None = None,
                 overrides: Sequence[str] = (), temporal_views: int | None = None, spatial_views: int | None = None,
                 ensemble: str | None = None, batch_size: int = 4, num_workers: int = 0, device: str = "cpu",
                 precision: str = "fp32", top_k: int = 5) -> None:
        path = _run_folder_checkpoint(os.fspath(checkpoint))
        self.checkpoint = resolve_checkpoint(path)
        self.loaded: Loaded = load(path, backbone=None if backbone is None else os.fspath(backbone))
        spec = self.loaded.spec
        frames, size = spec.clip
        if config is None:
            config = _saved_config(self.checkpoint)
            if config is not None:
                _log.info("data settings from the run's %s", config)
        geometry = [f"data.num_frames={frames}", f"data.size={size}"]  # the spec's, whatever a config says
        if isinstance(config, DictConfig):
            cfg = OmegaConf.merge(config, OmegaConf.from_dotlist([*overrides, *geometry]))
        else:
            cfg = load_config(config, [*overrides, *geometry])
        self.cfg = cfg
        self.temporal_views = temporal_views if temporal_views is not None else cfg.test.temporal_views
        self.spatial_views = spatial_views if spatial_views is not None else cfg.test.spatial_views
        self.ensemble = ensemble or cfg.test.ensemble
        if self.ensemble not in ENSEMBLES:
            raise ConfigError(f"ensemble={self.ensemble!r}: must be one of {ENSEMBLES}")
        if self.temporal_views < 1 or self.spatial_views < 1 or top_k < 1 or batch_size < 1:
            raise ConfigError(f"views {self.temporal_views} x {self.spatial_views}, top_k {top_k}, batch_size "
                              f"{batch_size}: each must be at least 1")
        if precision not in DTYPES:
            raise ConfigError(f"precision={precision!r}: must be one of {tuple(DTYPES)}")
        self.class_names = list(spec.classes) if spec.classes else None
        self.batch_size, self.num_workers, self.top_k = batch_size, num_workers, top_k
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.dtype = DTYPES[precision] if self.device.type == "cuda" else torch.float32
        model = self.loaded.model
        model.merge_lora()  # as the test tool: LoRA folded into the weights
        self.model = model.to(self.device).eval()

    @property
    def views(self) -> int:
        return self.temporal_views * self.spatial_views

    @torch.no_grad()
    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        clips = clips.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            return self.model(clips)

    def predict(self, paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Prediction]:
        """One :class:`Prediction` per input file, in input order (folders and lists expanded by
        :func:`collect_inputs`); files are batched together, an unreadable one is reported and the rest go on."""
        files = collect_inputs(paths)
        if not files:
            raise VideoSTError(f"no video found in {paths}")
        out: list[Prediction | None] = [None] * len(files)
        records, where = [], []
        for n, file in enumerate(files):
            if not os.path.isfile(file):
                out[n] = Prediction(file, error="no such file" if not os.path.exists(file) else "not a file")
                continue
            stem = os.path.splitext(os.path.basename(file))[0]
            records.append(VideoRecord(file, -1, stem, rel=os.path.basename(file)))
            where.append(n)
        if records:
            dataset = eval_dataset(self.cfg, records, temporal_views=self.temporal_views,
                                   spatial_views=self.spatial_views)
            loader = make_loader(dataset, batch_size=self.batch_size, num_workers=self.num_workers, shuffle=False)
            result = predict(self.forward, loader, ensemble=self.ensemble, max_views=self.batch_size * self.views)
            names = self.class_names or [str(i) for i in range(result.scores.shape[1] if len(result.index) else 0)]
            warnings = {p["index"]: p["error"] for p in result.partial}
            for row, index in enumerate(result.index.tolist()):
                scores = result.scores[row]
                top = scores.topk(min(self.top_k, scores.numel()))
                out[where[index]] = Prediction(
                    records[index].path, tuple(names[c] for c in top.indices.tolist()),
                    tuple(float(s) for s in top.values.tolist()), scores.clone(), int(result.views[row]),
                    warning=warnings.get(index))
            for failed in result.failed:
                out[where[failed["index"]]] = Prediction(failed["path"], error=failed["error"] or "unreadable")
        return [p for p in out if p is not None]


def format_table(predictions: Sequence[Prediction]) -> str:
    """Per video: its path, then one row per top-k class (rank, score, name); the error of an unreadable one."""
    lines = []
    for p in predictions:
        lines.append(p.path)
        if not p.ok:
            lines.append(f"  unreadable: {p.error}")
            continue
        lines += [f"  {rank:>2}  {score:.4f}  {name}" for rank, (name, score) in
                  enumerate(zip(p.classes, p.scores, strict=True), start=1)]
        if p.warning:
            lines.append(f"  warning: {p.warning}")
    done = sum(p.ok for p in predictions)
    lines.append(f"{done} of {len(predictions)} videos predicted" +
                 (f", {len(predictions) - done} unreadable" if done < len(predictions) else ""))
    return "\n".join(lines)


def write_predictions(predictions: Sequence[Prediction], out_dir: str | os.PathLike,
                      predictor: Predictor | None = None) -> tuple[str, str]:
    """``OUT/predictions.json`` (the settings, every prediction with its top-k and the full score vector) and
    ``OUT/predictions.csv`` (path, ok, views, top-k names and scores, error), each written atomically."""
    out_dir = os.fspath(out_dir)
    k = max((len(p.classes) for p in predictions), default=0)
    header = ["path", "ok", "views", *[f"top{i}_{w}" for i in range(1, k + 1) for w in ("class", "score")], "error"]
    rows = []
    for p in predictions:
        ranked = [v for c, s in zip(p.classes, p.scores, strict=True) for v in (c, f"{s:.6f}")]
        rows.append([p.path, int(p.ok), p.views, *ranked, *[""] * (2 * k - len(ranked)),
                     p.error or p.warning or ""])
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    settings: dict[str, Any] = {}
    if predictor is not None:
        settings = {"checkpoint": predictor.checkpoint, "checkpoint_kind": predictor.loaded.kind,
                    "method": predictor.loaded.spec.method, "temporal_views": predictor.temporal_views,
                    "spatial_views": predictor.spatial_views, "ensemble": predictor.ensemble,
                    "classes": predictor.class_names}
    document = {**settings, "videos": len(predictions), "predicted": sum(p.ok for p in predictions),
                "predictions": [{**p.to_dict(), "scores": None if p.probabilities is None else
                                 [float(x) for x in p.probabilities.tolist()]} for p in predictions]}
    json_file, csv_file = os.path.join(out_dir, "predictions.json"), os.path.join(out_dir, "predictions.csv")
    write_atomic(json_file, json.dumps(document, indent=1))
    write_atomic(csv_file, buffer.getvalue())
    return json_file, csv_file
