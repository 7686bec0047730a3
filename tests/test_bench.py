"""video_st.bench: the measurement, table, sweep and plot code behind tools/benchmark.py (fast parts; the whole
tables run in tests/test_benchmark_methods.py and, as a user runs them, in tests/test_tools.py)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import video_st
from video_st.bench.measure import BenchSpec, inference_model, run_benchmark, saved_tensor_bytes, seeded_clip
from video_st.bench.plots import plot_accuracy_vs_gflops
from video_st.bench.sweeps import run_log_summary, summary_fields
from video_st.bench.tables import add_ratios, markdown_table, method_columns, notes

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(arch="vit_tiny_test", num_frames=4, img_size=32, num_classes=10, rounds=1)


def test_ratios_table_cells_and_notes():
    rows = [{"method": "full", "gflops": 2.0, "t": 0.0}, {"method": "lora", "gflops": 1.0, "t": 3.0, "note": "a|b\nc"}]
    add_ratios(rows, reference="full", keys=["gflops", "t", "missing"], suffix="full")
    assert rows[1]["gflops/full"] == 0.5 and "t/full" not in rows[1]  # no ratio to a zero reference
    add_ratios(rows, reference="absent", keys=["gflops"], suffix="absent")
    assert not any("gflops/absent" in r for r in rows)
    table = markdown_table([*rows, {"method": "x", "gflops": math.nan}, {"method": "y", "gflops": 0.00123},
                            {"method": "z", "gflops": 123.456}], ["method", "gflops", "note"])
    lines = table.splitlines()
    assert lines[:2] == ["| method | gflops | note |", "|---|---|---|"]
    assert lines[3] == "| lora | 1.000 | a\\|b c |" and lines[4:] == ["| x | nan |  |", "| y | 0.00123 |  |", "| z | 123.5 |  |"]
    assert notes({"input_dependent": True, "lora_merged_for_inference": True, "error": "boom"}) == \
        "input-dependent; LoRA merged for inference; error: boom"
    assert method_columns([{"method": "full", "gflops": 1.0, "gflops/full": 1.0}]) == \
        ["method", "gflops", "gflops/full", "notes"]


def test_seeded_clip_and_merged_lora_inference():
    assert torch.equal(seeded_clip((1, 3, 4, 8, 8), seed=3), seeded_clip((1, 3, 4, 8, 8), seed=3))
    lora = video_st.create_model("vit_tiny_test", method="lora", num_frames=4, img_size=32, num_classes=10)
    merged = inference_model(lora)
    assert merged is not lora and not any(".lora." in f".{n}" for n, _ in merged.named_parameters())
    full = video_st.create_model("vit_tiny_test", method="full", num_frames=4, img_size=32, num_classes=10)
    assert inference_model(full) is full
    assert saved_tensor_bytes(full, seeded_clip((1, 3, 4, 32, 32))) > 0


def test_a_failing_method_keeps_its_row_with_keep_going():
    spec = BenchSpec(methods=["full", "sparse_tuning"], model_kwargs={"keep_rate": 0.5}, train=False, **TINY)
    with pytest.raises(ValueError, match="keep_rate"):  # full has no keep rate
        run_benchmark(spec)
    rows = {r["method"]: r for r in run_benchmark(BenchSpec(**{**spec.__dict__, "keep_going": True}))}
    assert rows["full"]["error"].startswith("build / FLOPs: ValueError") and "infer_clips_s" not in rows["full"]
    assert rows["sparse_tuning"]["infer_clips_s"] > 0 and "error" not in rows["sparse_tuning"]


def test_summary_and_run_log_fields(tmp_path):
    summary = {"checkpoint": "c", "checkpoint_kind": "k", "videos": 3, "excluded": 0, "partial": 0, "views_per_video": 3,
               "temporal_views": 1, "spatial_views": 3, "ensemble": "prob", "top1": 0.5, "top5": 1.0,
               "mean_class_accuracy": 0.4, "gflops_per_view": 0.1, "gflops_per_video": 0.3, "clips_per_s": 9.0,
               "world_size": 1, "test_file": "t.csv"}
    fields = summary_fields(summary)
    assert fields == {"test_top1": 0.5, "test_top5": 1.0, "mean_class_acc": 0.4, "test_videos": 3, "test_views": 3,
                      "gflops_engine": 0.1, "checkpoint": "c"}
    assert summary_fields({**summary, "activation_rate": 0.6})["test_extra"] == {"activation_rate": 0.6}
    assert run_log_summary(str(tmp_path)) == {}
    records = [{"kind": "epoch", "step": 8, "val_top1": 0.2}, {"kind": "epoch", "step": 16, "val_top1": 0.3},
               {"kind": "done", "step": 16, "best_val_top1": 0.3}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert run_log_summary(str(tmp_path)) == {"last_val_top1": 0.3, "steps": 16, "best_val_top1": 0.3}


def test_plot_of_accuracy_vs_gflops(tmp_path):
    rows = [{"method": "full", "gflops": 1.0, "test_top1_pct": 90.0}, {"method": "lora", "gflops": 1.0, "test_top1_pct": 90.0},
            {"method": "dyt", "gflops": 0.7, "test_top1_pct": 80.0, "input_dependent": True}, {"method": "broken"}]
    plot_accuracy_vs_gflops(rows, str(tmp_path / "plot.png"), "title")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_argument_errors(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "tools/benchmark.py", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)

    result = run("methods", "--methods", "full,nope")
    assert result.returncode == 2 and "unknown methods ['nope']" in result.stderr
    result = run("train-methods", "--backbone", tmp_path / "none.pt", "--output-dir", tmp_path)
    assert result.returncode == 2 and "none.pt does not exist: run `make demo` first" in result.stderr
    result = run("train-methods", "--lr-for", "lora=fast", "--output-dir", tmp_path)
    assert result.returncode == 2 and "--lr-for 'lora=fast': expected METHOD=LR" in result.stderr
    assert not any(tmp_path.iterdir())
