"""Multi-view testing (tools/test_net.py): any checkpoint the project writes or converts -> the paper's number.

Every test video is decoded once for all its views (temporal x spatial), each view runs once, views are
ensembled per video, and the ranks' results are merged by video index (evaluate.gather): the same numbers on 1
process or 64. Unreadable videos are never replaced: they are excluded, listed and counted.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch
from omegaconf import DictConfig

from ..config import to_dict
from ..errors import ConfigError
from ..data.annotations import load_class_names
from ..data.datasets import make_loader
from ..data.samplers import ShardSampler
from ..models.flops import count_flops
from . import distributed
from .backends import DTYPES
from .build import build_model, eval_dataset, read_split
from .loading import Loaded, config_disagreements, is_video_st_file, load, resolve_checkpoint
from .evaluate import gather, predict
from .logs import Progress
from .report import metrics, write_report

_log = logging.getLogger(__name__)


def checkpoint_path(cfg: DictConfig, checkpoint: str | None) -> str:
    """An explicit path, else ``test.checkpoint``, else the run's checkpoint folder (its best, else its newest)."""
    path = checkpoint or cfg.test.checkpoint or cfg.checkpoint.dir or os.path.join(cfg.output_dir, "checkpoints")
    return resolve_checkpoint(path)


def load_for_test(cfg: DictConfig, path: str) -> tuple[Loaded, dict[str, Any]]:
    """The trained model at ``path``, rebuilt from its spec and checked against the config: a key that says
    something else than the file is an error naming both values. Deliberate test-time changes are asked for in
    the test section (``test.keep_rate``) and returned, to be printed and written into summary.json.

    A foreign checkpoint (VideoMAE, Hugging Face, timm) has no spec: the config describes it, and the model
    factory converts it (its parity tests vouch for that path)."""
    if not is_video_st_file(path):
        model = build_model(cfg, pretrained=path)
        return Loaded(model, model.spec, path, "converted checkpoint"), {}
    pretrained = cfg.model.get("pretrained")
    loaded = load(path, backbone=None if pretrained in (None, "", "none") else pretrained)
    disagree = config_disagreements(loaded.spec, to_dict(cfg.model), (cfg.data.num_frames, cfg.data.size))
    if disagree:
        more = f" (and {len(disagree) - 1} more)" if len(disagree) > 1 else ""
        raise ConfigError(f"{path}: {disagree[0]}{more}; the config must describe the trained model (drop the key, "
                          "or set it to the file's value; test.keep_rate changes keep rates on purpose)")
    changes: dict[str, Any] = {}
    if cfg.test.keep_rate is not None:
        if not loaded.model.keep_rates:
            raise ConfigError(f"test.keep_rate={cfg.test.keep_rate}: the {loaded.spec.method} model of {path} "
                              "reduces no tokens")
        rate, trained = cfg.test.keep_rate, list(loaded.model.keep_rates)
        loaded.model.set_keep_rate(rate if isinstance(rate, (int, float)) else tuple(rate))
        changes["keep_rate"] = {"trained": trained, "tested": list(loaded.model.keep_rates)}
        _log.warning("testing at keep rates %s (trained at %s): test.keep_rate", changes["keep_rate"]["tested"],
                     changes["keep_rate"]["trained"])
    return loaded, changes


def class_names_for(cfg: DictConfig, loaded: Loaded) -> list[str] | None:
    """The class map the model was trained with: its spec's, else (a foreign checkpoint) the run's classes.json,
    else None (the training annotations' then)."""
    if loaded.spec.classes:
        return list(loaded.spec.classes)
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
    # A model that draws at random (model.score=random, the control) tests the same twice; others use no RNG.
    torch.manual_seed(cfg.engine.seed + env.rank)
    path = checkpoint_path(cfg, checkpoint)
    loaded, changes = load_for_test(cfg, path)
    model = loaded.model
    names = class_names_for(cfg, loaded)
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
            scores, terms = model(clips, return_terms=True)
        for key, value in terms.stats.items():
            token_stats.setdefault(key, []).append(value.item())
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
        "checkpoint": path, "checkpoint_kind": loaded.kind, "method": loaded.spec.method,
        "test_time_changes": changes, "videos": result["videos"], "excluded": len(merged.failed),
        "partial": len(merged.partial), "views_per_video": views, "temporal_views": temporal, "spatial_views": spatial,
        "ensemble": cfg.test.ensemble, "top1": result["top1"], "top5": result["top5"],
        "mean_class_accuracy": result["mean_class_accuracy"], "gflops_per_view": gflops,
        "gflops_per_video": gflops * views, "clips_per_s": float(views_done.item() / max(slowest.item(), 1e-9)),
        "world_size": env.world_size, "test_file": cfg.data.test or cfg.data.val,
        **{key: sum(values) / len(values) for key, values in token_stats.items()},  # this rank's batch means
        "results": out_dir or os.path.join(cfg.output_dir, "test"),
    }
    if env.is_main:
        out = summary["results"]
        write_report(out, pred=merged, result=result, summary=summary, video_ids=[r.video_id for r in records],
                     paths=[r.path for r in records], class_names=names)
        _log.info("multi-view test of %s (%s): results in %s", path, loaded.kind, out)
    distributed.barrier()
    return summary
