"""tools/benchmark.py methods: one row per method of video_st.list_methods(), every measure also as a ratio to full
fine-tuning (the ViT-B table of docs/benchmarks.md, here on the 4-layer test model, 1 round: seconds on CPU)."""

import importlib.util
import json
from pathlib import Path

import video_st

ROOT = Path(__file__).resolve().parents[1]


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("benchmark_cli", ROOT / "tools" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_methods_table_has_every_method_with_ratios_to_full(tmp_path, capsys):
    out = tmp_path / "methods.json"
    code = _benchmark_module().main(["methods", "--arch", "vit_tiny_test", "--frames", "4", "--img-size", "32",
                                     "--num-classes", "10", "--rounds", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    rows = {r["method"]: r for r in saved["rows"]}
    assert code == 0, [r.get("error") for r in rows.values()]
    assert set(rows) == set(video_st.list_methods())
    assert "cpu_threads" in saved["machine"]
    ratios = ["trainable_m/full", "gflops/full", "infer_clips_s/full", "train_step_s/full", "saved_mb_per_clip/full"]
    for method, row in rows.items():
        assert "error" not in row, (method, row["error"])
        for key in ratios:
            assert row[key] > 0, (method, key)
        assert isinstance(row["input_dependent"], bool)
        assert f"| {method} |" in printed
    assert all(rows["full"][key] == 1.0 for key in ratios)
    assert rows["linear"]["trainable_m/full"] < rows["full"]["trainable_m/full"]
    if "lora" in rows:  # inference on the merged model: what the backbone costs
        assert rows["lora"]["lora_merged_for_inference"] and rows["lora"]["gflops/full"] == 1.0
