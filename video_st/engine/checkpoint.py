"""Checkpoint directories that a kill can never corrupt, and the search for the newest valid one.

Layout under ``checkpoint.dir``::

    step_00000120/          one checkpoint (the engine's files, rng_rank{r}.pt per rank, MANIFEST.json)
    latest                  the newest tag, in DeepSpeed's format (its zero_to_fp32 tool reads it)
    best.json               {"tag": ..., "metric": ...}

Every rank writes into ``.tmp-step_00000120/``; after a barrier rank 0 writes MANIFEST.json (size and SHA-256 of
every file) and renames the folder into place, so a checkpoint either exists whole or not at all. At resume the
manifest is checked again: a checkpoint whose files were truncated or lost later is skipped with a warning and
the previous one is used.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..fileio import sha256_file, write_atomic
from . import distributed

_log = logging.getLogger(__name__)
MANIFEST = "MANIFEST.json"
SPEC_FILE = "spec.json"  # the model spec (models/spec.py): what the folder's weights are the weights of
TAG = re.compile(r"^step_(\d{8})$")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def _files(folder: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, _, names in os.walk(folder) for n in names
                  if n != MANIFEST)


def verify(folder: str) -> str | None:
    """None when the checkpoint is whole, else what is wrong with it."""
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        return f"no readable {MANIFEST} ({err})"
    for rel, expected in manifest["files"].items():
        path = os.path.join(folder, rel)
        if not os.path.exists(path):
            return f"{rel} is missing"
        if os.path.getsize(path) != expected["size"]:
            return f"{rel} has {os.path.getsize(path)} bytes, expected {expected['size']}"
        if sha256_file(path) != expected["sha256"]:
            return f"{rel} does not match its checksum"
    return None


def rng_state() -> dict[str, Any]:
    # numpy's key array as a tensor: the file then loads with weights_only=True (no numpy unpickling).
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                    cached), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(tuple(tuple(v) if isinstance(v, list) else v for v in state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class CheckpointManager:
    root: str
    keep_last: int = 2
    rank: int = 0

    def __post_init__(self) -> None:
        os.makedirs(self.root, exist_ok=True)

    def tags(self) -> list[str]:
        """Complete-looking checkpoints, newest first (half-written ones live under .tmp- names)."""
        found = [n for n in os.listdir(self.root) if TAG.match(n) and os.path.isdir(os.path.join(self.root, n))]
        return sorted(found, reverse=True)

    def path(self, tag: str) -> str:
        return os.path.join(self.root, tag)

    def save(self, step: int, write: Callable[[str], None], files: dict[str, str] | None = None) -> str:
        """``write(folder)`` runs on every rank (it is collective for DeepSpeed); rank 0 adds ``files`` (name ->
        text, e.g. the model spec); returns the final folder."""
        tag = tag_for(step)
        staging, final = os.path.join(self.root, f".tmp-{tag}"), self.path(tag)
        if self.rank == 0:
            shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while saving
            os.makedirs(staging)
        distributed.barrier()
        write(staging)
        torch.save(rng_state(), os.path.join(staging, f"rng_rank{self.rank}.pt"))
        distributed.barrier()
        if self.rank == 0:
            for name, text in (files or {}).items():
                write_atomic(os.path.join(staging, name), text)
            listed = {rel: {"size": os.path.getsize(os.path.join(staging, rel)), "sha256": sha256_file(os.path.join(staging, rel))}
                      for rel in _files(staging)}
            write_atomic(os.path.join(staging, MANIFEST), json.dumps({"step": step, "files": listed}, indent=1))
            if os.path.exists(final):  # the same step saved again (e.g. a stop right after a periodic save)
                shutil.rmtree(final)
            os.replace(staging, final)
            write_atomic(os.path.join(self.root, "latest"), tag)
            self._prune()
        distributed.barrier()
        return final

    def _prune(self) -> None:
        protected = {self.best().get("tag")}
        for tag in self.tags()[self.keep_last:]:
            if tag not in protected:
                shutil.rmtree(self.path(tag), ignore_errors=True)

    def newest_valid(self) -> str | None:
        """The newest checkpoint whose manifest checks out; warns about each newer one it skips."""
        for tag in self.tags():
            problem = verify(self.path(tag))
            if problem is None:
                return self.path(tag)
            _log.warning("checkpoint %s is damaged (%s); falling back to an older one", self.path(tag), problem)
        return None

    def best(self) -> dict[str, Any]:
        try:
            with open(os.path.join(self.root, "best.json"), encoding="utf-8") as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError):
            return {}

    def update_best(self, tag: str, metric: float) -> None:
        """Record ``tag`` as best if ``metric`` beats the record (rank 0 writes)."""
        if metric > self.best().get("metric", float("-inf")) and self.rank == 0:
            write_atomic(os.path.join(self.root, "best.json"), json.dumps({"tag": tag, "metric": metric}))


def load_rng(folder: str, rank: int) -> None:
    path = os.path.join(folder, f"rng_rank{rank}.pt")
    if os.path.exists(path):  # a run resumed on more ranks than it saved with starts those ranks fresh
        set_rng_state(torch.load(path, weights_only=True))
