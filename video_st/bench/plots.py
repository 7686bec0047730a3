"""The plot of tools/benchmark.py train-methods: test top-1 against GFLOPs, one labelled point per method."""

from __future__ import annotations

from typing import Any

from ..fileio import atomic_open


def plot_accuracy_vs_gflops(rows: list[dict[str, Any]], path: str, title: str) -> None:
    """Test top-1 against GFLOPs, one labelled point per method (diamonds: input-dependent); methods that land on
    the same spot share one label. PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
