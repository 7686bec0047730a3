"""Videos/s of ``video_st.Predictor`` (tools/predict.py) end to end on this machine (``tools/benchmark.py
predict``): decode, every test view, the model, the ensemble, for several methods side by side in one process.

Each method gets a randomly initialised model of the same backbone (weights do not change the time of a static
model; for the input-dependent ones the time holds for these weights) saved as model_final.pt with its spec, and
a Predictor over the same generated K400-style videos. The rounds interleave the methods, so that machine load
hits all alike; the median round is reported, with the ratio to full fine-tuning's dense model.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..config import load_config
from ..engine.predict import Predictor
from ..models.factory import create_model
from ..models.spec import save_model_file
from ..synthetic.datasets import make_k400_style


@dataclass(frozen=True)
class PredictSetting:
    """One model geometry and the generated videos it predicts on."""

    arch: str
    num_frames: int  # clip frames (the model's)
    img_size: int  # crop size (the model's)
    stride: int  # frame stride of a clip
    short_side: int  # test-time resize before the crops
    video_frames: int  # length of the generated videos
    height: int
    width: int


SETTINGS: dict[str, PredictSetting] = {
    # The test model on the demo's geometry (configs/tiny_cpu.yaml).
    "tiny": PredictSetting(arch="vit_tiny_test", num_frames=4, img_size=32, stride=2, short_side=32,
                           video_frames=32, height=66, width=88),
    # ViT-B/16 8 x 224 on Kinetics-like files: 10 s at 30 fps, 240 x 320 (the short side of downloaded K400 clips).
    "vit_b": PredictSetting(arch="vit_base_patch16", num_frames=8, img_size=224, stride=8, short_side=224,
                            video_frames=300, height=240, width=320),
}


@dataclass(frozen=True)
class PredictRow:
    setting: str
    method: str
    videos: int
    views: int
    seconds: list[float]  # one per round: predict() over every video

    @property
    def videos_s(self) -> float:
        return self.videos / statistics.median(self.seconds)

    @property
    def clips_s(self) -> float:
        return self.videos_s * self.views


def predict_throughput(setting_name: str, *, methods: Sequence[str], videos: int = 4, temporal_views: int = 1,
                       spatial_views: int = 3, batch_size: int = 4, rounds: int = 3, seed: int = 0) -> list[PredictRow]:
    """One row per method: ``rounds`` timed passes of Predictor.predict over ``videos`` generated videos."""
    setting = SETTINGS[setting_name]
    with tempfile.TemporaryDirectory() as tmp:
        summary = make_k400_style(os.path.join(tmp, "data"), num_classes=4, train_per_class=max(1, videos // 4),
                                  val_per_class=1, num_frames=setting.video_frames, height=setting.height,
                                  width=setting.width, fps=30, seed=seed, grain=5.0)
        train_dir = os.path.join(summary.root, "train")
        paths = sorted(os.path.join(d, f) for d, _, files in os.walk(train_dir) for f in files)[:videos]
        cfg = load_config(None, [f"data.num_frames={setting.num_frames}", f"data.size={setting.img_size}",
                                 f"data.stride={setting.stride}", f"data.short_side={setting.short_side}"])
        predictors = {}
        for method in methods:
            torch.manual_seed(seed)
            model = create_model(setting.arch, method=method, num_classes=len(summary.classes),
                                 num_frames=setting.num_frames, img_size=setting.img_size)
            file = os.path.join(tmp, f"{method}.pt")
            save_model_file(file, model.state_dict(), spec=model.spec.with_classes(list(summary.classes)))
            predictors[method] = Predictor(file, config=cfg,
                                           temporal_views=temporal_views, spatial_views=spatial_views,
                                           batch_size=batch_size, top_k=1)
            predictors[method].predict(paths[:1])  # warm-up: first-call allocations, decoder start
        seconds: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(rounds):
            for method, predictor in predictors.items():
                start = time.perf_counter()
                predictions = predictor.predict(paths)
                seconds[method].append(time.perf_counter() - start)
                failed = [p.path for p in predictions if not p.ok]
                if failed:  # a generated video must decode; a failure here is a bug, not a data problem
                    raise RuntimeError(f"{method}: could not predict {failed}")
    return [PredictRow(setting_name, m, len(paths), temporal_views * spatial_views, seconds[m]) for m in methods]


def report(*, settings: Sequence[str], methods: Sequence[str], videos: int, views: tuple[int, int], batch_size: int,
           rounds: int, threads: int | None) -> str:
    """One markdown table (with its heading line): per setting and method, videos/s, clips/s and the ratio to
    ``full``. tools/benchmark.py predict prints it."""
    if threads:
        torch.set_num_threads(threads)
    lines = [f"Predictor end to end (decode + {views[0]} x {views[1]} views + model + ensemble), CPU, fp32, "
             f"{torch.get_num_threads()} threads, batch {batch_size} videos, median of {rounds} interleaved rounds",
             "| setting | method | videos | videos/s | clips/s | ratio to full |", "|---|---|---|---|---|---|"]
    for name in settings:
        rows = predict_throughput(name, methods=methods, videos=videos, temporal_views=views[0],
                                  spatial_views=views[1], batch_size=batch_size, rounds=rounds)
        reference = next((r.videos_s for r in rows if r.method == "full"), None)
        for row in rows:
            ratio = f"{row.videos_s / reference:.2f}x" if reference else "-"
            lines.append(f"| {name} ({SETTINGS[name].arch}, {SETTINGS[name].num_frames} x "
                         f"{SETTINGS[name].img_size}) | {row.method} | {row.videos} | {row.videos_s:.3f} | "
                         f"{row.clips_s:.2f} | {ratio} |")
    return "\n".join(lines)
