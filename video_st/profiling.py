"""Measurements for benchmarks: FLOPs, parameters, inference throughput, training step, memory.

Models are compared side by side in one process, timed in interleaved rounds (A, B, C, A, B, C, ...) and
summarised by the median, so that drift in machine load hits every model alike; report ratios, since an
absolute CPU time says little. "Bytes saved for backward" (a saved-tensors hook over one training forward)
does not depend on the machine and predicts activation memory wherever the model runs.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .models.flops import count_flops, count_params

_log = logging.getLogger(__name__)


def saved_tensor_bytes(model: nn.Module, clip: torch.Tensor) -> int:
    """Bytes of activations autograd keeps for backward in one training forward (parameters excluded; a
    storage shared by several saved views, e.g. q/k/v of one qkv output, is counted once)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(clip)
    del out
    return sum(storages.values())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def interleaved_timings(steps: dict[str, Callable[[], Any]], *, rounds: int, warmup: int = 1, device: torch.device) -> dict[str, Timing]:
    """Time each callable ``rounds`` times, taking turns, after ``warmup`` untimed calls each."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    timings = {name: Timing() for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            timings[name].seconds.append(time.perf_counter() - start)
    return timings


def inference_step(model: nn.Module, clip: torch.Tensor, dtype: torch.dtype | None) -> Callable[[], Any]:
    def step() -> None:
        model.eval()
        with torch.inference_mode(), torch.autocast(clip.device.type, dtype=dtype, enabled=dtype is not None):
            model(clip)

    return step


def training_step(model: nn.Module, clip: torch.Tensor, dtype: torch.dtype | None) -> Callable[[], Any]:
    """Forward, cross-entropy backward and an AdamW update of the trainable parameters."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-6)
    num_classes = model.num_classes
    labels = torch.arange(clip.shape[0], device=clip.device) % max(1, num_classes)

    def step() -> None:
        model.train()
        with torch.autocast(clip.device.type, dtype=dtype, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(clip).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def cuda_peak_training_memory(model: nn.Module, clip: torch.Tensor, dtype: torch.dtype | None) -> int:
    step = training_step(model, clip, dtype)
    step()  # optimizer state exists from here on, as in a real run
    torch.cuda.synchronize(clip.device)
    torch.cuda.reset_peak_memory_stats(clip.device)
    step()
    torch.cuda.synchronize(clip.device)
    return torch.cuda.max_memory_allocated(clip.device)


@dataclass(frozen=True)
class BenchSpec:
    arch: str
    methods: Sequence[str]
    num_frames: int = 8
    img_size: int = 224
    tubelet_size: int = 2
    num_classes: int = 400
    batch_size: int = 1
    rounds: int = 11
    device: str = "cpu"
    dtype: str = "fp32"
    train: bool = True
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def run_benchmark(spec: BenchSpec, create_model: Callable[..., nn.Module]) -> list[dict[str, Any]]:
    """One row per method: params, GFLOPs, inference clips/s, train step time, bytes saved for backward."""
    device = torch.device(spec.device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[spec.dtype]
    shape = (spec.batch_size, 3, spec.num_frames, spec.img_size, spec.img_size)
    geometry = dict(num_frames=spec.num_frames, img_size=spec.img_size, tubelet_size=spec.tubelet_size, num_classes=spec.num_classes)
    models = {m: create_model(spec.arch, method=m, **geometry, **spec.model_kwargs).to(device) for m in spec.methods}
    clip = torch.randn(shape, device=device)
    rows = {}
    for name, model in models.items():
        params = count_params(model)
        rows[name] = {
            "method": name,
            "params_m": params["total"] / 1e6,
            "trainable_m": params["trainable"] / 1e6,
            "gflops": count_flops(model, (1,) + shape[1:]),
        }
        _log.info("%s: %.2f GFLOPs", name, rows[name]["gflops"])
    infer = interleaved_timings({n: inference_step(m, clip, dtype) for n, m in models.items()}, rounds=spec.rounds, device=device)
    for name, timing in infer.items():
        rows[name]["infer_clips_s"] = spec.batch_size / timing.median
        rows[name]["infer_s_rounds"] = [round(s, 4) for s in timing.seconds]
    if spec.train:
        train = interleaved_timings({n: training_step(m, clip, dtype) for n, m in models.items()}, rounds=spec.rounds, device=device)
        for name, model in models.items():
            rows[name]["train_step_s"] = train[name].median
            rows[name]["train_s_rounds"] = [round(s, 4) for s in train[name].seconds]
            rows[name]["saved_mb_per_clip"] = saved_tensor_bytes(model, clip) / spec.batch_size / 2**20
            if device.type == "cuda":
                rows[name]["peak_train_mem_mb"] = cuda_peak_training_memory(model, clip, dtype) / 2**20
    return list(rows.values())


def add_ratios(rows: list[dict[str, Any]], *, reference: str, keys: Sequence[str], suffix: str) -> None:
    """Add ``key/suffix`` = row[key] / reference_row[key] for each key (when the reference row has it)."""
    ref = next((r for r in rows if r["method"] == reference), None)
    if ref is None:
        return
    for row in rows:
        for key in keys:
            if key in row and ref.get(key):
                row[f"{key}/{suffix}"] = row[key] / ref[key]


def markdown_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
