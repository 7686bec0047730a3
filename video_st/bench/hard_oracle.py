"""Does the choice of tokens explain what a reduction costs on the hard task? Trained models tested again with
their selection replaced, the weights unchanged (no training).

Each of the suite's trained models of the top-k family (Sparse-Tuning, EViT, Dense Adapters: Sparse-Tuning
without its reduction, and their variants) is tested on the suite's test views with its top-k steps where it has
them (a dense model: at Sparse-Tuning's layers and keep rate), their tokens chosen four ways (``SELECTIONS``):

- ``own``: by the model's own scoring (its ``score``: [CLS] attention unless a variant trained it otherwise), the
  selection it was trained with, so its suite figure; for Dense Adapters a [CLS]-attention step added at test
  time;
- ``object``: the ground-truth object's tokens first (the masks, bench/foreground.py, as the forward's
  ``prefer``), then by the model's own scoring: the best any scoring could do for the object;
- ``random``: a uniformly random choice of the same count (``score="random"``, seeded draws);
- ``all``: no token dropped (keep rate 1).

The fused token is formed as the method forms it in every case (the dropped tokens' attention-weighted mean): only
which tokens are kept changes. Reading the table: ``object`` well above ``own`` says the scoring misses what the
model would use; all four close together says the weights do not depend on the choice (they learned without
what the reduction drops); Dense Adapters' ``own`` against Sparse-Tuning's says what training with the reduction
buys. Imported by tools and tests only.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from ..data.masks import masks_beside
from ..engine.build import split_file
from ..models.slots import Reducer
from ..models.sparsify import TopKFuse, expand_keep_rates
from .foreground import foreground_scores
from .tables import markdown_table

SELECTIONS = ("own", "object", "random", "all")
RANDOM_DRAWS = 3  # of the random choice, averaged: one draw's top-1 moves by a few test videos
# the suite's models the oracle tests again: the [CLS]-attention top-k family and its dense counterpart
ORACLE_METHODS = ("sparse_tuning", "evit", "dense_adapter")


def with_selection(model: torch.nn.Module, selection: str, *, layers: Sequence[int],
                   keep_rate: float | Sequence[float]) -> torch.nn.Module:
    """A copy of ``model`` (a VideoViT whose reducers, if any, are top-k steps) in eval mode, with top-k steps at
    ``layers`` (1-based) choosing by ``selection`` at ``keep_rate`` (one, or one per layer) and none elsewhere
    (none at all for ``all``). The fusion and the scoring (``own``): the model's own steps' where it has them,
    else Sparse-Tuning's defaults (mean, [CLS])."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    probe = copy.deepcopy(model)
    own = [b.reducer for b in probe.blocks if b.reducer.reduces]
    if any(type(r) is not TopKFuse for r in own):
        raise ValueError(f"{type(own[0]).__name__}: the oracle replaces top-k steps only (the methods "
                         f"{', '.join(ORACLE_METHODS)})")
    prefix = own[0].num_prefix if own else probe.num_prefix_tokens + probe.prompts.num_prompts
    rates = dict(zip(layers, expand_keep_rates(keep_rate, len(layers)), strict=True))
    step = {"fuse": own[0].fuse if own else "mean", "num_prefix": prefix}
    score = own[0].score if own else "cls"
    for i, block in enumerate(probe.blocks, start=1):
        if selection == "all" or i not in rates:
            block.reducer = Reducer()
        else:  # object: its own scoring behind the object's tokens, which the forward's `prefer` puts first
            block.reducer = TopKFuse(keep_rate=rates[i], score="random" if selection == "random" else score, **step)
    return probe.eval()


def oracle_scores(model: torch.nn.Module, cfg: DictConfig, *, layers: Sequence[int],
                  keep_rate: float | Sequence[float], draws: int = RANDOM_DRAWS) -> dict[str, dict[str, Any]]:
    """selection -> {"top1_pct", "fg1_recall"} of ``model`` on the test protocol's views of ``cfg``'s data
    (the test split and its masks, as the suite scores its runs: bench/sweeps.foreground_fields). A random
    choice (``random``, and ``own`` of a model trained with one): the mean of ``draws`` seeded draws."""
    out = {}
    for selection in SELECTIONS:
        probe = with_selection(model, selection, layers=layers, keep_rate=keep_rate)
        random = any(type(b.reducer) is TopKFuse and b.reducer.score == "random" for b in probe.blocks)
        results = []
        for draw in range(draws if random else 1):
            with torch.random.fork_rng(devices=[]):  # seeded here; the caller's generator is left as it was
                torch.manual_seed(draw)
                results.append(foreground_scores(
                    probe, cfg, split="test", masks_file=masks_beside(split_file(cfg, "test")),
                    temporal_views=int(cfg.test.temporal_views), spatial_views=int(cfg.test.spatial_views),
                    object_first=selection == "object"))
        out[selection] = {"top1_pct": statistics.fmean(100 * r.top1 for r in results)}
        if results[0].stages:
            out[selection]["fg1_recall"] = statistics.fmean(r.stages[0].recall for r in results)
    return out


def own_reduction(model: torch.nn.Module) -> dict[str, Any] | None:
    """Where ``model`` reduces: {"layers", "keep_rate"} of its top-k steps (one rate per stage), None for a
    model that keeps every token (the oracle then places the step as it is told)."""
    steps = [(i, b.reducer.keep_rate) for i, b in enumerate(model.blocks, start=1) if b.reducer.reduces]
    return {"layers": [i for i, _ in steps], "keep_rate": [r for _, r in steps]} if steps else None


def aggregate_oracle(per_seed: Mapping[Any, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """seed -> model label -> {"method", "layers", "keep_rate", "selections": oracle_scores(...)} => one row per
    (model, selection), models in first-seen order: the mean over its seeds (the std where >= 2) of top-1, the
    change against the same model's ``own`` selection on the same seeds, the mean first-stage recall."""
    rows = []
    labels = list(dict.fromkeys(label for by_label in per_seed.values() for label in by_label))
    for label in labels:
        seeds = [s for s in per_seed if label in per_seed[s]]
        first = per_seed[seeds[0]][label]
        for selection in SELECTIONS:
            runs = [per_seed[s][label]["selections"] for s in seeds]
            top1 = [r[selection]["top1_pct"] for r in runs]
            recall = [r[selection]["fg1_recall"] for r in runs if "fg1_recall" in r[selection]]
            row: dict[str, Any] = {"model": label, "method": first["method"], "layers": list(first["layers"]),
                                   "keep_rate": first["keep_rate"], "selection": selection, "seeds": len(runs),
                                   "test_top1_pct": statistics.fmean(top1),
                                   "vs_own_pct": statistics.fmean(t - r["own"]["top1_pct"] for t, r in zip(top1, runs))}
            if len(top1) > 1:
                row["test_top1_pct_std"] = statistics.stdev(top1)
            if recall:
                row["fg1_recall"] = statistics.fmean(recall)
            rows.append(row)
    return rows


def render_oracle(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The report's section: one line per model, its top-1 (mean +- std over seeds) under each selection and
    its first-stage recall under ``own``, and how to read it."""
    if not rows:
        return []
    lines = ["Selection oracle: each trained model tested again, the weights unchanged, with its top-k step (at "
             "its own layers and keep rate; a dense model's at Sparse-Tuning's) choosing its tokens by the "
             "model's own scoring (own; a dense model: [CLS] attention), the object's tokens first (object: the "
             "ground truth), at random, or keeping all (no reduction); top-1 %, mean +- std over seeds; models: "
             "the suite's methods and the variants by name:", ""]
    table = []
    for label in dict.fromkeys(r["model"] for r in rows):
        mine = {r["selection"]: r for r in rows if r["model"] == label}
        own = mine["own"]
        line = {"model": label, "layers": "+".join(map(str, own["layers"])),
                "keep_rate": "/".join(f"{k:g}" for k in np.atleast_1d(own["keep_rate"])), "seeds": own["seeds"],
                **{selection: _mean_std(mine[selection]) for selection in SELECTIONS}}
        if "fg1_recall" in own:
            line["own_recall"] = own["fg1_recall"]
        table.append(line)
    columns = ["model", "layers", "keep_rate", "seeds", *SELECTIONS, "own_recall"]
    lines += [markdown_table(table, [c for c in columns if any(c in r for r in table)]), ""]
    return lines


def _mean_std(row: Mapping[str, Any]) -> str:
    mean = row["test_top1_pct"]
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.1f} +- {row['test_top1_pct_std']:.1f}" if "test_top1_pct_std" in row else f"{mean:.1f}"
