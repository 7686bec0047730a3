"""Why Sparse-Tuning falls short on the hard suite, measured: where the backbone's attention points, and what a
change of the method does.

Two parts, both on the suite's stage-1 backbone and target set (video_st/bench/hard_suite.py):

- **The selection probe** (no training): the frozen backbone's own choice of tokens, scored against the masks.
  For every layer L and both scoring queries (``score="cls"``: the [CLS] row, the paper; ``"mean"``: the mean
  query's row, no trained [CLS] needed), EViT's top-k step at layer L alone at the suite's keep rate: recall of
  the object's tokens against a random choice of the same count. With a frozen backbone and the adapters at
  zero (as they start), this is the selection Sparse-Tuning begins its training from: a layer or query that
  points at the object here is one the method can use; one at chance is one it has to learn around.
- **The variants**: a method trained again (same budget; the first seed, or the suite's ``variant_seeds``, then the
  mean +- std over them beside the suite's own rows over the same seeds) with one change each (``VARIANTS``).
  Sparse-Tuning: the mean-query scoring, a random choice (the control), the ground-truth object's tokens kept
  first in training (``object_first``: a perfect scorer), the authors' code's fusion (``fuse=sum``),
  a keep-rate warm-up (1.0 to the target over the first epochs), the first reduction a layer earlier (and the
  paper's placement scaled to 4 layers: 1, 2, 3), the authors' code's Dense Adapter
  (``dense_adapter_form=published``); Dense Adapters alone with that adapter too; EViT and ToMe reducing where the
  earlier Sparse-Tuning does (the comparison at equal placement), EViT trained with the object's tokens kept;
  AS-ViT with its thresholds started at its budget.
  Their rows sit beside the suite's own rows of the methods they change: top-1, GFLOPs, first-stage recall.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..config import load_config
from ..engine.build import build_model
from .sweeps import Sweep, foreground_fields
from .tables import markdown_table


@dataclass(frozen=True)
class Variant:
    method: str
    overrides: tuple[str, ...]  # of the method's run in the suite


# name (``--variants``) -> the run; a bare name changes Sparse-Tuning (see the module docstring)
VARIANTS: dict[str, Variant] = {
    "score=mean": Variant(method="sparse_tuning", overrides=("model.score=mean",)),
    # the control: a uniformly random choice of the kept tokens, trained with (the selection oracle's "random",
    # bench/hard_oracle.py, applies it to weights trained with the [CLS] choice)
    "score=random": Variant(method="sparse_tuning", overrides=("model.score=random",)),
    # the other bound: trained with the ground-truth object's tokens kept first (data.object_first), a perfect
    # scorer in training; its suite row is tested with its [CLS] choice, the oracle's "object" column with the masks
    "object_first": Variant(method="sparse_tuning", overrides=("data.object_first=true",)),
    "fuse=sum": Variant(method="sparse_tuning", overrides=("model.fuse=sum",)),
    "warmup=3": Variant(method="sparse_tuning", overrides=("optim.keep_rate_warmup_epochs=3",)),
    # the first step where the probe says [CLS] looks
    "layers=1+3": Variant(method="sparse_tuning", overrides=("model.sparse_layers=[1,3]",)),
    # the paper's 4/7/10 of 12 scaled to 4 layers (models.methods.default_sparse_layers; the tiny model's own
    # default is 2 and 3)
    "layers=1+2+3": Variant(method="sparse_tuning", overrides=("model.sparse_layers=[1,2,3]",)),
    # the adapter-free reducers at Sparse-Tuning's layers=1+3, for the comparison at equal placement
    "evit:layers=1+3": Variant(method="evit", overrides=("model.sparse_layers=[1,3]",)),
    # EViT's head trained with the object's tokens kept (frozen backbone): what the features alone make of them
    "evit:object_first": Variant(method="evit", overrides=("data.object_first=true",)),
    "tome:layers=1+3": Variant(method="tome", overrides=("model.sparse_layers=[1,3]",)),
    # AS-ViT's thresholds started at its FLOPs budget on real clips (models/calibrate.py; not the authors'):
    # from the published 0.001-0.003 they prune on one seed of three in this budget (docs/benchmarks.md)
    "asvit:calibrate": Variant(method="asvit", overrides=("model.calibrate=true",)),
    "form=published": Variant(method="sparse_tuning", overrides=("model.dense_adapter_form=published",)),
    "dense_adapter:form=published": Variant(method="dense_adapter",
                                            overrides=("model.dense_adapter_form=published",)),
}
SCORES = ("cls", "mean")


def probe_selection(config: str, *, backbone: str, data: str, overrides: Sequence[str] = (),
                    keep_rate: float = 0.7) -> list[dict[str, Any]]:
    """One row per (layer, score): the frozen backbone's top-k choice at that layer alone, against the masks of
    the target set's test split (``config``'s clip geometry and test view)."""
    def probe_config(layer: int, score: str):
        return load_config(config, [f"data.root={data}", "model.method=evit", f"model.pretrained={backbone}",
                                    f"model.sparse_layers=[{layer}]", f"model.keep_rate={keep_rate}",
                                    f"model.score={score}", *overrides])

    rows = []
    depth = len(build_model(probe_config(1, "cls")).blocks)
    for layer in range(1, depth + 1):
        for score in SCORES:
            cfg = probe_config(layer, score)
            (stage,) = foreground_fields(build_model(cfg), cfg)["foreground"]  # the suite's test views
            rows.append({"layer": layer, "score": score,
                         **{k: stage[k] for k in ("keep_share", "recall", "random_recall", "lift", "precision")}})
    return rows


def variant_sweeps(base: Sweep, names: Sequence[str]) -> list[tuple[str, Sweep]]:
    """Each variant of ``names`` (keys of VARIANTS) whose method is among ``base.methods``: its name and its
    sweep, in a folder of ``base.output_dir`` named after it, with ``base``'s settings and the variant's
    overrides (the suite runs them beside its other runs, bench/sweeps.run_sweeps)."""
    out = []
    for name in names:
        variant = VARIANTS[name]
        if variant.method not in base.methods:
            continue
        folder = os.path.join(base.output_dir, re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_"))
        out.append((name, replace(base, methods=[variant.method], output_dir=folder,
                                  overrides=[*base.overrides, *variant.overrides])))
    return out


def render_diagnosis(probe: Sequence[Mapping[str, Any]], variants: Sequence[Mapping[str, Any]],
                     beside: Sequence[Mapping[str, Any]], *, sparse_layers: Sequence[int]) -> list[str]:
    """The report's section: the probe table (the layers Sparse-Tuning reduces at marked) and the variants beside
    the suite's own rows of ``beside`` (of the methods the variants change, over the same seeds)."""
    lines: list[str] = []
    if probe:
        lines += ["Selection probe: the frozen stage-1 backbone's own top-k choice at one layer (no training; "
                  "the selection Sparse-Tuning starts from; * a layer it reduces at):", ""]
        lines.append(markdown_table(
            [{**r, "layer": f"{r['layer']}{' *' if r['layer'] in sparse_layers else ''}"} for r in probe],
            ["layer", "score", "keep_share", "recall", "random_recall", "lift", "precision"]))
        lines.append("")
    base = [{**r, "variant": "(the suite's row)"} for r in beside if not r.get("error")]
    if variants:
        lines += ["Variants (the same budget, one change each; seeds: how many runs the mean is over, std where "
                  ">= 2; the suite's rows: each method as the suite trains it, over the same seeds):", ""]
        columns = ["method", "variant", "seeds", "test_top1_pct", "test_top1_pct_std", "gflops", "fg1_recall",
                   "fg1_random_recall"]
        # absent, not None, where a method has no such figure (Dense Adapters keep every token): a blank cell
        table = [{k: r[k] for k in [*columns, "error"] if r.get(k) is not None} for r in [*base, *variants]]
        columns = [c for c in columns if c in ("method", "variant") or any(c in r for r in table)]
        if any(r.get("error") for r in table):
            columns.append("error")
        lines.append(markdown_table(table, columns))
        lines.append("")
    return lines

