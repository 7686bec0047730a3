"""tools/benchmark.py train-methods --suite hard (video_st/bench/hard_suite.py): the suite's smallest setting end to
end (generated sets, stage-1 pretraining, stage 2 for a few methods, a keep-rate point, foreground scores, clips/s,
plots, a rerun that reuses every finished step), and its arithmetic on hand-built rows."""

import json
import os

import pytest
import torch

from video_st.bench import hard_results, hard_suite
from video_st.bench.hard_diagnosis import VARIANTS, render_diagnosis
from video_st.bench.hard_oracle import SELECTIONS
from video_st.bench.cli import main as benchmark
from video_st.config import load_config
from video_st.engine.build import build_model
from video_st.errors import ConfigError


def test_aggregate_means_seeds_with_their_spread_and_ratios_to_full():
    per_seed = {0: [{"method": "full", "test_top1_pct": 90.0, "gflops": 1.0, "trainable_m": 2.0},
                    {"method": "evit", "test_top1_pct": 50.0, "gflops": 0.5, "fg1_recall": 0.8, "keep_rates": [0.7]}],
                1: [{"method": "full", "test_top1_pct": 80.0, "gflops": 1.0, "trainable_m": 2.0},
                    {"method": "evit", "error": "training exited 1"}]}
    rows = {r["method"]: r for r in hard_results.aggregate(per_seed, {"full": 100.0, "evit": 150.0})}
    assert rows["full"]["test_top1_pct"] == 85.0 and rows["full"]["test_top1_pct_std"] == pytest.approx(7.0711, 1e-4)
    assert rows["full"]["seeds"] == 2 and rows["evit"]["seeds"] == 1  # a failed seed is left out, not a zero
    assert "test_top1_pct_std" not in rows["evit"] and rows["evit"]["fg1_recall"] == 0.8
    assert rows["evit"]["gflops/full"] == 0.5 and rows["evit"]["cpu_clips_s/full"] == 1.5


def test_keep_curves_and_equal_gflops_interpolation():
    first = [{"method": "sparse_tuning", "keep_rates": [0.7, 0.7], "gflops": 0.7, "test_top1_pct": 80.0},
             {"method": "evit", "keep_rates": [0.7, 0.7], "gflops": 0.6, "test_top1_pct": 60.0},
             {"method": "linear", "keep_rates": [], "gflops": 1.0, "test_top1_pct": 40.0}]
    sweep = [{"method": "evit", "keep_rate": 1.0, "gflops": 1.0, "test_top1_pct": 70.0},
             {"method": "evit", "keep_rate": 0.3, "gflops": 0.3, "test_top1_pct": 30.0}]
    curves = hard_results.keep_curves(first, sweep)
    assert set(curves) == {"sparse_tuning", "evit"}
    assert [p[0] for p in curves["evit"]] == [0.3, 0.7, 1.0]
    assert hard_results.at_gflops(curves["evit"], 0.7) == pytest.approx(62.5)  # between 0.6 -> 60 and 1.0 -> 70
    assert hard_results.at_gflops(curves["evit"], 1.5) is None


def test_targets_are_judged_from_the_rows():
    rows = [{"method": "full", "test_top1_pct": 95.0, "gflops": 1.0},
            {"method": "linear", "test_top1_pct": 50.0, "gflops": 1.0},
            {"method": "dense_adapter", "test_top1_pct": 80.0, "gflops": 1.1},
            {"method": "sparse_tuning", "test_top1_pct": 79.5, "gflops": 0.7, "keep_rates": [0.7, 0.7],
             "fg1_recall": 0.85, "fg1_random_recall": 0.7}]
    verdicts = {v["target"].split(" ")[0] + str(i): v for i, v in enumerate(hard_results.check_targets(rows, {}))}
    met = [v["met"] for v in verdicts.values()]
    assert met == [True, True, True, False]  # linear gap 30, best-worst 45, ST -0.5 at 0.64, recall 0.85 < 0.9
    assert "0.64 of the GFLOPs" in verdicts["Sparse-Tuning2"]["detail"]
    assert "selection oracle" not in verdicts["Sparse-Tuning2"]["detail"]  # it did not run
    oracle = [{"model": model, "method": method, "selection": selection, "test_top1_pct": top1}
              for model, method, selection, top1 in [
                  ("sparse_tuning", "sparse_tuning", "own", 79.5), ("sparse_tuning", "sparse_tuning", "object", 81.0),
                  ("dense_adapter", "dense_adapter", "object", 82.0), ("evit", "evit", "object", 90.0),
                  ("object_first", "sparse_tuning", "object", 88.0), ("layers=1+3", "sparse_tuning", "object", 85.0),
                  ("object_first", "sparse_tuning", "all", 99.0)]]
    detail = hard_results.check_targets(rows, {}, oracle)[2]["detail"]
    assert detail.endswith("; with the object's tokens kept first at test (selection oracle): Sparse-Tuning 81.0%, "
                           "Dense Adapters 82.0%, the variant object_first 88.0%")


def test_equal_gflops_verdicts_compare_first_seed_runs():
    # The curves hold first-seed runs; the row holds the mean over seeds (65%). The verdict must set EViT's curve
    # (60% at 0.7 GFLOPs) against Sparse-Tuning's first-seed point (58%), not against the mean.
    rows = [{"method": "sparse_tuning", "test_top1_pct": 65.0, "gflops": 0.7, "keep_rates": [0.7, 0.7]}]
    curves = {"sparse_tuning": [[0.5, 0.6, 50.0, None], [0.7, 0.7, 58.0, None]],
              "evit": [[0.5, 0.6, 50.0, None], [1.0, 0.8, 70.0, None]]}
    (verdict,) = hard_results.check_targets(rows, curves)
    assert verdict["met"] is False and verdict["value"] == pytest.approx(-2.0)
    assert "first seed" in verdict["detail"] and "60.0% (interpolated on its keep-rate curve) vs 58.0%" in \
        verdict["detail"]


def _png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_smallest_suite_runs_end_to_end_and_a_rerun_reuses_it(tmp_path, caplog):
    out = tmp_path / "hard"
    argv = ["train-methods", "--suite", "hard", "--classes", "4", "--train-per-class", "2", "--val-per-class", "2",
            "--pretrain-epochs", "1", "--epochs", "1", "--methods", "linear,sparse_tuning", "--keep-rates", "0.5",
            "--output-dir", str(out), "--plot-dir", str(out), "--speed-rounds", "1",
            "--variants", "layers=1+3,dense_adapter:form=published", "--seeds", "0,1", "--variant-seeds", "0,1",
            "--set", "data.batch_size=4", "--set", "data.num_workers=0", "--jobs", "2",
            "--pretrain-set", "optim.attention_guide=0.5"]
    report = benchmark(argv, description="")
    assert report.code == 0
    printed = "\n".join(report.lines)
    saved = json.loads((out / "suite.json").read_text())
    rows = {r["method"]: r for r in saved["rows"]}
    assert set(rows) == {"linear", "sparse_tuning"} and saved["failed"] == []
    st = rows["sparse_tuning"]
    assert [s["stage"] for s in st["foreground"]] == ["layer 2", "layer 3"]  # the tiny model reduces at 2 and 3
    first = st["foreground"][0]
    assert 0 <= first["recall"] <= 1 and first["random_recall"] == pytest.approx(first["keep_share"])
    assert first["kept"] > 0 and first["foreground"] > 0 and first["clips"] == 8  # 4 classes x 2 test videos
    assert rows["linear"]["foreground"] is None and rows["linear"]["cpu_clips_s"] > 0
    curve = saved["curves"]["sparse_tuning"]
    assert [p[0] for p in curve] == [0.5, 0.7] and curve[0][1] < curve[1][1]  # fewer tokens, fewer GFLOPs
    assert _png(saved["plots"]["accuracy"]) and _png(saved["plots"]["foreground"])
    assert "| sparse_tuning | layer 2 |" in printed and "Targets:" in printed
    assert (out / "suite.md").read_text().startswith("Hard suite")
    assert f"{torch.get_num_threads()} threads: a rerun with both equal" in printed  # what reproduces stage 1
    assert saved["stage1"]["settings"]["threads"] == torch.get_num_threads()  # and a rerun compares it
    # stage 1 trains with the attention guide (configs/hard/pretrain.yaml; on the pretrain set's masks), at the
    # weight --pretrain-set gives it; stage 2 without
    assert "optim.attention_guide=0.5" in saved["stage1"]["settings"]["overrides"]
    assert "from scratch, attention guide 0.5; optim.attention_guide=0.5)" in printed  # the resolved weight named
    assert load_config(str(out / "pretrain" / "config.yaml")).optim.attention_guide == 0.5
    stage1_log = [json.loads(line) for line in (out / "pretrain" / "log.jsonl").read_text().splitlines()]
    assert any("loss_attention_guide" in r for r in stage1_log)
    assert load_config(str(out / "seed0" / "linear" / "config.yaml")).optim.attention_guide == 0
    # the selection probe: every layer of the 4-layer model x both scoring queries, one stage at the keep rate
    probe = saved["selection_probe"]
    assert [(r["layer"], r["score"]) for r in probe] == [(i, s) for i in range(1, 5) for s in ("cls", "mean")]
    assert all(r["keep_share"] == pytest.approx(first["keep_share"]) for r in probe)
    # the selection oracle: every seed's Sparse-Tuning tested again, its [CLS] choice its own test's figure
    # and the variant's, at its own layers
    oracle = {(r["model"], r["selection"]): r for r in saved["selection_oracle"]}
    assert list(oracle) == [(m, s) for m in ("sparse_tuning", "layers=1+3") for s in SELECTIONS]
    assert oracle["sparse_tuning", "own"]["seeds"] == 2 and oracle["layers=1+3", "all"]["layers"] == [1, 3]
    assert oracle["sparse_tuning", "own"]["test_top1_pct"] == pytest.approx(st["test_top1_pct"])
    assert oracle["sparse_tuning", "object"]["fg1_recall"] == 1.0 and "Selection oracle" in printed
    (variant,) = saved["variants"]  # dense_adapter is not among the methods: its variant is not run
    assert variant["seeds"] == 2 and "test_top1_pct_std" in variant  # over both seeds, as asked
    assert [len(v) for v in saved["variants_per_seed"].values()] == [1, 1]
    assert (out / "variants_seed1" / "layers_1_3" / "sparse_tuning" / "test" / "summary.json").is_file()
    assert variant["variant"] == "layers=1+3" and [s["stage"] for s in variant["foreground"]] == \
        ["layer 1", "layer 3"]
    assert "Selection probe" in printed and "| sparse_tuning | layers=1+3 |" in printed
    # two runs at once, each with half the threads; the count is part of what a run is (its reuse stamp)
    assert "== stage 2: 7 runs (2 methods x seeds 0, 1, 1 other keep rates, 2 variant runs), 2 at once" in caplog.text
    stamp = json.loads((out / "seed1" / "linear" / "benchmark_settings.json").read_text())
    assert stamp["threads"] == max(1, torch.get_num_threads() // 2)

    # A rerun with the same settings trains nothing again (a killed suite resumes where it stopped).
    logs = sorted(out.rglob("train.log")) + [out / "pretrain" / "suite_train.log"]
    before = {p: os.path.getmtime(p) for p in logs}
    caplog.clear()
    report = benchmark(argv, description="")
    assert report.code == 0
    assert {p: os.path.getmtime(p) for p in logs} == before
    again = caplog.text  # the steps' progress lines are logged (stderr), the report returned for the tool
    assert "[linear] test top-1" in again and "Targets:" in "\n".join(report.lines)
    assert "] training (" not in again and "== stage 1" not in again and "== selection probe" not in again
    assert "== selection oracle" not in again

    # Other data under the same paths (more videos per class): nothing trained on the old set is reused, though
    # every path and override of stage 1 and of the linear run is unchanged.
    smaller = ["--methods", "linear", "--keep-rates", "", "--variants", "none", "--speed-rounds", "0"]
    caplog.clear()
    assert benchmark([*argv, "--train-per-class", "3", *smaller], description="").code == 0
    redone = caplog.text
    assert "== data: the hard pretrain set" in redone and "== stage 1" in redone
    assert "[linear] training (" in redone and "== selection probe" in redone
    third = json.loads((out / "suite.json").read_text())
    assert third["rows"][0]["method"] == "linear" and third["selection_oracle"] == []  # no Sparse-Tuning run


def test_suite_refuses_what_it_makes_itself(capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark(["train-methods", "--suite", "hard", "--backbone", "x.pt"], description="")
    assert exit_info.value.code == 2 and "drop --backbone" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark(["train-methods", "--suite", "hard", "--keep-rates", "0.5,1.5"], description="")
    assert "outside (0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        benchmark(["train-methods", "--suite", "hard", "--seeds", "0", "--variant-seeds", "0,1"], description="")
    assert exit_info.value.code == 2 and "each must be one of --seeds 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        benchmark(["train-methods", "--suite", "hard", "--jobs", "0"], description="")
    assert exit_info.value.code == 2 and "--jobs 0: must be >= 1" in capsys.readouterr().err


def test_a_stage1_override_the_model_cannot_take_is_refused_before_anything_is_made(tmp_path):
    # the guide's layers are checked against the built stage-1 model, not first in its training subprocess after
    # both datasets were generated
    out = tmp_path / "hard"
    suite = hard_suite.HardSuite(output_dir=str(out), pretrain_overrides=["optim.attention_guide_layers=[9]"])
    with pytest.raises(ConfigError, match=r"optim.attention_guide_layers=\[9\]: .*the model has layers 1 to 4"):
        hard_suite.run_suite(suite)
    assert not out.exists()


def test_variants_sit_beside_the_suite_rows_of_the_methods_they_change():
    beside = [{"method": "evit", "seeds": 2, "test_top1_pct": 44.0, "gflops": 0.066, "fg1_recall": 0.45},
              {"method": "sparse_tuning", "seeds": 2, "test_top1_pct": 47.0, "gflops": 0.070, "error": "exited 1"}]
    variants = [{"method": "evit", "variant": "evit:layers=1+3", "seeds": 2, "test_top1_pct": 46.0,
                 "test_top1_pct_std": 1.5, "gflops": 0.062, "fg1_recall": 0.91, "fg1_random_recall": 0.7}]
    lines = render_diagnosis([], variants, beside, sparse_layers=[2, 3])
    table = [line for line in "\n".join(lines).splitlines() if line.startswith("| evit")]
    assert table == ["| evit | (the suite's row) | 2 | 44.000 |  | 0.066 | 0.450 |  |",
                     "| evit | evit:layers=1+3 | 2 | 46.000 | 1.500 | 0.062 | 0.910 | 0.700 |"]
    assert not any("sparse_tuning" in line for line in lines)  # a failed row is left out, not shown as zeros


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_builds_at_the_suite_geometry_and_changes_the_model(name):
    # A typo in a variant's overrides would surface only after an hour of suite; each one is checked here on
    # the suite's own config: it loads, builds, runs a clip, and is not the method's unchanged model.
    variant = VARIANTS[name]
    base = ["model.pretrained=none", f"model.method={variant.method}"]
    plain = build_model(load_config(hard_suite.TARGET_CONFIG, base))
    changed = build_model(load_config(hard_suite.TARGET_CONFIG, [*base, *variant.overrides]))
    clip = torch.randn(2, 3, 8, 64, 64)
    schedule_only = {"optim.keep_rate_warmup_epochs=3", "data.object_first=true"}  # the training, not the model
    with torch.no_grad():
        out = changed.eval()(clip)
        assert out.shape == (2, 8) and torch.isfinite(out).all()
        if not schedule_only & set(variant.overrides):
            assert changed.spec != plain.spec
