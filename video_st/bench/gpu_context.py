"""What the sections of tools/gpu_check.py share: the device's profile (model, clips, generated videos), a
context that makes the generated data once and builds run configs from the project's own config files, and the
timed batch source of the training sections. The sections themselves are :mod:`video_st.bench.gpu_sections`."""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ..config import load_config
from ..data.annotations import read_k400_csv
from ..engine import distributed
from ..engine.logs import memory_mb
from ..models.factory import build
from ..models.flops import count_flops
from ..synthetic.datasets import DatasetSummary, make_k400_style

ROOT = Path(__file__).resolve().parents[2]  # the repository: configs/ lives there
NUM_CLASSES = 4
# Dense bf16 tensor-core peak (TFLOP/s, no sparsity) by GPU name; fp16 is the same on these parts. First match wins.
PEAK_TFLOPS = (("H200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0))


class Skipped(Exception):
    """The section's path does not apply here (no CUDA, a refused precision, a decoder this environment lacks)."""


@dataclass(frozen=True)
class Profile:
    """What one device's check runs on."""

    configs: tuple[str, ...]  # run config files, relative to the repository
    arch: str
    num_frames: int
    img_size: int
    video_frames: int  # generated videos: length and size
    height: int
    width: int
    grain: float
    train_videos: int  # distinct generated training videos (listed again and again: one epoch > any run)
    train_batch: int  # micro-batch of the training sections and the data path
    train_steps: int  # timed optimizer steps per engine, after warmup_steps untimed ones
    warmup_steps: int
    val_per_class: int  # the test_net videos
    method_batch: int  # AS-ViT / DyT steps
    augment_batch: int
    infer_batch: int
    rounds: int  # timed rounds of the short measures
    data_batches: int  # timed loader batches per data format
    workers: int
    dtype: torch.dtype | None  # autocast outside the engines (None: fp32)

    def quick(self) -> Profile:
        return dataclasses.replace(self, train_steps=max(2, self.train_steps // 2), rounds=max(2, self.rounds // 2),
                                   data_batches=max(2, self.data_batches // 2))

    @property
    def list_repeats(self) -> int:
        """How often the training lists name each video: an epoch longer than any section's steps (the trainer
        would otherwise validate and checkpoint in between)."""
        return math.ceil((self.warmup_steps + self.train_steps + 2) * self.train_batch / self.train_videos)

    def clip_shape(self, batch: int) -> tuple[int, int, int, int, int]:
        return (batch, 3, self.num_frames, self.img_size, self.img_size)


PROFILES = {
    # Sparse-Tuning ViT-B/16, 8 x 224 (tubelet 2), the K400 recipe (configs/datasets/k400.yaml), on Kinetics-sized
    # generated videos (240 x 320 with film grain: the bitrate of downloaded clips).
    "cuda": Profile(configs=("configs/datasets/k400.yaml", "configs/methods/sparse_tuning.yaml"),
                    arch="vit_base_patch16", num_frames=8, img_size=224, video_frames=64, height=240, width=320,
                    grain=5.0, train_videos=16, train_batch=32, train_steps=10, warmup_steps=3, val_per_class=2,
                    method_batch=8, augment_batch=32, infer_batch=32, rounds=10, data_batches=12, workers=8,
                    dtype=torch.bfloat16),
    # The test suite's tiny model and the demo's config (configs/tiny_cpu.yaml): the same code paths in seconds.
    "cpu": Profile(configs=("configs/tiny_cpu.yaml",), arch="vit_tiny_test", num_frames=4, img_size=32,
                   video_frames=16, height=66, width=88, grain=0.0, train_videos=8, train_batch=8, train_steps=3,
                   warmup_steps=1, val_per_class=1, method_batch=4, augment_batch=32, infer_batch=32, rounds=3,
                   data_batches=4, workers=2, dtype=None),
}


@dataclass(frozen=True)
class Videos:
    summary: DatasetSummary
    train_list: str  # `path<TAB>class` (data.dataset=list), every training video repeated: one epoch > any run
    val_list: str


@dataclass(frozen=True)
class Frames:
    root: str  # the frames job's output: frame folders and their list
    train_list: str  # the job's frame list, repeated like Videos.train_list
    jpegs: tuple[str, ...]
    seconds: float


class Context:
    """The device, the profile, the generated data (made once, on demand) and the training run test_net tests."""

    def __init__(self, profile: Profile, device: torch.device, work_dir: str, env: distributed.DistEnv) -> None:
        self.profile, self.device, self.work_dir, self.env = profile, device, work_dir, env
        self.setup_seconds: dict[str, float] = {}
        self.trained: tuple[DictConfig, str] | None = None  # (config, model_final.pt) of a finished training
        self._videos: Videos | None = None
        self._frames: Frames | None = None
        self._gflops: dict[str, float] = {}
        self._failed: dict[str, str] = {}

    def videos(self) -> Videos:
        if self._videos is None:
            p, start = self.profile, time.perf_counter()
            summary = self._once("videos", lambda: make_k400_style(
                os.path.join(self.work_dir, "videos"), num_classes=NUM_CLASSES,
                train_per_class=p.train_videos // NUM_CLASSES, val_per_class=p.val_per_class,
                num_frames=p.video_frames, height=p.height, width=p.width, fps=30, seed=0, grain=p.grain))
            self._videos = Videos(summary, self._list(summary, "train", p.list_repeats),
                                  self._list(summary, "val", 1))
            self.setup_seconds["videos"] = round(time.perf_counter() - start, 2)
        return self._videos

    def _once(self, what: str, make: Callable[[], Any]) -> Any:
        """``make()``; where it failed before, its first error again (every section that needs it fails alike)."""
        if what in self._failed:
            raise RuntimeError(f"making the {what} failed: {self._failed[what]}")
        try:
            return make()
        except Exception as err:
            self._failed[what] = f"{type(err).__name__}: {err}"
            raise

    def _list(self, summary: DatasetSummary, split: str, repeats: int) -> str:
        records, names = read_k400_csv(summary.annotation_files[split], summary.root)
        path = os.path.join(self.work_dir, f"{split}.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(f"{r.rel}\t{names[r.label]}\n" for _ in range(repeats) for r in records)
        return path

    def frames(self) -> Frames:
        """JPEG frame folders of the training videos, written by the preprocessing job (tools/preprocess.py
        frames, every frame, its default quality)."""
        if self._frames is None:
            from ..preprocess import jobs, run  # the frames job: only the data sections need it

            videos, start = self.videos(), time.perf_counter()
            out = os.path.join(self.work_dir, "frames")
            spec = jobs.JobSpec(subcommand="frames", input=videos.summary.annotation_files["train"], output=out,
                                root=videos.summary.root)
            shard = self._once("frames", lambda: run.run_shard(spec, workers=self.profile.workers))
            if shard.failed or not shard.video_list:
                raise RuntimeError(f"the frames job failed on {shard.failed} videos (manifest {shard.manifest})")
            with open(shard.video_list, encoding="utf-8") as f:
                lines = [line for line in f if line.strip()]
            train_list = os.path.join(self.work_dir, "frames_train.txt")
            with open(train_list, "w", encoding="utf-8") as f:
                f.writelines(lines * self.profile.list_repeats)
            jpegs = tuple(sorted(str(p) for p in Path(out).rglob("*.jpg")))
            self._frames = Frames(out, train_list, jpegs, round(time.perf_counter() - start, 2))
            self.setup_seconds["frames"] = self._frames.seconds
        return self._frames

    def config(self, run: str, *overrides: str) -> DictConfig:
        """The profile's config files pointed at the generated videos, one output folder per run."""
        p, videos = self.profile, self.videos()
        base = [f"output_dir={os.path.join(self.work_dir, run)}", "data.dataset=list",
                f"data.root={videos.summary.root}", f"data.train={videos.train_list}", f"data.val={videos.val_list}",
                "model.pretrained=none", f"model.num_classes={NUM_CLASSES}", f"engine.device={self.device.type}",
                f"data.batch_size={p.train_batch}", "optim.global_batch=null", f"data.num_workers={p.workers}",
                "checkpoint.resume=none", "log.progress=false", "log.tensorboard=false", "log.every_steps=1"]
        return load_config([str(ROOT / c) for c in p.configs], [*base, *overrides])

    def forward_gflops(self, model: torch.nn.Module) -> float:
        """fvcore GFLOPs (multiply-adds) of one clip through a fresh fp32 copy of ``model``'s spec."""
        spec = model.spec
        key = json.dumps(spec.to_dict(), sort_keys=True)
        if key not in self._gflops:
            copy = build(spec).to(self.device)
            self._gflops[key] = float(count_flops(copy, self.profile.clip_shape(1)))
            del copy
        return self._gflops[key]

    def mfu(self, clips_s: float, gflops: float) -> tuple[float | None, str]:
        """Model FLOPs utilisation: 3 x forward FLOPs per trained clip (forward + backward), 2 FLOPs per
        multiply-add, over the GPU's dense bf16 peak; None where the GPU is not in the table (or on a CPU)."""
        if self.device.type != "cuda":
            return None, "no peak FLOP/s for a CPU"
        name = torch.cuda.get_device_name(self.device)
        peak = next((tflops for key, tflops in PEAK_TFLOPS if key in name), None)
        if peak is None:
            return None, f"no peak FLOP/s known for {name!r}"
        return clips_s * 3 * 2 * gflops * 1e9 / (peak * 1e12), f"3 x 2 x fvcore GFLOPs x clips/s over {peak:g} TFLOP/s"

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def release(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)


class TimedBatches:
    """The trainer's loader for a timed run: the first ``cached`` batches of its real loader (decoded before the
    first step), then the same again, stamped (after a device sync) each time the loop asks for the next. The gap
    between two stamps is one whole training step (augment, mixup, forward, backward, optimizer, logging) without
    data loading, which the data sections measure."""

    def __init__(self, loader: torch.utils.data.DataLoader, ctx: Context, cached: int = 2) -> None:
        batches = iter(loader)
        self.batches = [next(batches) for _ in range(cached)]
        self.ctx, self.stamps, self.peak_mb = ctx, [], 0.0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in itertools.count():
            self.ctx.sync()
            self.stamps.append(time.perf_counter())
            self.peak_mb = memory_mb(self.ctx.device)
            yield self.batches[i % len(self.batches)]

    def step_seconds(self, skip: int) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])][skip:]
