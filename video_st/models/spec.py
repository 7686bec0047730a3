"""What a trained file must say to rebuild exactly the model that was trained: the model spec, and the one file
format every single-file output of the project uses.

A spec is the registered variant's name, the backbone's complete keyword arguments (geometry, clip size, head
size, regularisation), the method's name and its complete options (keep rates, layers, adapter sizes, ranks,
prompts, fusion) and the class names. It is plain JSON: a file never needs code to say what it holds.

File format (``torch.save`` of a dict, readable with ``weights_only=True``)::

    {"state_dict": {...}, "video_st": {"format": 2, "content": "model" | "trainable" | "backbone",
                                       "spec": ModelSpec.to_dict(), ...extra (step, source, inflation)}}

``content``: ``model`` holds every tensor; ``trainable`` only what the method trains (load it over a backbone);
``backbone`` a converted pre-trained checkpoint (method ``full``, no classes): it seeds any method.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..errors import CheckpointError
from ..fileio import atomic_open

FORMAT = 2
CONTENTS = ("model", "trainable", "backbone")


class SpecError(CheckpointError):
    """A model spec that is missing, malformed, or disagrees with what it is used with; names the file."""


def _plain(value: Any) -> Any:
    """JSON-like form: tuples become lists, so a spec read back from JSON compares equal to the original."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    method: str
    backbone: Mapping[str, Any]
    options: Mapping[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "method": self.method, "backbone": _plain(self.backbone),
                "options": _plain(self.options), "classes": None if self.classes is None else list(self.classes)}

    @classmethod
    def from_dict(cls, data: Any, *, source: str) -> ModelSpec:
        if not isinstance(data, Mapping) or not {"arch", "method", "backbone", "options"} <= set(data):
            raise SpecError(f"{source}: no valid model spec (expected arch, method, backbone, options)")
        classes = data.get("classes")
        return cls(arch=str(data["arch"]), method=str(data["method"]), backbone=dict(data["backbone"]),
                   options=dict(data["options"]), classes=None if classes is None else tuple(map(str, classes)))

    def with_classes(self, classes: Sequence[str] | None) -> ModelSpec:
        return replace(self, classes=None if classes is None else tuple(classes))

    def differences(self, other: ModelSpec) -> list[tuple[str, Any, Any]]:
        """``(key, mine, theirs)`` for every field that differs (``backbone.depth``, ``options.keep_rate`` ...)."""
        a, b = self.to_dict(), other.to_dict()
        found = [(k, a[k], b[k]) for k in ("arch", "method", "classes") if a[k] != b[k]]
        for part in ("backbone", "options"):
            for key in sorted(set(a[part]) | set(b[part])):
                if a[part].get(key) != b[part].get(key):
                    found.append((f"{part}.{key}", a[part].get(key), b[part].get(key)))
        return found

    @property
    def clip(self) -> tuple[int, int]:
        """(frames, size) of the clips the model takes."""
        return int(self.backbone["num_frames"]), int(self.backbone["img_size"])


def save_model_file(dst: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], *, spec: ModelSpec,
                    content: str = "model", **extra: Any) -> dict[str, Any]:
    """Write ``state_dict`` with its spec atomically; returns the metadata written."""
    if content not in CONTENTS:
        raise ValueError(f"content must be one of {CONTENTS}, got {content!r}")
    meta = {"format": FORMAT, "content": content, "spec": spec.to_dict(), **_plain(extra)}
    with atomic_open(dst, "wb") as f:
        torch.save({"state_dict": dict(state_dict), "video_st": meta}, f)
    return meta


def file_spec(meta: Mapping[str, Any], *, source: str) -> ModelSpec:
    """The spec of a video_st file's metadata; files from before specs existed are refused with one line."""
    if meta.get("format") != FORMAT or "spec" not in meta:
        raise SpecError(f"{source}: written by an older video_st without a model spec (format "
                        f"{meta.get('format', 1)}); convert its source again with tools/convert_checkpoint.py or "
                        "retrain")
    return ModelSpec.from_dict(meta["spec"], source=source)
