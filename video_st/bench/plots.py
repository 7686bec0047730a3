"""The plots of tools/benchmark.py train-methods: test top-1 against GFLOPs, one labelled point per method; the hard
suite's (the same with error bars and keep-rate curves) and its foreground recall per stage."""

from __future__ import annotations

from typing import Any

from ..fileio import atomic_open


def plot_accuracy_vs_gflops(rows: list[dict[str, Any]], path: str, title: str) -> None:
    """Test top-1 against GFLOPs, one labelled point per method (diamonds: input-dependent); methods that land on
    the same spot share one label. PNG, written atomically."""
    plt = _pyplot()
    points = [r for r in rows if r.get("test_top1_pct") is not None and r.get("gflops") is not None]
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    if points:
        xs, ys = [r["gflops"] for r in points], [r["test_top1_pct"] for r in points]
        x_tol, y_tol = 0.01 * (max(xs) - min(xs) or max(xs) or 1), 0.01 * (max(ys) - min(ys) or 1)
        groups: list[list[dict[str, Any]]] = []
        for row in points:
            for group in groups:
                if abs(group[0]["gflops"] - row["gflops"]) <= x_tol and \
                        abs(group[0]["test_top1_pct"] - row["test_top1_pct"]) <= y_tol:
                    group.append(row)
                    break
            else:
                groups.append([row])
        for group in groups:
            for row in group:
                dynamic = row.get("input_dependent")
                ax.scatter(row["gflops"], row["test_top1_pct"], marker="D" if dynamic else "o", s=46,
                           color="tab:orange" if dynamic else "tab:blue", zorder=3)
            ax.annotate(", ".join(r["method"] for r in group), (group[0]["gflops"], group[0]["test_top1_pct"]),
                        textcoords="offset points", xytext=(6, 5), fontsize=9)
        span = max(ys) - min(ys)
        ax.set_ylim(max(0.0, min(ys) - max(5.0, 0.2 * span)), min(105.0, max(ys) + max(2.0, 0.2 * span)))
    if any(r.get("input_dependent") for r in points):
        ax.scatter([], [], marker="D", color="tab:orange", label="input-dependent (mean over test clips)")
        ax.scatter([], [], marker="o", color="tab:blue", label="static")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("GFLOPs per view (fvcore convention; LoRA merged)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.2)
    fig.tight_layout()
    _save(fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    _pyplot().close(fig)


CURVE_COLOURS = {"sparse_tuning": "tab:red", "evit": "tab:green", "tome": "tab:purple"}


def plot_suite(rows: list[dict[str, Any]], curves: dict[str, list], path: str, title: str) -> None:
    """The hard suite: test top-1 (mean over seeds, the std as error bars) against GFLOPs, one labelled point per
    method, and each keep-rate method's sweep as a curve (points labelled by keep rate). PNG, written atomically."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 5.5))
    for row in rows:
        if row.get("test_top1_pct") is None or row.get("gflops") is None:
            continue
        colour = CURVE_COLOURS.get(row["method"], "tab:blue")
        ax.errorbar(row["gflops"], row["test_top1_pct"], yerr=row.get("test_top1_pct_std"), fmt="D" if
                    row.get("input_dependent") else "o", color=colour, ms=6, capsize=3, zorder=3)
        ax.annotate(row["method"], (row["gflops"], row["test_top1_pct"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    for method, points in curves.items():
        points = [p for p in points if p[2] is not None]
        if len(points) < 2:
            continue
        xs, ys = [p[1] for p in points], [p[2] for p in points]
        ax.plot(xs, ys, "--", color=CURVE_COLOURS.get(method, "tab:gray"), alpha=0.8, label=f"{method}, keep rates")
        for p in points:
            ax.annotate(f"{p[0]:g}", (p[1], p[2]), textcoords="offset points", xytext=(-4, -11), fontsize=7,
                        color=CURVE_COLOURS.get(method, "tab:gray"))
    if any(len(p) > 1 for p in curves.values()):
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("GFLOPs per view (fvcore convention; LoRA merged; input-dependent: mean over test clips)")
    ax.set_ylabel("test top-1 (%), mean over seeds +- std")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.12, y=0.08)
    fig.tight_layout()
    _save(fig, path)


def plot_foreground(rows: list[dict[str, Any]], path: str, title: str) -> None:
    """Per reducing method, the foreground recall of each stage's kept tokens (solid) and a random choice's at
    the same keep counts (dashed, same colour). PNG, written atomically."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    reducing = [r for r in rows if r.get("foreground")]
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, row in enumerate(reducing):
        stages = row["foreground"]
        xs = list(range(1, len(stages) + 1))
        colour = cycle[i % len(cycle)]
        ax.plot(xs, [s["recall"] for s in stages], "o-", color=colour, label=row["method"])
        ax.plot(xs, [s["random_recall"] for s in stages], ":", color=colour, alpha=0.7)
    if reducing:
        ax.plot([], [], "k:", label="random choice, same keep counts")
        ax.legend(fontsize=8, loc="lower left")
    ax.set_xlabel("reduction stage (in layer order)")
    ax.set_ylabel("foreground tokens kept (recall)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
