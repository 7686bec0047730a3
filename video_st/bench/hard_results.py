"""The hard suite's arithmetic (video_st/bench/hard_suite.py): the mean +- std of each method over seeds, the
keep-rate curves of the reducing methods, a curve read at a given cost, and the targets of issue 18 judged on
them. Pure functions of the rows the runs produced: no training, no files."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

KEEP_RATE_METHODS = ("sparse_tuning", "evit", "tome")  # one keep rate per stage, the curves of the plot
ADAPTER_METHODS = ("adapter", "adaptformer", "dense_adapter", "sparse_tuning", "dyt", "dyt_moe")
MEAN_KEYS = ("test_top1_pct", "mean_class_acc_pct", "gflops", "fg1_recall", "fg1_random_recall", "fg1_precision",
             "fg1_random_precision")


def aggregate(per_seed: Mapping[int, Sequence[Mapping[str, Any]]], speed: Mapping[str, float]) -> list[dict[str, Any]]:
    """One row per method: the mean over seeds (and the sample std where there are >= 2) of the accuracies, the
    GFLOPs and the first stage's foreground scores; the per-stage foreground of the first seed; clips/s."""
    seeds = list(per_seed)
    out = []
    for i, first in enumerate(per_seed[seeds[0]]):
        runs = [per_seed[s][i] for s in seeds if not per_seed[s][i].get("error")]
        row: dict[str, Any] = {"method": first["method"], "seeds": len(runs), "lr": first.get("lr"),
                               "input_dependent": first.get("input_dependent"),
                               "keep_rates": first.get("keep_rates") or [],
                               "trainable_m": first.get("trainable_m"), "foreground": first.get("foreground")}
        if not runs:
            row["error"] = first.get("error") or "every seed failed"
            out.append(row)
            continue
        for key in MEAN_KEYS:
            values = [r[key] for r in runs if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]
            if values:
                row[key] = statistics.fmean(values)
                if len(values) > 1:
                    row[f"{key}_std"] = statistics.stdev(values)
        if first["method"] in speed:
            row["cpu_clips_s"] = speed[first["method"]]
        out.append(row)
    reference = next((r for r in out if r["method"] == "full" and r.get("gflops")), None)
    for row in out:
        if reference and row.get("gflops") is not None:
            row["gflops/full"] = row["gflops"] / reference["gflops"]
        if reference and row.get("cpu_clips_s") and reference.get("cpu_clips_s"):
            row["cpu_clips_s/full"] = row["cpu_clips_s"] / reference["cpu_clips_s"]
    return out


def keep_curves(first: Sequence[Mapping[str, Any]], keep_rows: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """method -> [(keep rate, GFLOPs, test top-1 %, first-stage foreground recall)], by keep rate: the sweep's
    rows and the method's own row (its trained keep rate) of the first seed."""
    curves: dict[str, list] = {}
    for row in [*first, *keep_rows]:
        if row["method"] not in KEEP_RATE_METHODS or row.get("error") or row.get("gflops") is None:
            continue
        rate = row.get("keep_rate", (row.get("keep_rates") or [None])[0])
        curves.setdefault(row["method"], []).append(
            [rate, row["gflops"], row.get("test_top1_pct"), row.get("fg1_recall")])
    return {m: sorted(points, key=lambda p: p[0]) for m, points in curves.items()}


def _by_method(rows: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {r["method"]: r for r in rows if r.get("test_top1_pct") is not None}


def at_gflops(curve: Sequence[Sequence[float]], gflops: float) -> float | None:
    """Test top-1 of a keep-rate curve linearly interpolated at ``gflops`` (None outside its range)."""
    points = sorted((p[1], p[2]) for p in curve if p[2] is not None)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= gflops <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (gflops - x0) / (x1 - x0)
    return None


def check_targets(rows: Sequence[Mapping[str, Any]], curves: Mapping[str, Sequence],
                  oracle: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """The targets of issue 18, each as {target, value, met (None: not measurable here), detail}. ``oracle``:
    the selection oracle's rows (bench/hard_oracle.aggregate_oracle), if it ran: the Sparse-Tuning verdict then
    says what the same models give with the object's tokens kept first."""
    by = _by_method(rows)
    out = []

    def add(target: str, met: bool | None, value: float | None, detail: str) -> None:
        out.append({"target": target, "met": met, "value": value, "detail": detail})

    adapters = [by[m] for m in ADAPTER_METHODS if m in by]
    if adapters and "linear" in by:
        best = max(adapters, key=lambda r: r["test_top1_pct"])
        gap = best["test_top1_pct"] - by["linear"]["test_top1_pct"]
        add("linear probe >= 15 points below the best adapter method", gap >= 15, gap,
            f"best adapter method {best['method']} {best['test_top1_pct']:.1f}%, linear "
            f"{by['linear']['test_top1_pct']:.1f}%")
    if len(by) >= 2:
        ranked = sorted(by.values(), key=lambda r: r["test_top1_pct"])
        gap = ranked[-1]["test_top1_pct"] - ranked[0]["test_top1_pct"]
        add(">= 10 points between the best and the worst method", gap >= 10, gap,
            f"best {ranked[-1]['method']} {ranked[-1]['test_top1_pct']:.1f}%, worst {ranked[0]['method']} "
            f"{ranked[0]['test_top1_pct']:.1f}%")
    st = by.get("sparse_tuning")
    if st and "dense_adapter" in by:
        dense = by["dense_adapter"]
        diff = st["test_top1_pct"] - dense["test_top1_pct"]
        ratio = st["gflops"] / dense["gflops"]
        add("Sparse-Tuning within a point of Dense Adapters (no sparsification) at ~0.65 of its GFLOPs",
            diff >= -1.0, diff, f"{diff:+.1f} points at {ratio:.2f} of the GFLOPs ({st['test_top1_pct']:.1f}% vs "
                                f"{dense['test_top1_pct']:.1f}%)" + _object_first_note(oracle))
    if st:
        # The keep-rate curves are of the first seed, so Sparse-Tuning's side is its own first-seed point, not
        # the mean over seeds: one run against one run, on the same training seed.
        own = at_gflops(curves.get("sparse_tuning", []), st["gflops"])
        for other in ("evit", "tome"):
            if other not in curves:
                continue
            value = at_gflops(curves[other], st["gflops"])
            known = value is not None and own is not None
            detail = (f"first seed, {other} at Sparse-Tuning's {st['gflops']:.4f} GFLOPs: "
                      + (f"{value:.1f}% (interpolated on its keep-rate curve) vs {own:.1f}%" if known
                         else "outside the keep-rate curves (run the sweep: --keep-rates)"))
            add(f"Sparse-Tuning above {other} at equal GFLOPs", own > value if known else None,
                own - value if known else None, detail)
        if st.get("fg1_recall") is not None:
            rate = (st.get("keep_rates") or [None])[0]
            add("Sparse-Tuning's first stage keeps >= 0.9 of the foreground tokens at keep rate 0.7",
                st["fg1_recall"] >= 0.9 if rate == 0.7 else None, st["fg1_recall"],
                f"recall {st['fg1_recall']:.3f} vs random {st['fg1_random_recall']:.3f} at keep rate {rate}")
    return out


def _object_first_note(oracle: Sequence[Mapping[str, Any]]) -> str:
    """What the selection oracle says beside the Sparse-Tuning verdict: the models' top-1 with the ground-truth
    object's tokens kept first at test (Sparse-Tuning, Dense Adapters reduced at test only, and the best
    Sparse-Tuning variant, e.g. one trained so too); empty without an oracle."""
    kept = {r["model"]: r for r in oracle if r["selection"] == "object"}
    parts = [f"{name} {kept[model]['test_top1_pct']:.1f}%" for model, name in
             (("sparse_tuning", "Sparse-Tuning"), ("dense_adapter", "Dense Adapters")) if model in kept]
    variants = [r for r in kept.values() if r["method"] == "sparse_tuning" and r["model"] != "sparse_tuning"]
    if variants:
        best = max(variants, key=lambda r: r["test_top1_pct"])
        parts.append(f"the variant {best['model']} {best['test_top1_pct']:.1f}%")
    return f"; with the object's tokens kept first at test (selection oracle): {', '.join(parts)}" if parts else ""
