"""Run logs on rank 0: one JSON object per line (``log.jsonl``), TensorBoard scalars, and a progress bar."""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
from typing import Any

import torch

_log = logging.getLogger(__name__)


def setup_logging() -> str:
    """INFO on rank 0, warnings elsewhere, each line tagged with the rank (from any launcher's environment)."""
    rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "0"
    logging.basicConfig(level=logging.INFO if rank == "0" else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    return rank


def memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by this process, or its peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak_kb / 1024 if sys.platform != "darwin" else peak_kb / 2**20


class RunLog:
    """Appends to ``log.jsonl`` (a resumed run continues the same file) and TensorBoard; silent off rank 0."""

    def __init__(self, output_dir: str, *, enabled: bool, tensorboard: bool) -> None:
        self.enabled, self.writer, self.file = enabled, None, None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        self.file = open(os.path.join(output_dir, "log.jsonl"), "a", encoding="utf-8")  # noqa: SIM115
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(os.path.join(output_dir, "tensorboard"))
            except ImportError:
                _log.warning("tensorboard is not installed; logging to log.jsonl only")

    def write(self, kind: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()


class Progress:
    """tqdm on rank 0 when enabled, nothing elsewhere."""

    def __init__(self, *, total: int, initial: int, enabled: bool, desc: str) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False)

    def update(self, n: int = 1, **postfix: Any) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
