"""The sections of tools/gpu_check.py (what they share, the device profiles and the context, is
:mod:`video_st.bench.gpu_context`).

Every section runs the project's code path, never a copy of it: training is the engine's ``Trainer`` (the real loop,
checkpoint and export) behind each backend; testing is ``multiview.run_test``; the data path is the train dataset
and loader of ``engine.build`` / ``data.datasets`` feeding ``BatchAugment`` on the device; frame folders are written
by the preprocessing job. A section returns ``(figures, details)``: figures are positive measures (rates, times,
memory, ratios), details everything else. It raises :class:`Skipped` where its path does not apply here.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from ..data.datasets import make_loader
from ..data.sampling import train_indices
from ..data.transforms import BatchAugment
from ..engine import distributed
from ..engine.build import output_path, read_split, train_dataset
from ..errors import ConfigError
from ..models.calibrate import calibrate
from ..models.factory import create_model
from .gpu_context import NUM_CLASSES, Context, Skipped, TimedBatches
from .measure import inference_step, interleaved_timings, seeded_clip


def _train(ctx: Context, *, kind: str, precision: str, timed_steps: int | None = None,
           run: str | None = None) -> tuple[dict, dict]:
    """A short run of the real training loop (Trainer.run: steps, validation, checkpoint, export) on one engine."""
    from ..engine.train import Trainer

    p = ctx.profile
    timed = p.train_steps if timed_steps is None else timed_steps
    steps = p.warmup_steps + timed + 1  # the last step has no next batch to stamp its end
    cfg = ctx.config(run or f"train_{kind}_{precision}", f"engine.kind={kind}", f"engine.precision={precision}",
                     "engine.zero_stage=2", f"engine.max_steps={steps}")
    distributed.init(ctx.env, ctx.device)
    try:
        trainer = Trainer(cfg, ctx.env, ctx.device)
    except ConfigError as err:
        if precision == "fp16" and ctx.device.type == "cpu":
            raise Skipped(f"refused by the precision policy: {err}") from err
        raise
    feed = TimedBatches(trainer.train_loader, ctx)
    trainer.train_loader = feed  # the real loader (and its workers) goes with the last reference to it
    ctx.release()
    code = trainer.run()
    if code != 0 or trainer.step != steps:
        raise RuntimeError(f"the training loop returned {code} at step {trainer.step} of {steps}")
    final = output_path(cfg, "model_final.pt")
    if not os.path.isfile(final):
        raise RuntimeError(f"the training loop wrote no {final}")
    with open(output_path(cfg, "log.jsonl"), encoding="utf-8") as f:
        logged = [r for r in map(json.loads, f) if r["kind"] == "train"]  # the loop's own log, every step
    losses = [r["loss"] for r in logged]
    step_s = statistics.median(feed.step_seconds(skip=p.warmup_steps))
    clips_s = p.train_batch / step_s
    gflops = ctx.forward_gflops(trainer.model)
    figures = {"clips_s": clips_s, "step_ms": 1000 * step_s, "peak_mem_mb": feed.peak_mb, "gflops_per_clip": gflops}
    mfu, how = ctx.mfu(clips_s, gflops)
    if mfu is not None:
        figures["mfu"] = mfu
    scale = trainer.backend.loss_scale()
    if scale is not None:  # fp16: dynamic loss scaling
        figures["loss_scale"] = scale
    details = {"engine": kind, "precision": precision, "zero_stage": 2 if kind == "deepspeed" else None,
               "batch": p.train_batch, "timed_steps": timed, "warmup_steps": p.warmup_steps,
               "loss_first": losses[0], "loss_last": losses[-1], "mfu": how,
               "loss_scales": [r["loss_scale"] for r in logged if "loss_scale" in r] or None,
               "peak_mem": "torch.cuda.max_memory_allocated" if ctx.device.type == "cuda" else "process peak RSS"}
    if ctx.trained is None:
        ctx.trained = (cfg, final)
    del trainer, feed
    return figures, details


def train_deepspeed_bf16(ctx: Context, budget_s: float) -> tuple[dict, dict]:
    return _train(ctx, kind="deepspeed", precision="bf16")


def train_deepspeed_fp16(ctx: Context, budget_s: float) -> tuple[dict, dict]:
    return _train(ctx, kind="deepspeed", precision="fp16")


def train_ddp_bf16(ctx: Context, budget_s: float) -> tuple[dict, dict]:
    return _train(ctx, kind="ddp", precision="bf16")


def test_net(ctx: Context, budget_s: float) -> tuple[dict, dict]:
    """The multi-view test (tools/test_net.py's run_test) of the model a training section just exported: under
    bf16 autocast on a GPU (the trained config's precision), fp32 on a CPU."""
    from ..engine.multiview import run_test

    if ctx.trained is None:  # no training section finished before this one: a short run of its own
        _train(ctx, kind="ddp", precision="bf16", timed_steps=1, run="test_net_training")
    cfg, checkpoint = ctx.trained
    summary = run_test(cfg, checkpoint, os.path.join(ctx.work_dir, "test"))
    expected = len(ctx.videos().summary.classes) * ctx.profile.val_per_class
    if summary["videos"] != expected or summary["excluded"] or summary["partial"]:
        raise RuntimeError(f"tested {summary['videos']} of {expected} videos ({summary['excluded']} excluded, "
                           f"{summary['partial']} partial)")
    figures = {"views_s": summary["clips_per_s"], "videos": summary["videos"],
               "views_per_video": summary["views_per_video"], "gflops_per_view": summary["gflops_per_view"]}
    details = {"top1": summary["top1"], "checkpoint": os.path.basename(checkpoint), "method": summary["method"],
               "autocast": cfg.engine.precision if ctx.device.type == "cuda" else "fp32"}
    return figures, details


def batch_augment(ctx: Context, budget_s: float) -> tuple[dict, dict]:
    """BatchAugment (RandAugment 2/9 per clip + normalise, the K400 recipe) on a uint8 batch on the device."""
    p = ctx.profile
    generator = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, p.clip_shape(p.augment_batch), dtype=torch.uint8, generator=generator)
    video = video.to(ctx.device)
    augment = BatchAugment(rand_augment=(2, 9))
    out = augment(video)
    if out.dtype != torch.float32 or out.shape != video.shape or not bool(torch.isfinite(out).all()):
        raise RuntimeError(f"BatchAugment returned {out.dtype} {tuple(out.shape)} (finite: "
                           f"{bool(torch.isfinite(out).all())}) for uint8 {tuple(video.shape)}")
    timing = interleaved_timings({"augment": lambda: augment(video)}, rounds=p.rounds, warmup=1, device=ctx.device)
    per_clip = timing["augment"].median / p.augment_batch
    return {"ms_per_clip": 1000 * per_clip, "clips_s": 1 / per_clip}, {"batch": list(video.shape)}


def _method_steps(ctx: Context, method: str) -> tuple[dict, dict]:
    """Training forward + backward (finite loss, finite gradients) and an inference pass of an input-dependent
    method, its gates / thresholds calibrated to their budgets first (as the benchmarks do, whatever the method's
    ``calibrate`` option: the costs are then those of the configured budget)."""
    p, device = ctx.profile, ctx.device
    model = create_model(p.arch, method=method, num_frames=p.num_frames, img_size=p.img_size,
                         num_classes=NUM_CLASSES).to(device)
    clip = seeded_clip(p.clip_shape(p.method_batch), device=device)
    calibrate(model, clip)
    labels = torch.arange(p.method_batch, device=device) % NUM_CLASSES
    autocast = dict(device_type=device.type, dtype=p.dtype, enabled=p.dtype is not None)
    last: dict[str, Any] = {}

    def criterion(scores: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(scores.float(), labels)

    def train_step() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        with torch.autocast(**autocast):
            logits, terms = model(clip, return_terms=True)
        loss = criterion(logits) + sum(terms.with_task(criterion).values())
        loss.backward()
        last.update(loss=loss.detach(), terms=terms)

    def eval_step() -> None:
        model.eval()
        with torch.inference_mode(), torch.autocast(**autocast):
            last["eval"] = model(clip, return_terms=True)

    timing = interleaved_timings({"train": train_step, "eval": eval_step}, rounds=p.rounds, warmup=1, device=device)
    grads = [q.grad for q in model.parameters() if q.requires_grad]
    if not math.isfinite(last["loss"].item()):
        raise RuntimeError(f"{method}: training loss is {last['loss'].item()}")
    if any(g is None or not bool(torch.isfinite(g).all()) for g in grads) or not any(bool(g.any()) for g in grads):
        missing = sum(g is None for g in grads)
        raise RuntimeError(f"{method}: gradients not all finite and present ({missing} of {len(grads)} missing)")
    logits, terms = last["eval"]
    if not bool(torch.isfinite(logits).all()):
        raise RuntimeError(f"{method}: inference logits are not finite")
    details = {"batch": p.method_batch, "loss": last["loss"].item(), "loss_terms": sorted(last["terms"].losses),
               **{f"train_{k}": v.item() for k, v in last["terms"].stats.items()},
               **{f"eval_{k}": v.item() for k, v in terms.stats.items()}}
    figures = {"train_step_ms": 1000 * timing["train"].median, "eval_ms": 1000 * timing["eval"].median}
    return figures, details


def asvit_key_masks(ctx: Context, budget_s: float) -> tuple[dict, dict]:
    """AS-ViT: soft key masks (a log-mask key bias) through SDPA in training, packed per-sample token sets with a
    -inf padding bias at inference."""
    return _method_steps(ctx, "asvit")


def dyt_gather_scatter(ctx: Context, budget_s: float) -> tuple[dict, dict]:
    """DyT: masked MLP in training, the active tokens gathered, run and scattered back at inference."""
    return _method_steps(ctx, "dyt")


def inference_dense_vs_sparse(ctx: Context, budget_s: float) -> tuple[dict, dict]:
    """Inference clips/s of the dense backbone (full fine-tuning) and of Sparse-Tuning, interleaved rounds."""
    p = ctx.profile
    clip = seeded_clip(p.clip_shape(p.infer_batch), device=ctx.device)
    models = {m: create_model(p.arch, method=m, num_frames=p.num_frames, img_size=p.img_size,
                              num_classes=NUM_CLASSES).to(ctx.device).eval() for m in ("full", "sparse_tuning")}
    steps = {m: inference_step(model, clip, p.dtype) for m, model in models.items()}
    timing = interleaved_timings(steps, rounds=p.rounds, warmup=2, device=ctx.device)
    dense, sparse = (p.infer_batch / timing[m].median for m in ("full", "sparse_tuning"))
    figures = {"dense_clips_s": dense, "sparse_tuning_clips_s": sparse, "sparse_over_dense": sparse / dense}
    return figures, {"batch": p.infer_batch, "autocast": str(p.dtype).replace("torch.", "") if p.dtype else "fp32"}


def _feed(ctx: Context, cfg: DictConfig, budget_s: float) -> tuple[dict, dict]:
    """Clips/s end to end: the training dataset and loader (workers, pinned memory) -> non-blocking copy to the
    device -> BatchAugment there (the config's RandAugment), synchronised; the first batch (worker start) untimed."""
    p, deadline = ctx.profile, time.perf_counter() + budget_s
    records, _ = read_split(cfg, "train")
    loader = make_loader(train_dataset(cfg, records), batch_size=p.train_batch, num_workers=p.workers,
                         drop_last=True, generator=torch.Generator().manual_seed(0))
    rand = cfg.data.rand_augment if cfg.data.augment_on == "device" else None
    augment = BatchAugment(rand_augment=tuple(rand) if rand else None)
    clips, batches, start = 0, 0, None
    for batch in loader:
        video = augment(batch["video"].to(ctx.device, non_blocking=True))
        ctx.sync()
        if start is None:
            start = time.perf_counter()
            continue
        clips, batches = clips + video.shape[0], batches + 1
        if batches >= p.data_batches or time.perf_counter() > deadline:
            break
    if not batches:
        raise RuntimeError(f"the loader gave fewer than 2 batches of {p.train_batch}")
    seconds = time.perf_counter() - start
    details = {"workers": p.workers, "batch": p.train_batch, "pin_memory": loader.pin_memory, "timed_batches": batches,
               "rand_augment": list(rand) if rand else None}
    del loader
    return {"clips_s": clips / seconds}, details


def data_mp4(ctx: Context, budget_s: float) -> tuple[dict, dict]:
    figures, details = _feed(ctx, ctx.config("data_mp4"), budget_s)
    return figures, {**details, "format": f"H.264 mp4, {ctx.profile.height} x {ctx.profile.width}"}


def data_frames(ctx: Context, budget_s: float) -> tuple[dict, dict]:
    frames = ctx.frames()
    cfg = ctx.config("data_frames", "data.dataset=frames", f"data.root={frames.root}",
                     f"data.train={frames.train_list}", f"data.val={frames.train_list}",
                     f"data.labels={ctx.videos().summary.classes_file}")
    figures, details = _feed(ctx, cfg, budget_s)
    return figures, {**details, "format": "JPEG frame folders (tools/preprocess.py frames)",
                     "jpegs": len(frames.jpegs), "frames_job_s": frames.seconds}


def _need_cuda(ctx: Context) -> None:
    if ctx.device.type != "cuda":
        raise Skipped("needs CUDA (--device cpu)")


def _frames_per_s(decode: Callable[[int], int], ctx: Context, budget_s: float, rounds: int) -> float:
    """``decode(i)`` returns the frames it decoded; after one warm-up call, frames/s over ``rounds`` calls."""
    decode(0)
    ctx.sync()
    deadline, start, frames = time.perf_counter() + budget_s / 2, time.perf_counter(), 0
    for i in range(1, rounds + 1):
        frames += decode(i)
        if time.perf_counter() > deadline:
            break
    ctx.sync()
    return frames / (time.perf_counter() - start)


def decode_nvjpeg(ctx: Context, budget_s: float) -> tuple[dict, dict]:
    """Batched JPEG decoding on the GPU (nvjpeg, torchvision.io.decode_jpeg(device='cuda')) of the frame folders."""
    _need_cuda(ctx)
    import torchvision.io

    files, batch = ctx.frames().jpegs, 64
    data = [torch.frombuffer(bytearray(Path(f).read_bytes()), dtype=torch.uint8) for f in files[: 4 * batch]]
    try:
        torchvision.io.decode_jpeg(data[0])  # on the CPU: is torchvision's image extension here at all?
    except Exception as err:
        raise Skipped(f"torchvision's image decoding is unavailable here: {str(err).splitlines()[0]}") from err
    first = torchvision.io.decode_jpeg(data[:2], device=ctx.device)
    if first[0].device.type != "cuda" or first[0].dim() != 3 or first[0].shape[0] != 3:
        raise RuntimeError(f"decode_jpeg(device='cuda') gave {tuple(first[0].shape)} on {first[0].device}")

    def decode(i: int) -> int:
        chunk = [data[(i * batch + k) % len(data)] for k in range(batch)]
        return len(torchvision.io.decode_jpeg(chunk, device=ctx.device))

    rate = _frames_per_s(decode, ctx, budget_s, ctx.profile.rounds)
    return {"frames_s": rate}, {"batch": batch, "frame": list(first[0].shape)}


def decode_torchcodec(ctx: Context, budget_s: float) -> tuple[dict, dict]:
    """NVDEC through torchcodec's VideoDecoder(device='cuda'): training clips' frames of the generated videos."""
    _need_cuda(ctx)
    try:
        import torchcodec
        from torchcodec.decoders import VideoDecoder
    except Exception as err:  # not installed, or a build whose libraries do not load here
        raise Skipped(f"torchcodec is not importable: {type(err).__name__}: {str(err).splitlines()[0]}") from err
    p, summary = ctx.profile, ctx.videos().summary
    paths = [os.path.join(summary.root, "train", n) for n in sorted(os.listdir(os.path.join(summary.root, "train")))]
    try:
        VideoDecoder(paths[0], device=str(ctx.device))
    except Exception as err:
        raise Skipped(f"torchcodec {torchcodec.__version__} cannot decode on CUDA here: "
                      f"{str(err).splitlines()[0]}") from err
    def decode(i: int) -> int:
        decoder = VideoDecoder(paths[i % len(paths)], device=str(ctx.device))
        indices = train_indices(len(decoder), sampling="dense", num_frames=p.num_frames, stride=8,
                                rng=random.Random(i))
        frames = decoder.get_frames_at(indices=indices).data
        if frames.device.type != "cuda" or frames.shape[0] != len(indices):
            raise RuntimeError(f"torchcodec gave {tuple(frames.shape)} on {frames.device}")
        return frames.shape[0]

    rate = _frames_per_s(decode, ctx, budget_s, 4 * ctx.profile.rounds)
    return {"frames_s": rate, "clips_s": rate / p.num_frames}, {"version": torchcodec.__version__}


# name -> (section, budget in seconds on an H100/H200), in the order they run (test_net tests what training wrote)
SECTIONS: dict[str, tuple[Callable[[Context, float], tuple[dict, dict]], float]] = {
    "train_deepspeed_bf16": (train_deepspeed_bf16, 45),
    "train_deepspeed_fp16": (train_deepspeed_fp16, 40),
    "train_ddp_bf16": (train_ddp_bf16, 40),
    "test_net": (test_net, 20),
    "batch_augment": (batch_augment, 10),
    "asvit_key_masks": (asvit_key_masks, 15),
    "dyt_gather_scatter": (dyt_gather_scatter, 15),
    "inference_dense_vs_sparse": (inference_dense_vs_sparse, 20),
    "data_mp4": (data_mp4, 15),
    "data_frames": (data_frames, 15),
    "decode_nvjpeg": (decode_nvjpeg, 10),
    "decode_torchcodec": (decode_torchcodec, 10),
}
