"""Measurements for benchmarks: FLOPs, parameters, inference throughput, training step, memory.

Models are compared side by side in one process, timed in interleaved rounds (A, B, C, A, B, C, ...) and
summarised by the median, so that drift in machine load hits every model alike; report ratios, since an
absolute CPU time says little. "Bytes saved for backward" (a saved-tensors hook over one training forward)
does not depend on the machine and predicts activation memory wherever the model runs.

Every model sees the same seeded random clip (``seeded_clip``), which matters for input-dependent models
(``model.input_dependent``: FLOPs and time depend on the clip). Inference is measured on what inference runs
(``inference_model``: LoRA merged into the frozen weights), training on the model as trained.
"""

from __future__ import annotations

import copy
import logging
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..models.calibrate import calibrate
from ..models.factory import create_model
from ..models.flops import count_flops, count_params

_log = logging.getLogger(__name__)


def seeded_clip(shape: Sequence[int], *, seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """A standard-normal clip drawn from its own generator: the same values for every model, run and device."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=generator).to(device)


def gflops_of(model: nn.Module, clip: torch.Tensor) -> float:
    """GFLOPs per sample of ``model`` on ``clip`` (B, C, T, H, W): the clip itself is traced, which is what
    input-dependent models need."""
    return float(count_flops(model, inputs=clip))


def is_input_dependent(model: nn.Module) -> bool:
    """Models whose FLOPs and time depend on the clip (dynamic depth or token counts) say so."""
    return bool(getattr(model, "input_dependent", False))


def has_lora(model: nn.Module) -> bool:
    return any(".lora." in f".{name}" for name, _ in model.named_parameters())


def inference_model(model: nn.Module) -> nn.Module:
    """What inference runs: a copy with LoRA merged into the frozen weights (it then costs what the backbone
    costs, as at test time), else ``model`` itself."""
    if not (has_lora(model) and hasattr(model, "merge_lora")):
        return model
    merged = copy.deepcopy(model)
    merged.merge_lora()
    return merged


def machine_info(device: torch.device | str) -> dict[str, Any]:
    device = torch.device(device)
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    return info


def saved_tensor_bytes(model: nn.Module, clip: torch.Tensor, dtype: torch.dtype | None = None) -> int:
    """Bytes of activations autograd keeps for backward in one training forward (parameters excluded; a
    storage shared by several saved views, e.g. q/k/v of one qkv output, is counted once), under autocast to
    ``dtype`` when given (as the training step runs)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast(clip.device.type, dtype=dtype, enabled=dtype is not None):
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
    seed: int = 0  # of the one random clip every model sees
    keep_going: bool = False  # a method that fails to build or run gets an "error" and no timings, instead of raising


def _attempt(rows: dict[str, dict[str, Any]], name: str, keep_going: bool, what: str, fn: Callable[[], Any]) -> bool:
    """Run ``fn``; with ``keep_going`` an exception becomes ``rows[name]["error"]`` (and False) instead of raising."""
    try:
        fn()
        return True
    except Exception as err:
        if not keep_going:
            raise
        rows[name]["error"] = f"{what}: {type(err).__name__}: {err}"
        _log.warning("%s: %s failed, left out of the remaining measurements: %s", name, what, err)
        return False


def run_benchmark(spec: BenchSpec) -> list[dict[str, Any]]:
    """One row per method: params, GFLOPs, inference clips/s, train step time, bytes saved for backward.

    Inference (GFLOPs, clips/s) is measured on ``inference_model`` (LoRA merged), training on the model as built.
    ``input_dependent`` marks models whose FLOPs and times hold for this clip only. The first call of each step
    is the untimed warm-up; with ``spec.keep_going`` a method whose build or warm-up fails keeps a row with its
    ``error`` and is left out of what follows."""
    device = torch.device(spec.device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[spec.dtype]
    shape = (spec.batch_size, 3, spec.num_frames, spec.img_size, spec.img_size)
    geometry = dict(num_frames=spec.num_frames, img_size=spec.img_size, tubelet_size=spec.tubelet_size,
                    num_classes=spec.num_classes)
    clip = seeded_clip(shape, seed=spec.seed, device=device)
    rows: dict[str, dict[str, Any]] = {m: {"method": m} for m in spec.methods}
    models: dict[str, nn.Module] = {}
    infer_models: dict[str, nn.Module] = {}

    for name in spec.methods:
        def build(name: str = name) -> None:
            model = create_model(spec.arch, method=name, **geometry, **spec.model_kwargs).to(device)
            # Untrained gates / thresholds: set to their target rates (what training with calibrate=true starts
            # from, and what a trained model converges to), so the costs are those of the configured budget.
            if is_input_dependent(model):
                calibrate(model, clip)
            params = count_params(model)
            infer = inference_model(model)
            rows[name].update({
                "params_m": params["total"] / 1e6, "trainable_m": params["trainable"] / 1e6,
                "input_dependent": is_input_dependent(model), "lora_merged_for_inference": infer is not model,
                "gflops": gflops_of(infer, clip),
            })
            models[name], infer_models[name] = model, infer
            _log.info("%s: %.4g GFLOPs%s", name, rows[name]["gflops"],
                      " (input-dependent: on this clip)" if rows[name]["input_dependent"] else "")

        _attempt(rows, name, spec.keep_going, "build / FLOPs", build)

    def warmed_up(kind: str, make: Callable[[nn.Module], Callable[[], Any]],
                  candidates: dict[str, nn.Module]) -> dict[str, Callable[[], Any]]:
        steps: dict[str, Callable[[], Any]] = {}
        for name, model in candidates.items():
            def warm_up(name: str = name, model: nn.Module = model) -> None:
                step = make(model)
                step()  # the untimed warm-up call (for training: it also creates the optimizer state)
                steps[name] = step

            _attempt(rows, name, spec.keep_going, kind, warm_up)
        return steps

    steps = warmed_up("inference", lambda m: inference_step(m, clip, dtype), infer_models)
    infer = interleaved_timings(steps, rounds=spec.rounds, warmup=0, device=device)
    for name, timing in infer.items():
        rows[name]["infer_clips_s"] = spec.batch_size / timing.median
        rows[name]["infer_s_rounds"] = [round(s, 4) for s in timing.seconds]
    del steps
    infer_models.clear()  # the merged copies
    if spec.train:
        steps = warmed_up("training", lambda m: training_step(m, clip, dtype), {n: models[n] for n in infer})
        train = interleaved_timings(steps, rounds=spec.rounds, warmup=0, device=device)
        for name, timing in train.items():
            rows[name]["train_step_s"] = timing.median
            rows[name]["train_s_rounds"] = [round(s, 4) for s in timing.seconds]

            def memory(name: str = name) -> None:
                model = models[name]
                rows[name]["saved_mb_per_clip"] = saved_tensor_bytes(model, clip, dtype) / spec.batch_size / 2**20
                if device.type == "cuda":
                    rows[name]["peak_train_mem_mb"] = cuda_peak_training_memory(model, clip, dtype) / 2**20

            _attempt(rows, name, spec.keep_going, "memory", memory)
    return list(rows.values())
