"""Multi-view testing (tools/test_net.py): any checkpoint the project writes or converts -> the paper's number.

Every test video is decoded once for all its views (temporal x spatial), each view runs once, views are
ensembled per video, and the ranks' results are merged by video index (evaluate.gather): the same numbers on 1
process or 64. Unreadable videos are never replaced: they are excluded, listed and counted.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import torch
from omegaconf import DictConfig

from ..data.annotations import load_class_names
from ..data.datasets import make_loader
from ..data.samplers import ShardSampler
from ..models.adapters import load_trainable_state_dict
from ..models.convert import CheckpointError, read_checkpoint, unwrap
from ..models.flops import count_flops
from ..models.vit import VideoViT
from . import distributed
from .backends import DTYPES, checkpoint_state_dict, is_checkpoint_dir
from .build import build_model, eval_dataset, read_split
from .evaluate import gather, predict
from .logs import Progress
from .report import metrics, write_report

_log = logging.getLogger(__name__)


def resolve_checkpoint(cfg: DictConfig, checkpoint: str | None) -> str:
    """An explicit path, else the run's best checkpoint (checkpoints/best.json), else its newest."""
    path = checkpoint or cfg.test.checkpoint
    if not path:
        path = cfg.checkpoint.dir or os.path.join(cfg.output_dir, "checkpoints")
    hf_folder = any(os.path.exists(os.path.join(path, f)) for f in ("model.safetensors", "pytorch_model.bin"))
    if os.path.isdir(path) and not is_checkpoint_dir(path) and not hf_folder:
        for pointer in ("best.json", "latest"):
            file = os.path.join(path, pointer)
            if os.path.exists(file):
                with open(file, encoding="utf-8") as f:
                    tag = json.load(f)["tag"] if pointer == "best.json" else f.read().strip()
                return os.path.join(path, tag)
        raise CheckpointError(f"{path}: no best.json or latest (not a run's checkpoint folder) and no weights "
                              "of a Hugging Face folder")
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    return path


def load_model(cfg: DictConfig, path: str) -> tuple[VideoViT, dict[str, Any]]:
    """Build ``cfg.model`` and load ``path``: an engine checkpoint folder (DeepSpeed or DDP), a consolidated
    file (model_final.pt), an adapter-only file over the ``model.pretrained`` backbone, or any checkpoint
    tools/convert_checkpoint.py reads (a converted or raw VideoMAE / Hugging Face / timm file)."""
    meta: dict[str, Any] = {}
    if os.path.isdir(path) and is_checkpoint_dir(path):
        model, state, kind = build_model(cfg), checkpoint_state_dict(path), "engine checkpoint"
    else:
        state, meta = unwrap(read_checkpoint(path)[0])
        meta = meta or {}
        if meta.get("source") != "video_st" or "create_args" not in meta:
            # A foreign or converted checkpoint: the model factory converts and loads it.
            return build_model(cfg, pretrained=path), {"kind": "converted checkpoint"}
        model = build_model(cfg)
        kind = "consolidated"
    own = model.state_dict()
    if set(state) >= set(own):
        missing_or_bad = [k for k in own if state[k].shape != own[k].shape]
        if missing_or_bad:
            raise CheckpointError(f"{path}: shapes differ from the config's model for {missing_or_bad[:5]}")
        model.load_state_dict({k: state[k] for k in own})
    elif not cfg.model.get("pretrained"):
        raise CheckpointError(f"{path} holds {len(state)} of the model's {len(own)} tensors (an adapter-only file?); "
                              "set model.pretrained to the backbone it was trained on")
    else:
        load_trainable_state_dict(model, state)
        kind = "adapter-only over model.pretrained"
    return model, {"kind": kind, **{k: v for k, v in meta.items() if k in ("classes", "step")}}


def class_names_for(cfg: DictConfig, meta: dict[str, Any]) -> list[str] | None:
    """The class map the model was trained with: the checkpoint's, the run's classes.json, or (None) the
    training annotations'."""
    if meta.get("classes"):
        return list(meta["classes"])
    saved = os.path.join(cfg.output_dir, "classes.json")
    return load_class_names(saved) if os.path.exists(saved) else None


def run_test(cfg: DictConfig, checkpoint: str | None = None, out_dir: str | None = None) -> dict[str, Any]:
    env = distributed.detect()
    device = distributed.select_device(env, cfg.engine.device)
    distributed.init(env, device)
    try:
        return _run(cfg, env, device, checkpoint, out_dir)
    finally:
        distributed.shutdown()


def _run(cfg: DictConfig, env: distributed.DistEnv, device: torch.device, checkpoint: str | None,
         out_dir: str | None) -> dict[str, Any]:
    path = resolve_checkpoint(cfg, checkpoint)
    model, meta = load_model(cfg, path)
    names = class_names_for(cfg, meta)
    if names is None:
        _, names = read_split(cfg, "train")
    records, names = read_split(cfg, "test", names)
    temporal, spatial = cfg.test.temporal_views, cfg.test.spatial_views
    views = temporal * spatial
    dataset = eval_dataset(cfg, records, temporal_views=temporal, spatial_views=spatial)
    loader = make_loader(dataset, batch_size=cfg.test.batch_size, num_workers=cfg.data.num_workers,
                         sampler=ShardSampler(len(records), rank=env.rank, world_size=env.world_size))
    model.merge_lora()  # LoRA folded into the weights: the test costs what the backbone costs
    model = model.to(device).eval()
    shape = (1, 3, cfg.data.num_frames, cfg.data.size, cfg.data.size)
    # Input-dependent models (DyT, AS-ViT) are counted on the first test batch below, the others on any clip.
    gflops = count_flops(model, shape) if env.is_main and not model.input_dependent else 0.0
    token_stats: dict[str, list[float]] = {}
    first: list[torch.Tensor] = []
    # Mixed precision only on GPUs: CPU autocast in bf16 is slower than fp32 and changes the numbers.
    dtype = DTYPES[cfg.engine.precision] if device.type == "cuda" else torch.float32

    def forward(clips: torch.Tensor) -> torch.Tensor:
        clips = clips.to(device, non_blocking=True)
        if model.input_dependent and env.is_main and not first:
            first.append(clips)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            scores = model(clips)
        for key, value in model.token_stats().items():
            token_stats.setdefault(key, []).append(value)
        return scores

    progress = Progress(total=len(loader.sampler), initial=0, enabled=env.is_main and cfg.log.progress, desc="test")
    start = time.perf_counter()
    local = predict(forward, loader, ensemble=cfg.test.ensemble, max_views=cfg.test.batch_size * views,
                    on_batch=progress.update)
    elapsed = time.perf_counter() - start
    progress.close()
    if first:  # counted outside the timed loop: tracing is slow
        gflops = count_flops(model, inputs=first[0])
    views_done = distributed.all_reduce(torch.tensor([float(local.views.sum())]))
    slowest = distributed.all_reduce(torch.tensor([elapsed]), op="max")
    merged = gather(local, len(names))
    result = metrics(merged, len(names))
    summary = {
        "checkpoint": path, "checkpoint_kind": meta["kind"], "videos": result["videos"], "excluded": len(merged.failed),
        "partial": len(merged.partial), "views_per_video": views, "temporal_views": temporal, "spatial_views": spatial,
        "ensemble": cfg.test.ensemble, "top1": result["top1"], "top5": result["top5"],
        "mean_class_accuracy": result["mean_class_accuracy"], "gflops_per_view": gflops,
        "gflops_per_video": gflops * views, "clips_per_s": float(views_done.item() / max(slowest.item(), 1e-9)),
        "world_size": env.world_size, "test_file": cfg.data.test or cfg.data.val,
        **{key: sum(values) / len(values) for key, values in token_stats.items()},  # this rank's batch means
    }
    if env.is_main:
        out = out_dir or os.path.join(cfg.output_dir, "test")
        write_report(out, pred=merged, result=result, summary=summary, video_ids=[r.video_id for r in records],
                     paths=[r.path for r in records], class_names=names)
        _log.info("multi-view test of %s (%s): results in %s", path, meta["kind"], out)
    distributed.barrier()
    return summary
