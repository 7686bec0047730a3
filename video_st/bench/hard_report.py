"""The hard suite's report (OUTPUT/suite.md and what tools/benchmark.py prints): stage 1, the tables, the
diagnosis and the verdicts on issue 18's targets, from the rows bench/hard_suite.py gathered."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from .tables import markdown_table

if TYPE_CHECKING:
    from .hard_suite import HardSuite


def _trained_with(stage1: Mapping[str, Any]) -> str:
    machine = stage1.get("machine")
    if not isinstance(machine, dict):
        return ""
    return (f" (torch {machine.get('torch')}, {machine.get('cpu_threads')} threads: a rerun with both equal "
            f"retrains it bit for bit)")


def _stage1_changes(suite: HardSuite, stage1: Mapping[str, Any]) -> str:
    """How stage 1 trained: the attention guide's weight as resolved (configs/hard/pretrain.yaml's unless an
    override changed it: the suite's figures depend on it), then the overrides as given."""
    guide = stage1["settings"]["resolved"]["optim"]["attention_guide"]
    text = f", attention guide {guide:g}" if guide > 0 else ", no attention guide"
    return text + (f"; {', '.join(suite.pretrain_overrides)}" if suite.pretrain_overrides else "")


TABLE = ["method", "seeds", "test_top1_pct", "test_top1_pct_std", "mean_class_acc_pct", "mean_class_acc_pct_std",
         "trainable_m", "gflops", "gflops/full", "cpu_clips_s", "cpu_clips_s/full", "fg1_recall",
         "fg1_random_recall", "fg1_precision", "fg1_random_precision"]


def render(suite: HardSuite, cfg: DictConfig, stage1: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
           curves: Mapping[str, Any], verdicts: Sequence[Mapping[str, Any]], plots: Mapping[str, str],
           diagnosis: Sequence[str] = ()) -> str:
    """The report: stage 1, the methods table, the per-stage foreground table, the keep-rate sweep, the
    diagnosis (bench/hard_diagnosis.render_diagnosis), the verdicts; ``cfg``: the target config."""
    lines = [f"Hard suite ({cfg.model.arch}, {cfg.data.num_frames} x {cfg.data.size}, "
             f"{cfg.optim.epochs if suite.epochs is None else suite.epochs} epochs, test "
             f"{cfg.test.temporal_views} x {cfg.test.spatial_views} views; "
             f"{suite.num_classes} classes x ({suite.train_per_class} + {suite.val_per_class}); seeds "
             f"{', '.join(map(str, suite.seeds))})",
             f"stage 1 (pretrain task, full fine-tuning from scratch{_stage1_changes(suite, stage1)}): best val top-1 "
             f"{_pct(stage1.get('best_val_top1'))}, backbone {stage1['backbone']}{_trained_with(stage1)}", ""]
    columns = [c for c in TABLE if c in ("method",) or any(c in r for r in rows)]
    lines += [markdown_table(list(rows), columns), ""]
    stages = [(r["method"], s) for r in rows for s in (r.get("foreground") or [])]
    if stages:
        lines += ["Kept foreground tokens per stage (first seed; recall: share of the ground-truth foreground tokens "
                  "kept; precision: share of the kept tokens that are foreground; random: a uniform choice of the "
                  "same number):", ""]
        lines.append(markdown_table(
            [{"method": m, "stage": s["stage"], "keep_share": s["keep_share"], "recall": s["recall"],
              "random_recall": s["random_recall"], "lift": s["lift"], "precision": s["precision"],
              "random_precision": s["random_precision"]} for m, s in stages],
            ["method", "stage", "keep_share", "recall", "random_recall", "lift", "precision", "random_precision"]))
        lines.append("")
    if any(len(points) > 1 for points in curves.values()):
        lines += ["Keep-rate sweep (first seed):", ""]
        lines.append(markdown_table(
            [{"method": m, "keep_rate": p[0], "gflops": p[1], "test_top1_pct": p[2], "fg1_recall": p[3]}
             for m, points in curves.items() for p in points],
            ["method", "keep_rate", "gflops", "test_top1_pct", "fg1_recall"]))
        lines.append("")
    lines += [*diagnosis, "Targets:"]
    for v in verdicts:
        mark = {True: "met", False: "NOT met", None: "not measured"}[v["met"]]
        lines.append(f"- {v['target']}: {mark} ({v['detail']})")
    lines += ["", f"plots: {plots['accuracy']}, {plots['foreground']}"]
    return "\n".join(lines)


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "n/a"
