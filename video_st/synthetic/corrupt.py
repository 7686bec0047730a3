"""Corrupt files planted among a generated dataset's videos, as a real download has them.

Kinds: ``zero`` (an empty file), ``truncated`` (the first 40% of a valid file: a download cut short) and
``garbage`` (random bytes of the valid file's size). A planted file keeps its annotation row, like a failed
download, and is listed in ``ROOT/corrupt.json`` so tests and tools know which reads must fail.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..fileio import write_atomic
from .items import Item

_log = logging.getLogger(__name__)

CORRUPT_KINDS = ("zero", "truncated", "garbage")


@dataclass(frozen=True)
class CorruptFile:
    path: str  # relative to the dataset root, "/"-separated
    kind: str  # one of CORRUPT_KINDS
    split: str  # "train" | "val"

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "kind": self.kind, "split": self.split}


def parse_corrupt_spec(text: str) -> dict[str, int]:
    """``"zero:1,truncated:2"`` -> ``{"zero": 1, "truncated": 2}``; empty text -> ``{}``."""
    spec: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, sep, count = part.partition(":")
        kind = kind.strip()
        if not sep or kind not in CORRUPT_KINDS:
            raise ValueError(f"bad corrupt spec {part!r}: expected KIND:COUNT with KIND in {', '.join(CORRUPT_KINDS)}")
        try:
            spec[kind] = spec.get(kind, 0) + int(count)
        except ValueError:
            raise ValueError(f"bad corrupt spec {part!r}: COUNT must be an integer") from None
    return spec


def plant_corrupt(rng: np.random.Generator, *, root: str, items: Sequence[Item],
                  corrupt: dict[str, int]) -> list[CorruptFile]:
    """Overwrite ``corrupt[kind]`` written videos per kind (distinct ones, drawn with ``rng``); sorted by path."""
    kinds = [kind for kind in CORRUPT_KINDS for _ in range(corrupt.get(kind, 0))]
    if not kinds:
        return []
    chosen = rng.choice(len(items), size=len(kinds), replace=False)
    planted = []
    for kind, index in zip(kinds, chosen, strict=True):
        item = items[int(index)]
        path = os.path.join(root, item.relpath)
        with open(path, "rb") as f:
            valid = f.read()
        if kind == "zero":
            data = b""
        elif kind == "truncated":
            data = valid[: int(len(valid) * 0.4)]
        else:
            data = rng.bytes(len(valid))
        write_atomic(path, data)
        planted.append(CorruptFile(path=item.relpath, kind=kind, split=item.split))
        _log.info("planted %s file %s", kind, item.relpath)
    return sorted(planted, key=lambda c: c.path)
