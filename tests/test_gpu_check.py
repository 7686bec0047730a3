"""tools/gpu_check.py --device cpu: every section of the GPU check on the tiny model, as a user runs it (subprocess),
so the script that is run on a GPU machine cannot rot on machines without one; and the section runner's records."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from video_st.bench import gpu_check
from video_st.bench.gpu_sections import SECTIONS, Skipped

ROOT = Path(__file__).resolve().parents[1]
CUDA_ONLY = {"train_deepspeed_fp16", "decode_nvjpeg", "decode_torchcodec"}


def _run(*args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cpu_mode_runs_every_section(tmp_path):
    out = tmp_path / "check"
    result = _run("--device", "cpu", "--out", out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    sections = {s["name"]: s for s in report["sections"]}
    assert list(sections) == list(SECTIONS)  # every section, in the check's order
    assert report["failed"] == [] and set(report["skipped"]) == CUDA_ONLY
    for name, s in sections.items():
        if name in CUDA_ONLY:
            assert s["status"] == "skipped" and s["ok"] and s["error"], s
            continue
        assert s["status"] == "ok" and s["ok"] and s["error"] is None, s
        assert s["figures"] and all(v > 0 and math.isfinite(v) for v in s["figures"].values()), s
        assert 0 < s["seconds"], s
    # The CUDA-only paths say why they did not run: the precision policy's own refusal, and no CUDA.
    assert "fp16 needs a GPU" in sections["train_deepspeed_fp16"]["error"]
    assert all("CUDA" in sections[n]["error"] for n in ("decode_nvjpeg", "decode_torchcodec"))
    # The engines trained for real (the loop's own log), and test_net tested every generated validation video.
    for name in ("train_deepspeed_bf16", "train_ddp_bf16"):
        details = sections[name]["details"]
        assert math.isfinite(details["loss_last"]) and details["timed_steps"] >= 1
        assert "clips_s" in sections[name]["figures"] and "mfu" not in sections[name]["figures"]  # no CPU peak
    assert sections["test_net"]["figures"]["videos"] == 4
    ratio = sections["inference_dense_vs_sparse"]["figures"]
    assert ratio["sparse_over_dense"] == pytest.approx(ratio["sparse_tuning_clips_s"] / ratio["dense_clips_s"])
    assert report["machine"]["torch"] == torch.__version__ and report["machine"]["deepspeed"]
    # The table: written and printed, one row per section.
    table = (out / "gpu_check.md").read_text()
    assert all(f"| {name} |" in table for name in SECTIONS) and table.strip() in result.stdout
    assert "skipped: needs CUDA" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA")
def test_bad_input_is_one_error_line(tmp_path):
    out = tmp_path / "never"
    for args, words in [(["--out", out], "--device cpu"),  # the default device is CUDA
                        (["--device", "cpu", "--sections", "nope", "--out", out], "'nope'"),
                        (["--device", "tpu", "--out", out], "expected one of")]:
        result = _run(*args, timeout=60)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], result.stderr
    assert not out.exists()


class _Context:
    def release(self):
        pass


def _record(monkeypatch, section):
    monkeypatch.setitem(SECTIONS, "probe", (section, 3.0))
    return gpu_check.run_section("probe", _Context(), 3.0)


def test_a_failing_section_is_recorded_in_one_line_with_its_traceback(monkeypatch):
    def boom(ctx, budget_s):
        raise RuntimeError("first line\nsecond line")

    result = _record(monkeypatch, boom)
    assert result.status == "failed" and not result.ok and result.error == "RuntimeError: first line"
    assert "second line" in result.traceback and "boom" in result.traceback

    result = _record(monkeypatch, lambda ctx, budget_s: ({"clips_s": 0.0}, {}))
    assert result.status == "failed" and "not positive" in result.error  # a zero rate is a failure too

    def skip(ctx, budget_s):
        raise Skipped("needs CUDA (--device cpu)")

    result = _record(monkeypatch, skip)
    assert result.status == "skipped" and result.ok and result.error == "needs CUDA (--device cpu)"


def test_table_and_exit_code_of_a_report_with_a_failure():
    ok = gpu_check.SectionResult("a", "ok", 1.0, 10.0, {"clips_s": 123.456})
    failed = gpu_check.SectionResult("b", "failed", 2.0, 10.0, error="RuntimeError: broken")
    report = {"machine": {"torch": "x", "cuda": None, "cudnn": None, "deepspeed": "y", "cpu_count": 2},
              "total_seconds": 3.0, "setup_seconds": {}, "quick": False, "failed": ["b"],
              "sections": [{**vars(r), "ok": r.ok} for r in (ok, failed)]}
    table = gpu_check.markdown(report)
    assert "| a | ok | 1.0 (10) | clips_s 123 |" in table and "| b | FAILED: RuntimeError: broken |" in table
    assert gpu_check.exit_code(report) == 1 and gpu_check.exit_code({**report, "failed": []}) == 0
    assert gpu_check.select_sections("test_net,train_ddp_bf16") == ["train_ddp_bf16", "test_net"]  # check's order
