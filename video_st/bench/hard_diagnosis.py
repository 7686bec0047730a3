"""Why Sparse-Tuning falls short on the hard suite, measured: where the backbone's attention points, and what a
change of the method does.

Two parts, both on the suite's stage-1 backbone and target set (video_st/bench/hard_suite.py):

- **The selection probe** (no training): the frozen backbone's own choice of tokens, scored against the masks.
  For every layer L and both scoring queries (``score="cls"``: the [CLS] row, the paper; ``"mean"``: the mean
  query's row, no trained [CLS] needed), EViT's top-k step at layer L alone at the suite's keep rate: recall of
  the object's tokens against a random choice of the same count. With a frozen backbone and the adapters at
  zero (as they start), this is the selection Sparse-Tuning begins its training from: a layer or query that
  points at the object here is one the method can use; one at chance is one it has to learn around.
- **The variants**: Sparse-Tuning trained again (first seed, same budget) with one change each (``VARIANTS``): the
  mean-query scoring, the authors' code's fusion (``fuse=sum``), a keep-rate warm-up (1.0 to the target over the
  first epochs), the first reduction a layer earlier. Their rows sit beside Sparse-Tuning's and Dense Adapters' own: top-1, GFLOPs, first-stage recall.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..config import load_config
from ..engine.build import build_model
from .sweeps import Sweep, foreground_fields, run_methods
from .tables import markdown_table

# name -> config overrides of the Sparse-Tuning run (see the module docstring)
VARIANTS: dict[str, tuple[str, ...]] = {
    "score=mean": ("model.score=mean",),
    "fuse=sum": ("model.fuse=sum",),
    "warmup=3": ("optim.keep_rate_warmup_epochs=3",),
    "layers=1+3": ("model.sparse_layers=[1,3]",),  # the first step where the probe says [CLS] looks
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


def run_variants(base: Sweep, names: Sequence[str]) -> list[dict[str, Any]]:
    """Sparse-Tuning once per variant of ``names`` (keys of VARIANTS), each in a folder of ``base.output_dir`` named after it
    with ``base``'s settings and the variant's overrides; the rows, with ``variant``."""
    rows = []
    for name in names:
        folder = os.path.join(base.output_dir, re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_"))
        print(f"== Sparse-Tuning variant: {name}", flush=True)
        sweep = replace(base, methods=["sparse_tuning"], output_dir=folder,
                        overrides=[*base.overrides, *VARIANTS[name]])
        rows += [{**row, "variant": name} for row in run_methods(sweep)]
    return rows


def render_diagnosis(probe: Sequence[Mapping[str, Any]], variants: Sequence[Mapping[str, Any]],
                     first: Sequence[Mapping[str, Any]], *, sparse_layers: Sequence[int]) -> list[str]:
    """The report's section: the probe table (the layers Sparse-Tuning reduces at marked) and the variants beside
    Sparse-Tuning and Dense Adapters of the first seed."""
    lines: list[str] = []
    if probe:
        lines += ["Selection probe: the frozen stage-1 backbone's own top-k choice at one layer (no training; "
                  "the selection Sparse-Tuning starts from; * a layer it reduces at):", ""]
        lines.append(markdown_table(
            [{**r, "layer": f"{r['layer']}{' *' if r['layer'] in sparse_layers else ''}"} for r in probe],
            ["layer", "score", "keep_share", "recall", "random_recall", "lift", "precision"]))
        lines.append("")
    base = [{**r, "variant": "(as published)" if r["method"] == "sparse_tuning" else "(no sparsification)"}
            for r in first if r["method"] in ("sparse_tuning", "dense_adapter") and not r.get("error")]
    if variants:
        lines += ["Sparse-Tuning variants (first seed, the same budget; one change each):", ""]
        table = [{"method": r["method"], "variant": r["variant"], "test_top1_pct": r.get("test_top1_pct"),
                  "gflops": r.get("gflops"), "fg1_recall": r.get("fg1_recall"),
                  "fg1_random_recall": r.get("fg1_random_recall"), "error": r.get("error")}
                 for r in [*base, *variants]]
        columns = ["method", "variant", "test_top1_pct", "gflops", "fg1_recall", "fg1_random_recall"]
        if any(r["error"] for r in table):
            columns.append("error")
        lines.append(markdown_table(table, columns))
        lines.append("")
    return lines

