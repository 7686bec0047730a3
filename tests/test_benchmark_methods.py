"""The methods table (tools/benchmark.py methods): one row per method of video_st.list_methods(), every measure also
as a ratio to full fine-tuning (the ViT-B table of docs/benchmarks.md, here on the 4-layer test model, 1 round:
seconds on CPU)."""

import json

import pytest

import video_st
from video_st.bench.measure import BenchSpec
from video_st.bench.tables import methods_table


def test_methods_table_has_every_method_with_ratios_to_full(tmp_path):
    out = tmp_path / "methods.json"
    methods = [m for m in video_st.list_methods() if m != "full"]  # full is added first: the reference
    spec = BenchSpec(arch="vit_tiny_test", methods=methods, num_frames=4, img_size=32, num_classes=10, rounds=1)
    printed, failed = methods_table(spec, out=str(out), args={"rounds": 1})
    saved = json.loads(out.read_text())
    rows = {r["method"]: r for r in saved["rows"]}
    assert failed == [], [r.get("error") for r in rows.values()]
    assert saved["rows"][0]["method"] == "full" and saved["reference"] == "full" and saved["args"] == {"rounds": 1}
    assert set(rows) == set(video_st.list_methods())
    assert "cpu_threads" in saved["machine"]
    ratios = ["trainable_m/full", "gflops/full", "infer_clips_s/full", "train_step_s/full", "saved_mb_per_clip/full"]
    for method, row in rows.items():
        assert "error" not in row, (method, row["error"])
        for key in ratios:
            assert row[key] > 0, (method, key)
        assert isinstance(row["input_dependent"], bool)
        assert f"| {method} |" in printed
    for method, row in rows.items():  # each ratio is the row's own measure over full's
        assert row["gflops/full"] == pytest.approx(row["gflops"] / rows["full"]["gflops"]), method
    assert rows["linear"]["trainable_m/full"] < rows["full"]["trainable_m/full"]
    if "lora" in rows:  # inference on the merged model: what the backbone costs
        assert rows["lora"]["lora_merged_for_inference"] and rows["lora"]["gflops/full"] == 1.0
