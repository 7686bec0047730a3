"""The cost tables of tools/benchmark.py (model, methods): rows from ``measure.run_benchmark``, ratios to a
reference method, a notes column, markdown for the terminal and JSON (rows + machine + command line) for the docs.

- ``model_table``: a few methods (default: the paper's comparison), GFLOPs and clips/s against full fine-tuning,
  training step and memory against the dense-token adapter baseline (``train_reference``);
- ``methods_table``: every method (full always first: the reference), every measure against full fine-tuning,
  failures kept as rows with their error (exit code 1).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..fileio import write_atomic
from .measure import BenchSpec, machine_info, run_benchmark

# model_table's columns; "/adaptformer" stands for the training reference
MODEL_COLUMNS = [
    "method", "params_m", "trainable_m", "gflops", "gflops/full", "infer_clips_s", "infer_clips_s/full",
    "train_step_s", "train_step_s/adaptformer", "saved_mb_per_clip", "saved_mb_per_clip/adaptformer",
]
# methods_table's measures, each followed by its ratio to the reference
METHOD_KEYS = ["trainable_m", "gflops", "infer_clips_s", "train_step_s", "saved_mb_per_clip", "peak_train_mem_mb"]


def add_ratios(rows: list[dict[str, Any]], *, reference: str, keys: Sequence[str], suffix: str) -> None:
    """Add ``key/suffix`` = row[key] / reference_row[key] for each key (when the reference row has it)."""
    ref = next((r for r in rows if r["method"] == reference), None)
    if ref is None:
        return
    for row in rows:
        for key in keys:
            if key in row and ref.get(key):
                row[f"{key}/{suffix}"] = row[key] / ref[key]


def markdown_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            if value != value:  # nan
                return "nan"
            if 0 < abs(value) < 0.01:
                return f"{value:.3g}"  # tiny models' GFLOPs: keep three significant digits
            return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
        return str(value).replace("|", "\\|").replace("\n", " ")  # one cell

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def notes(row: Mapping[str, Any]) -> str:
    """The notes cell: input-dependent, LoRA merged for inference, the error."""
    out = []
    if row.get("input_dependent"):
        out.append("input-dependent")
    if row.get("lora_merged_for_inference"):
        out.append("LoRA merged for inference")
    if row.get("error"):
        out.append(f"error: {row['error']}")
    return "; ".join(out)


def method_rows(spec: BenchSpec, reference: str = "full") -> list[dict[str, Any]]:
    """``run_benchmark`` over ``spec.methods`` with every measure also as a ratio to ``reference`` and a notes
    column (input-dependent, LoRA merged for inference, errors)."""
    rows = run_benchmark(spec)
    add_ratios(rows, reference=reference, keys=METHOD_KEYS, suffix=reference)
    for row in rows:
        row["notes"] = notes(row)
    return rows


def method_columns(rows: list[dict[str, Any]], reference: str = "full") -> list[str]:
    columns = ["method"] + [c for key in METHOD_KEYS for c in (key, f"{key}/{reference}")] + ["notes"]
    return [c for c in columns if c in ("method", "notes") or any(c in r for r in rows)]


def _header(spec: BenchSpec, machine: Mapping[str, Any]) -> str:
    return (f"{spec.arch}, {spec.num_frames} x {spec.img_size} (tubelet {spec.tubelet_size}), batch {spec.batch_size}, "
            f"{spec.device} {spec.dtype}, {machine['cpu_threads']} threads, median of {spec.rounds} interleaved rounds")


def model_table(spec: BenchSpec, *, train_reference: str = "adaptformer", out: str | None = None,
                args: Mapping[str, Any] | None = None) -> str:
    """The model table (also written with the machine and ``args``, the command line, as JSON to ``out``)."""
    rows = run_benchmark(spec)
    ref = train_reference
    add_ratios(rows, reference="full", keys=["gflops", "infer_clips_s"], suffix="full")
    add_ratios(rows, reference=ref, keys=["train_step_s", "saved_mb_per_clip", "peak_train_mem_mb"], suffix=ref)
    machine = machine_info(spec.device)
    columns = [c.replace("/adaptformer", f"/{ref}") for c in MODEL_COLUMNS]
    columns += ["peak_train_mem_mb", f"peak_train_mem_mb/{ref}"] if spec.device.startswith("cuda") else []
    if out:
        write_atomic(out, json.dumps({"args": dict(args or {}), "machine": machine, "rows": rows}, indent=2) + "\n")
    return _header(spec, machine) + "\n" + markdown_table(rows, [c for c in columns if any(c in r for r in rows)])


def methods_table(spec: BenchSpec, *, out: str | None = None,
                  args: Mapping[str, Any] | None = None) -> tuple[str, list[str]]:
    """The methods table (full fine-tuning first, the reference; JSON to ``out``) and the methods that failed."""
    reference = "full"
    spec = dataclasses.replace(spec, methods=[reference] + [m for m in spec.methods if m != reference], keep_going=True)
    rows = method_rows(spec, reference)
    machine = machine_info(spec.device)
    lines = [_header(spec, machine) + f", one random clip (seed {spec.seed}); x/full = ratio to full fine-tuning",
             markdown_table(rows, method_columns(rows, reference))]
    dynamic = [r["method"] for r in rows if r.get("input_dependent")]
    if dynamic:
        lines.append(f"input-dependent (FLOPs and times hold for this clip only): {', '.join(dynamic)}")
    if out:
        write_atomic(out, json.dumps({"args": dict(args or {}), "machine": machine, "reference": reference,
                                      "rows": rows}, indent=2) + "\n")
    return "\n".join(lines), [r["method"] for r in rows if r.get("error")]
