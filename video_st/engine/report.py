"""Test metrics and the files a test run leaves: summary, per-video predictions, probabilities, per-class table,
confusion matrix, excluded videos. Everything is written atomically (temporary name, then rename)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from typing import Any

import torch

from ..fileio import atomic_open, write_atomic
from .evaluate import Predictions, accuracy


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts, row = true class, column = predicted class; unlabelled videos (label < 0) are left out."""
    keep = labels >= 0
    flat = labels[keep] * num_classes + predicted[keep]
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def metrics(pred: Predictions, num_classes: int) -> dict[str, Any]:
    """top-1, top-5, mean per-class accuracy (over classes with at least one test video) and the confusion."""
    if len(pred.index) == 0:
        return {"top1": float("nan"), "top5": float("nan"), "mean_class_accuracy": float("nan"), "videos": 0}
    confusion = confusion_matrix(pred.scores.argmax(1), pred.labels, num_classes)
    per_class_total = confusion.sum(1)
    seen = per_class_total > 0
    per_class = confusion.diag().float() / per_class_total.clamp(min=1)
    return {
        "top1": accuracy(pred.scores, pred.labels, 1),
        "top5": accuracy(pred.scores, pred.labels, 5),
        "mean_class_accuracy": per_class[seen].mean().item() if seen.any() else float("nan"),
        "videos": len(pred.index),
        "per_class_accuracy": per_class.tolist(),
        "per_class_videos": per_class_total.tolist(),
        "confusion": confusion,
    }


def _csv(rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def write_report(out_dir: str, *, pred: Predictions, result: dict[str, Any], summary: dict[str, Any],
                 video_ids: Sequence[str], paths: Sequence[str], class_names: Sequence[str]) -> None:
    os.makedirs(out_dir, exist_ok=True)
    k = min(5, len(class_names))
    rows: list[list[Any]] = [["video_id", "label", "label_name", "views",
                              *[f"top{i + 1}_{kind}" for i in range(k) for kind in ("class", "score")]]]
    if len(pred.index):
        top_scores, top_classes = pred.scores.topk(k, dim=1)
        for n, index in enumerate(pred.index.tolist()):
            label = int(pred.labels[n])
            ranked = [v for c, s in zip(top_classes[n].tolist(), top_scores[n].tolist(), strict=True)
                      for v in (class_names[c], f"{s:.6f}")]
            rows.append([video_ids[index], label, class_names[label] if label >= 0 else "", int(pred.views[n]), *ranked])
    write_atomic(os.path.join(out_dir, "predictions.csv"), _csv(rows))
    with atomic_open(os.path.join(out_dir, "probabilities.pt"), "wb") as f:
        torch.save({"index": pred.index, "video_id": [video_ids[i] for i in pred.index.tolist()], "scores": pred.scores,
                    "labels": pred.labels, "views": pred.views, "classes": list(class_names),
                    "ensemble": summary["ensemble"]}, f)
    if "per_class_accuracy" in result:
        table = [["class", "name", "videos", "accuracy"]]
        table += [[c, class_names[c], result["per_class_videos"][c], f"{result['per_class_accuracy'][c]:.4f}"]
                  for c in range(len(class_names))]
        write_atomic(os.path.join(out_dir, "per_class.csv"), _csv(table))
        plot_confusion(result["confusion"], class_names, os.path.join(out_dir, "confusion.png"))
    excluded = [f"{paths[f['index']]}\t{f['error']}" for f in pred.failed]
    partial = [f"{paths[p['index']]}\t{sum(p['view_ok'])} of {len(p['view_ok'])} views\t{p['error']}" for p in pred.partial]
    write_atomic(os.path.join(out_dir, "excluded_videos.txt"), "".join(line + "\n" for line in excluded))
    write_atomic(os.path.join(out_dir, "partial_videos.txt"), "".join(line + "\n" for line in partial))
    write_atomic(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=1) + "\n")


def plot_confusion(confusion: torch.Tensor, class_names: Sequence[str], path: str) -> None:
    """Row-normalised confusion matrix as a PNG (class names on the axes up to 60 classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(class_names)
    rates = confusion.float() / confusion.sum(1, keepdim=True).clamp(min=1)
    size = min(24.0, 3.0 + 0.25 * k)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    if k <= 60:
        ax.set_xticks(range(k), class_names, rotation=90, fontsize=8)
        ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"videos evaluated: {summary['videos']} ({summary['views_per_video']} views each: "
        f"{summary['temporal_views']} temporal x {summary['spatial_views']} spatial, ensemble {summary['ensemble']})",
        f"top-1 {100 * summary['top1']:.2f}  top-5 {100 * summary['top5']:.2f}  "
        f"mean class accuracy {100 * summary['mean_class_accuracy']:.2f}",
        f"excluded (unreadable): {summary['excluded']}  scored from some views only: {summary['partial']}",
        f"GFLOPs per view {summary['gflops_per_view']:.3f}, per video {summary['gflops_per_video']:.3f}; "
        f"{summary['clips_per_s']:.1f} views/s over {summary['world_size']} process(es)",
    ]
    if summary.get("test_time_changes"):
        lines.append(f"changed at test on purpose: {summary['test_time_changes']}")
    if summary.get("results"):
        lines.append(f"results in {summary['results']} ({summary.get('method', '?')} model of {summary['checkpoint']})")
    return "\n".join(lines)
