"""tools/export.py and video_st.engine.export: ONNX / TorchScript exports that reproduce the model (parity within
1e-4 on two seeded clips at two batch sizes), and the refusal of the input-dependent methods."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import video_st
from video_st.engine.export import TOLERANCE, ExportError, export_checkpoint
from video_st.models.spec import save_model_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INPUT_DEPENDENT = ("asvit", "dyt")
EXPORTABLE = [m for m in video_st.list_methods() if m not in INPUT_DEPENDENT]
# Every static method in both formats (ONNX: torch.export + onnxscript, a few seconds per tiny model).
ONNX_METHODS = EXPORTABLE

needs_onnx = pytest.mark.skipif(
    any(__import__("importlib").util.find_spec(m) is None for m in ("onnx", "onnxruntime", "onnxscript")),
    reason="the export extra (onnx, onnxruntime, onnxscript) is not installed")


def _checkpoint(tmp_path, method: str, **options) -> str:
    torch.manual_seed(0)
    model = video_st.create_model("vit_tiny_test", method=method, num_classes=4, **options)
    with torch.no_grad():  # adapters start at zero (a fresh model equals its backbone): make every part count
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    path = str(tmp_path / f"{method}.pt")
    save_model_file(path, model.state_dict(), spec=model.spec)
    return path


def _check(record: dict, out: str, fmt: str, method: str) -> None:
    assert os.path.exists(out)
    with open(out + ".json", encoding="utf-8") as f:
        assert json.load(f) == json.loads(json.dumps(record))
    assert record["format"] == fmt and record["spec"]["method"] == method
    assert [c["batch"] for c in record["parity"]["checks"]] == [1, 2]  # the batch axis is dynamic
    assert record["parity"]["max_abs_diff"] <= TOLERANCE


@pytest.mark.parametrize("method", EXPORTABLE)
def test_torchscript_parity(tmp_path, method):
    out = str(tmp_path / f"{method}.ts")
    record = export_checkpoint(_checkpoint(tmp_path, method), out, fmt="torchscript")
    _check(record, out, "torchscript", method)
    assert record["opset"] is None


@needs_onnx
@pytest.mark.parametrize("method", ONNX_METHODS)
def test_onnx_parity(tmp_path, method):
    import numpy as np
    import onnxruntime as ort

    ckpt = _checkpoint(tmp_path, method)
    out = str(tmp_path / f"{method}.onnx")
    record = export_checkpoint(ckpt, out, fmt="onnx")
    _check(record, out, "onnx", method)
    assert record["opset"] == 18
    # The file on disk, on a clip of a batch size parity did not use: Sparse-Tuning's top-k is in the graph.
    model, _ = video_st.load_model(ckpt)
    model.merge_lora()
    model.eval()
    clip = torch.randn(3, 3, 4, 32, 32, generator=torch.Generator().manual_seed(7))
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model(clip).numpy()
    assert np.abs(session.run(None, {"x": clip.numpy()})[0] - want).max() <= TOLERANCE


def test_torchscript_file_loads(tmp_path):
    ckpt = _checkpoint(tmp_path, "sparse_tuning")
    out = str(tmp_path / "st.pt")
    export_checkpoint(ckpt, out, fmt="torchscript")
    module = torch.jit.load(out)
    model, _ = video_st.load_model(ckpt)
    clip = torch.randn(3, 3, 4, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert (module(clip) - model.eval()(clip)).abs().max() <= TOLERANCE


@pytest.mark.parametrize("method", INPUT_DEPENDENT)
def test_input_dependent_refused(tmp_path, method):
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="input-dependent"):
        export_checkpoint(_checkpoint(tmp_path, method), str(out), fmt="torchscript")
    assert not out.exists()


def test_a_random_selection_is_refused(tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="score='random' is not exported: it draws the kept tokens at random"):
        export_checkpoint(_checkpoint(tmp_path, "sparse_tuning", score="random"), str(out), fmt="onnx")
    assert not out.exists()


@pytest.mark.parametrize("method", INPUT_DEPENDENT)
def test_cli_refuses_input_dependent(tmp_path, method):
    out = tmp_path / "m.onnx"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export.py"), _checkpoint(tmp_path, method),
                           str(out), "--format", "onnx"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"'{method}'" in lines[0], proc.stderr
    assert "token counts depend on the input" in lines[0]
    assert not out.exists() and not (tmp_path / "m.onnx.json").exists()


def test_cli_exports(tmp_path):
    out = tmp_path / "st.pt"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export.py"),
                           _checkpoint(tmp_path, "sparse_tuning"), str(out), "--format", "torchscript"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and (tmp_path / "st.pt.json").exists()
    assert "max abs diff" in proc.stdout


def test_parity_failure_writes_nothing(tmp_path):
    out = tmp_path / "st.pt"
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_checkpoint(_checkpoint(tmp_path, "sparse_tuning"), str(out), fmt="torchscript", tolerance=-1.0)
    assert not out.exists() and not (tmp_path / "st.pt.json").exists()
