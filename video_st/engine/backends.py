"""The two engines behind one training loop: DeepSpeed (default) and plain DDP + torch.amp.

Both take the same optimizer (torch AdamW over the trainable parameter groups), the same micro-batch and
accumulation, the same clipping; the loop sets the learning rate on ``optimizer_groups`` before each step.
DeepSpeed's JSON is generated here from the run config (``deepspeed_config``) and saved with the run, never
written by hand.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch import nn

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
STATE_FILE = "ddp_state.pt"


def deepspeed_config(*, micro_batch: int, accumulation: int, world_size: int, precision: str, zero_stage: int,
                     clip_grad: float | None) -> dict[str, Any]:
    return {
        "train_batch_size": micro_batch * accumulation * world_size,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": float(clip_grad or 0.0),
        "bf16": {"enabled": precision == "bf16"},
        # Dynamic loss scaling: loss_scale 0 means "dynamic", starting at 2**16.
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16,
                 "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
        "zero_optimization": {"stage": zero_stage},
        # Our AdamW is torch's; ZeRO wraps it without a DeepSpeed fused kernel (nothing to compile).
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


class DeepSpeedBackend:
    kind = "deepspeed"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, config: dict[str, Any],
                 device: torch.device) -> None:
        import deepspeed

        if device.type == "cpu":
            from ..compat import disable_deepspeed_shm_comm

            disable_deepspeed_shm_comm()
        self.module, self.device, self.config = model, device, config
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config,
                                                                 dist_init_required=False)
        precision = "bf16" if config["bf16"]["enabled"] else "fp16" if config["fp16"]["enabled"] else "fp32"
        self.input_dtype = DTYPES[precision]  # DeepSpeed casts the module; inputs must match

    @property
    def optimizer_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def train(self, mode: bool = True) -> None:
        self.engine.train(mode)

    def boundary(self) -> bool:
        return self.engine.is_gradient_accumulation_boundary()

    def forward(self, video: torch.Tensor, **kwargs: Any) -> Any:
        return self.engine(video.to(self.device, self.input_dtype, non_blocking=True), **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)  # scaled by 1 / accumulation and by the fp16 loss scale inside

    def step(self) -> float | None:
        """Optimizer step at an accumulation boundary (DeepSpeed counts micro-steps itself); the global gradient
        norm before clipping where DeepSpeed computed one."""
        own = None
        if self.boundary() and self.config["zero_optimization"]["stage"] == 0 and not (
                self.config["bf16"]["enabled"] or self.config["fp16"]["enabled"]):
            # fp32 without ZeRO: DeepSpeed steps torch's optimizer directly and keeps no norm (its clipping too
            # computes one and drops it); the gradients are all-reduced on the parameters by now.
            grads = [p.grad for p in self.module.parameters() if p.grad is not None]
            own = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return own if norm is None else float(norm)

    def loss_scale(self) -> float | None:
        return float(self.optimizer.cur_scale) if self.config["fp16"]["enabled"] else None

    def save(self, directory: str, client_state: dict[str, Any]) -> None:
        self.engine.save_checkpoint(os.path.dirname(directory), tag=os.path.basename(directory),
                                    client_state=client_state, save_latest=False)

    def load(self, directory: str) -> dict[str, Any]:
        path, client_state = self.engine.load_checkpoint(os.path.dirname(directory), tag=os.path.basename(directory),
                                                         load_optimizer_states=True, load_lr_scheduler_states=False)
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint in {directory}")
        return client_state


class DDPBackend:
    """DistributedDataParallel (or the bare module in a world of one) with torch.autocast and, for fp16, a
    GradScaler. Accumulation skips the all-reduce on non-boundary micro-steps (``no_sync``)."""

    kind = "ddp"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, accumulation: int, precision: str,
                 clip_grad: float | None, device: torch.device, world_size: int) -> None:
        self.module, self.optimizer, self.device = model.to(device), optimizer, device
        self.accumulation, self.clip_grad, self.precision = accumulation, clip_grad, precision
        self.wrapped: nn.Module = model
        if world_size > 1:
            self.wrapped = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.input_dtype = torch.float32
        self.micro_step = 0

    @property
    def optimizer_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def train(self, mode: bool = True) -> None:
        self.wrapped.train(mode)

    def boundary(self) -> bool:
        return (self.micro_step + 1) % self.accumulation == 0

    def forward(self, video: torch.Tensor, **kwargs: Any) -> Any:
        sync = self.boundary() or not isinstance(self.wrapped, nn.parallel.DistributedDataParallel)
        context = contextlib.nullcontext() if sync or not self.wrapped.training else self.wrapped.no_sync()
        with context, torch.autocast(self.device.type, dtype=DTYPES[self.precision], enabled=self.precision != "fp32"):
            return self.wrapped(video.to(self.device, non_blocking=True), **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss / self.accumulation).backward()

    def step(self) -> float | None:
        self.micro_step += 1
        if self.micro_step % self.accumulation:
            return None
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.clip_grad or float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def loss_scale(self) -> float | None:
        return float(self.scaler.get_scale()) if self.scaler.is_enabled() else None

    def save(self, directory: str, client_state: dict[str, Any]) -> None:
        import torch.distributed as dist

        if not dist.is_initialized() or dist.get_rank() == 0:  # DDP replicas are identical
            os.makedirs(directory, exist_ok=True)
            torch.save({"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "scaler": self.scaler.state_dict(), "micro_step": self.micro_step,
                        "client_state": client_state}, os.path.join(directory, STATE_FILE))

    def load(self, directory: str) -> dict[str, Any]:
        state = torch.load(os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=True)
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.micro_step = state["micro_step"]
        return state["client_state"]


DEEPSPEED_MODEL_FILE = "mp_rank_00_model_states.pt"


def is_checkpoint_dir(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in (DEEPSPEED_MODEL_FILE, STATE_FILE))


def checkpoint_state_dict(path: str) -> dict[str, torch.Tensor]:
    """fp32 weights of an engine checkpoint folder (either backend). Where DeepSpeed trained in bf16/fp16 its
    module file holds the low-precision copies: the fp32 masters are consolidated from the ZeRO optimizer
    partitions (DeepSpeed's zero_to_fp32), frozen weights and buffers come from the module file."""
    if os.path.exists(os.path.join(path, STATE_FILE)):
        module = torch.load(os.path.join(path, STATE_FILE), map_location="cpu", weights_only=True)["module"]
    else:
        module = torch.load(os.path.join(path, DEEPSPEED_MODEL_FILE), map_location="cpu", weights_only=True)["module"]
        low_precision = any(v.dtype in (torch.bfloat16, torch.float16) for v in module.values())
        if low_precision and any(n.endswith("optim_states.pt") for n in os.listdir(path)):
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            module = get_fp32_state_dict_from_zero_checkpoint(os.path.dirname(path), tag=os.path.basename(path))
    return {k: v.float() if v.is_floating_point() else v for k, v in module.items()}
