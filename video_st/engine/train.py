"""The training loop: one loop for both engines, resumable to the step, stoppable at a step boundary.

A run is fully determined by its config and seed: items carry their own augmentation seeds (TrainSampler),
batch-level randomness (RandAugment on the device, mixup, drop path) comes from torch's global generator, and
every checkpoint stores each rank's generators, the step, the epoch and the micro-batches done in it. Resuming
from any checkpoint therefore replays exactly what an uninterrupted run does (on CPU, deterministic settings).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from ..config import save_config
from ..errors import ConfigError
from ..data.annotations import save_class_names
from ..data.datasets import BadFileLog, make_loader
from ..data.masks import pool_tokens
from ..data.samplers import ShardSampler, TrainSampler
from ..data.transforms import BatchAugment, make_mixup
from ..fileio import write_atomic
from ..models.calibrate import calibrate, wants_calibration
from ..models.sparsify import KeepRateWarmup
from ..models.spec import save_model_file
from . import distributed
from .backends import DDPBackend, DeepSpeedBackend, checkpoint_state_dict, deepspeed_config
from .build import build_model, eval_dataset, output_path, read_split, set_mask_objectives, train_dataset
from .checkpoint import SPEC_FILE, CheckpointManager, load_rng
from .loading import check_weights_only, read_folder_spec
from .evaluate import accuracy, gather, mean_loss, predict
from .logs import Progress, RunLog, memory_mb
from .optim import CosineSchedule, make_adamw, param_groups, set_lr
from .requeue import EXIT_REQUEUE, REQUEUE_MARKER, StopFlag

_log = logging.getLogger(__name__)


def seed_everything(seed: int, rank: int) -> None:
    # Model init uses engine.seed alone (build_model); the training stream differs per rank (drop path, mixup).
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)


class Trainer:
    def __init__(self, cfg: DictConfig, env: distributed.DistEnv, device: torch.device) -> None:
        self.cfg, self.env, self.device = cfg, env, device
        main = env.is_main
        if cfg.engine.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg.engine.seed, env.rank)
        # Everything the run needs is checked before any output exists: a run that cannot start leaves nothing.
        if device.type == "cpu" and cfg.engine.precision == "fp16":
            raise ConfigError("engine.precision=fp16 needs a GPU (neither DeepSpeed nor torch's CPU autocast trains "
                              "in fp16 on a CPU); use bf16 or fp32")
        if cfg.checkpoint.resume not in ("auto", "none") and not os.path.isdir(cfg.checkpoint.resume):
            raise ConfigError(f"checkpoint.resume={cfg.checkpoint.resume}: no such checkpoint folder")
        train_records, self.class_names = read_split(cfg, "train")
        val_records, _ = read_split(cfg, "val", self.class_names)
        if cfg.model.get("num_classes") not in (None, len(self.class_names)):
            raise ConfigError(f"model.num_classes={cfg.model.num_classes} but {cfg.data.train} has "
                              f"{len(self.class_names)} classes")
        train_data = train_dataset(cfg, train_records)  # with data.object_first or a guide: its masks, checked
        self.model = build_model(cfg, classes=self.class_names, for_training=True)
        set_mask_objectives(cfg, self.model)
        if cfg.engine.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        if wants_calibration(self.model):  # option calibrate=true (DyT, AS-ViT); before the backend broadcasts
            self._calibrate(train_records)  # rank 0's weights; a resume overwrites it

        micro, world = cfg.data.batch_size, env.world_size
        global_batch = cfg.optim.global_batch or micro * world
        if global_batch % (micro * world):
            raise ConfigError(f"optim.global_batch={global_batch} is not a multiple of data.batch_size x world size "
                              f"= {micro} x {world}")
        self.accumulation = global_batch // (micro * world)
        self.sampler = TrainSampler(len(train_records), rank=env.rank, world_size=world, seed=cfg.engine.seed)
        self.micro_per_epoch = (self.sampler.per_rank // micro) // self.accumulation * self.accumulation
        self.steps_per_epoch = self.micro_per_epoch // self.accumulation
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{len(train_records)} training videos make no optimizer step of global batch "
                              f"{global_batch}")
        if main:
            os.makedirs(cfg.output_dir, exist_ok=True)
            save_config(cfg, output_path(cfg, "config.yaml"))
            save_class_names(self.class_names, output_path(cfg, "classes.json"))
        self.log = RunLog(cfg.output_dir, enabled=main, tensorboard=cfg.log.tensorboard)
        self.total_steps = cfg.optim.epochs * self.steps_per_epoch
        if cfg.engine.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.engine.max_steps)
        self.lr = cfg.optim.lr * global_batch / cfg.optim.base_batch
        self.schedule = CosineSchedule(peak=self.lr, total_steps=self.total_steps, minimum=cfg.optim.min_lr,
                                       warmup_steps=round(cfg.optim.warmup_epochs * self.steps_per_epoch))
        self.groups = param_groups(self.model, weight_decay=cfg.optim.weight_decay, layer_decay=cfg.optim.layer_decay)
        optimizer = make_adamw(self.groups, lr=self.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
        self.backend = self._backend(optimizer, micro, world)

        self.train_loader = make_loader(train_data, batch_size=micro, sampler=self.sampler,
                                        num_workers=cfg.data.num_workers, drop_last=True,
                                        generator=torch.Generator().manual_seed(cfg.engine.seed))
        self.val_loader = make_loader(eval_dataset(cfg, val_records), batch_size=cfg.test.batch_size,
                                      sampler=ShardSampler(len(val_records), rank=env.rank, world_size=world),
                                      num_workers=cfg.data.num_workers, drop_last=False)
        rand_augment = cfg.data.rand_augment if cfg.data.augment_on == "device" else None
        self.augment = BatchAugment(rand_augment=tuple(rand_augment) if rand_augment else None)
        self.mixup = None
        if cfg.optim.mixup_alpha > 0 or cfg.optim.cutmix_alpha > 0:
            self.mixup = make_mixup(num_classes=len(self.class_names), mixup_alpha=cfg.optim.mixup_alpha,
                                    cutmix_alpha=cfg.optim.cutmix_alpha, label_smoothing=cfg.optim.label_smoothing,
                                    cutmix_prob=cfg.optim.cutmix_prob if cfg.optim.mixup_alpha > 0 else 1.0)
        self.keep_rates = KeepRateWarmup(target=self.model.keep_rates, warmup_epochs=cfg.optim.keep_rate_warmup_epochs)
        # After the backend placed the model: the EMA lives beside the weights it follows.
        self.ema = ({n: p.detach().float().clone() for n, p in self.model.named_parameters() if p.requires_grad}
                    if cfg.optim.ema_decay else None)
        self.grad_norm: float | None = None
        self.aux_losses: dict[str, torch.Tensor] = {}
        self.token_stats: dict[str, float] = {}
        self.checkpoints = CheckpointManager(cfg.checkpoint.dir or output_path(cfg, "checkpoints"),
                                             keep_last=cfg.checkpoint.keep_last, rank=env.rank)
        self.bad_files = BadFileLog()
        self.step = self.epoch = self.micro_done = 0  # micro_done: micro-batches of `epoch` already trained
        self.best = float("-inf")

    def _calibrate(self, records: list) -> None:
        """Start DyT's gates / AS-ViT's thresholds at their targets on a few training clips (``calibrate=true``;
        the published recipes start at a zero gate bias and fixed thresholds)."""
        dataset = train_dataset(self.cfg, records)
        clips = torch.stack([dataset[i]["video"] for i in range(min(len(dataset), self.cfg.data.batch_size, 8))])
        self.model.to(self.device)  # where the backend puts it anyway; a ViT-B pass per layer is slow on a CPU
        found = calibrate(self.model, BatchAugment(rand_augment=None)(clips.to(self.device)))
        _log.info("calibrated to the target rates on %d clips: %s", len(clips),
                  {k: [round(v, 4) for v in vals] for k, vals in found.items() if vals})

    def _backend(self, optimizer: torch.optim.Optimizer, micro: int, world: int):
        cfg = self.cfg
        if cfg.engine.kind == "ddp":
            return DDPBackend(self.model, optimizer, accumulation=self.accumulation, precision=cfg.engine.precision,
                              clip_grad=cfg.optim.clip_grad, device=self.device, world_size=world)
        ds_config = deepspeed_config(micro_batch=micro, accumulation=self.accumulation, world_size=world,
                                     precision=cfg.engine.precision, zero_stage=cfg.engine.zero_stage,
                                     clip_grad=cfg.optim.clip_grad)
        if self.env.is_main:
            write_atomic(output_path(cfg, "deepspeed_config.json"), json.dumps(ds_config, indent=1))
        return DeepSpeedBackend(self.model, optimizer, ds_config, self.device)

    # -- resume and save -------------------------------------------------------------------------------------
    def resume(self) -> None:
        choice = self.cfg.checkpoint.resume
        if choice == "none":
            return
        folder = self.checkpoints.newest_valid() if choice == "auto" else choice
        if folder is None:
            return
        self._check_resumable(folder)
        state = self.backend.load(folder)
        load_rng(folder, self.env.rank)
        self.step, self.epoch, self.micro_done = state["step"], state["epoch"], state["micro_done"]
        self.best = state["best"]
        if self.ema is not None and state.get("ema"):
            self.ema = {n: t.float().to(self.device) for n, t in state["ema"].items()}
        self.bad_files.seen.update(state.get("bad_files", {}))
        _log.info("resumed from %s at step %d (epoch %d, %d micro-batches in)", folder, self.step, self.epoch,
                  self.micro_done)
        self.log.write("resume", self.step, checkpoint=folder, epoch=self.epoch,
                       slurm_restart_count=int(os.environ.get("SLURM_RESTART_COUNT", 0)))

    def _check_resumable(self, folder: str) -> None:
        """A checkpoint resumes only the run that wrote it: the same model spec (method, options, geometry,
        classes), and weights that load as weights only."""
        check_weights_only(folder)
        trained = read_folder_spec(folder)
        differences = self.model.spec.differences(trained)
        if differences:
            key, mine, theirs = differences[0]
            raise ConfigError(f"cannot resume {folder}: {key} is {mine} in this config but {theirs} in the "
                              f"checkpoint ({len(differences)} difference(s)); use another output_dir or "
                              "checkpoint.resume=none to start fresh")

    def save(self) -> str:
        client = {"step": self.step, "epoch": self.epoch, "micro_done": self.micro_done, "best": self.best,
                  "ema": self.ema, "bad_files": dict(self.bad_files.seen)}
        spec = json.dumps(self.model.spec.to_dict(), indent=1)
        folder = self.checkpoints.save(self.step, lambda d: self.backend.save(d, client), files={SPEC_FILE: spec})
        self.log.write("checkpoint", self.step, path=folder)
        return folder

    # -- the loop --------------------------------------------------------------------------------------------
    def run(self) -> int:
        stop = StopFlag()
        marker = output_path(self.cfg, REQUEUE_MARKER)
        try:
            if self.env.is_main and os.path.exists(marker):
                os.remove(marker)
            self.resume()
            final = output_path(self.cfg, "model_final.pt")
            if self.step >= self.total_steps and os.path.exists(final):
                _log.warning("%s already holds a finished run (step %d of %d; %s): nothing to do. To start fresh, "
                             "use another output_dir or checkpoint.resume=none", self.cfg.output_dir, self.step,
                             self.total_steps, final)
                return 0
            while self.step < self.total_steps:
                if self._train_epoch(stop):
                    self.save()
                    self.log.write("stopped", self.step, signal=stop.signal)
                    if self.env.is_main:
                        write_atomic(marker, json.dumps({"step": self.step, "signal": stop.signal}))
                    return EXIT_REQUEUE
                if self.micro_done >= self.micro_per_epoch:
                    self._end_epoch()
            self._finish()
            return 0
        finally:
            stop.restore()
            self.log.close()

    def _train_epoch(self, stop: StopFlag) -> bool:
        """Train from (epoch, micro_done) to the end of the epoch or ``total_steps``; True if asked to stop."""
        cfg = self.cfg
        self.sampler.set_epoch(self.epoch, skip=self.micro_done * cfg.data.batch_size)
        self.backend.train()
        progress = Progress(total=self.steps_per_epoch, initial=self.micro_done // self.accumulation,
                            enabled=self.env.is_main and cfg.log.progress, desc=f"epoch {self.epoch + 1}")
        window_loss, window_clips, window_start = 0.0, 0, time.perf_counter()
        try:
            for batch in self.train_loader:
                if self.micro_done >= self.micro_per_epoch:
                    break
                self.bad_files.record(batch["failed"])
                boundary = self.backend.boundary()
                if boundary:
                    self._before_step()
                loss = self._micro_step(batch, boundary)
                window_loss += loss
                window_clips += len(batch["label"])
                self.micro_done += 1
                if self.micro_done % self.accumulation:
                    continue
                self.step += 1
                rate = window_clips * self.env.world_size / (time.perf_counter() - window_start)
                progress.update(loss=f"{window_loss / self.accumulation:.4f}", lr=f"{self._lr():.2e}",
                                clips_s=f"{rate:.1f}", mem_mb=f"{memory_mb(self.device):.0f}")
                if self.step % cfg.log.every_steps == 0 or self.step == 1:
                    self._log_step(window_loss / self.accumulation, rate)
                window_loss, window_clips, window_start = 0.0, 0, time.perf_counter()
                if self._stop_requested(stop):
                    return True
                if cfg.checkpoint.every_steps and self.step % cfg.checkpoint.every_steps == 0:
                    self.save()
                if self.step >= self.total_steps:
                    break
        finally:
            progress.close()
        if self.step >= self.total_steps:
            self.micro_done = self.micro_per_epoch
        return False

    def _lr(self) -> float:
        return self.schedule(max(0, self.step))

    def _before_step(self) -> None:
        set_lr(self.backend.optimizer_groups, self.groups, self._lr())
        if self.model.keep_rates:
            self.model.set_keep_rate(self.keep_rates(self.epoch + self.micro_done / self.micro_per_epoch))

    def _micro_step(self, batch: dict[str, Any], boundary: bool) -> float:
        video = self.augment(batch["video"].to(self.device, non_blocking=True))
        labels = batch["label"].to(self.device)
        if self.mixup is not None:
            video, target = self.mixup(video, labels)  # soft labels, smoothing included
        tokens = None
        if "foreground" in batch:  # the clips' object pixels -> their tokens: kept first, and/or the guide's
            embed = self.model.patch_embed
            tokens = pool_tokens(batch["foreground"], patch=embed.patch_size, tubelet=embed.tubelet_size)
        logits, terms = self.backend.forward(video, return_terms=True,
                                             prefer=tokens if self.cfg.data.object_first else None,
                                             guide=tokens if self.cfg.optim.attention_guide > 0 else None)
        logits = logits.float()

        def criterion(scores: torch.Tensor) -> torch.Tensor:
            if self.mixup is not None:
                return torch.sum(-target * F.log_softmax(scores, dim=-1), dim=-1).mean()
            return F.cross_entropy(scores, labels, label_smoothing=self.cfg.optim.label_smoothing)

        loss = criterion(logits)
        self.aux_losses = terms.with_task(criterion)  # DyT's rate and distillation, AS-ViT's budget, the guide
        self.token_stats = terms.stats
        if self.aux_losses:
            loss = loss + sum(self.aux_losses.values())
        value = loss.item()  # the one device sync of a micro-step (logging needs the value anyway)
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at step {self.step}")
        self.backend.backward(loss)
        norm = self.backend.step()
        if boundary:
            self.grad_norm = norm
            self._update_ema()
        return value

    def _update_ema(self) -> None:
        if self.ema is None:
            return
        decay = self.cfg.optim.ema_decay
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                if name in self.ema:
                    self.ema[name].mul_(decay).add_(param.detach().float(), alpha=1 - decay)

    def _stop_requested(self, stop: StopFlag) -> bool:
        # Any rank's signal stops every rank at the same step.
        flag = torch.tensor([1.0 if stop.signal is not None else 0.0])
        return bool(distributed.all_reduce(flag, op="max").item())

    def _log_step(self, loss: float, clips_s: float) -> None:
        values = {"loss": loss, "lr": self._lr(), "clips_s": clips_s, "memory_mb": memory_mb(self.device),
                  "epoch": self.epoch + self.micro_done / self.micro_per_epoch}
        if self.grad_norm is not None:
            values["grad_norm"] = self.grad_norm
        if self.backend.loss_scale() is not None:
            values["loss_scale"] = self.backend.loss_scale()
        if self.model.keep_rates:
            values["keep_rate"] = min(self.model.keep_rates)
        ratio = self.model.token_ratio()
        if ratio is not None and self.model.keep_rates:
            values["token_ratio"] = ratio
        values.update({k: v.item() for k, v in self.token_stats.items()})  # DyT's activation rate, AS-ViT's kept fraction
        values.update({f"loss_{k}": v.item() for k, v in self.aux_losses.items()})
        self.log.write("train", self.step, **values)

    def validate(self) -> dict[str, float]:
        """Single view per video (the quick per-epoch check; tools/test_net.py does the multi-view test)."""
        self.backend.train(False)
        try:
            local = predict(lambda clips: self.backend.forward(clips), self.val_loader, ensemble="logit")
        finally:
            self.backend.train(True)
        merged = gather(local, len(self.class_names))
        return {"val_top1": accuracy(merged.scores, merged.labels, 1) if len(merged.index) else float("nan"),
                "val_loss": mean_loss(merged.scores, merged.labels) if len(merged.index) else float("nan"),
                "val_videos": len(merged.index), "val_failed": len(merged.failed)}

    def _end_epoch(self) -> None:
        metrics = self.validate()
        self.epoch, self.micro_done = self.epoch + 1, 0
        top1 = metrics["val_top1"]
        improved = not math.isnan(top1) and top1 > self.best
        if improved:
            self.best = top1
        self.log.write("epoch", self.step, epoch=self.epoch, **metrics, bad_files=len(self.bad_files.seen))
        _log.info("epoch %d: val top-1 %.4f on %d videos (%d unreadable)", self.epoch, top1, metrics["val_videos"],
                  metrics["val_failed"])
        last = self.step >= self.total_steps
        if improved or last or self.epoch % self.cfg.checkpoint.every_epochs == 0:
            folder = self.save()
            if improved:
                self.checkpoints.update_best(os.path.basename(folder), top1)

    def _finish(self) -> None:
        """Exports for the test tool and for sharing: fp32 consolidated weights and the trainable part alone."""
        folder = self.checkpoints.newest_valid()
        if self.env.is_main and folder is not None:
            state, spec = checkpoint_state_dict(folder), self.model.spec
            save_model_file(output_path(self.cfg, "model_final.pt"), state, spec=spec, step=self.step)
            trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
            save_model_file(output_path(self.cfg, "trainable_final.pt"),
                            {k: v for k, v in state.items() if k in trainable}, spec=spec, content="trainable",
                            step=self.step)
            if self.ema is not None:
                save_model_file(output_path(self.cfg, "trainable_ema.pt"), {k: v.cpu() for k, v in self.ema.items()},
                                spec=spec, content="trainable", step=self.step)
        if self.env.is_main and self.bad_files.seen:
            self.bad_files.write(output_path(self.cfg, "bad_files.txt"))
            _log.warning("%d unreadable training videos were replaced (list: %s)", len(self.bad_files.seen),
                         output_path(self.cfg, "bad_files.txt"))
        self.log.write("done", self.step, best_val_top1=self.best, bad_files=len(self.bad_files.seen))
        best = self.checkpoints.best()
        _log.info("training finished at step %d: best single-view val top-1 %.4f (%s); outputs in %s: "
                  "model_final.pt, trainable_final.pt, log.jsonl, checkpoints/", self.step, self.best,
                  best.get("tag", "no best checkpoint"), self.cfg.output_dir)
        distributed.barrier()


def train(cfg: DictConfig) -> int:
    """Train per ``cfg``; returns 0 when finished, EXIT_REQUEUE when stopped by a signal after checkpointing."""
    env = distributed.detect()
    device = distributed.select_device(env, cfg.engine.device)
    distributed.init(env, device)
    try:
        return Trainer(cfg, env, device).run()
    finally:
        distributed.shutdown()
