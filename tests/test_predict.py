"""video_st.Predictor and tools/predict.py: the scores of tools/test_net.py for the same checkpoint and views,
unreadable files reported while the others are predicted, the CLI's table, JSON and CSV, one error line for bad
input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from video_st import Predictor, create_model
from video_st.data.annotations import read_k400_csv
from video_st.models.spec import save_model_file

from .conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny_cpu.yaml")
ENV = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
CLASSES = ["moving down", "moving left", "moving right", "moving up"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """model_final.pt of a randomly initialised tiny LoRA model (merged by the predictor as by the test tool)."""
    torch.manual_seed(3)
    model = create_model("vit_tiny_test", method="lora", num_classes=4)
    with torch.no_grad():  # LoRA's B starts at zero: make the update count
        for name, p in model.named_parameters():
            if "lora" in name:
                p.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("ckpt") / "model_final.pt"
    save_model_file(path, model.state_dict(), spec=model.spec.with_classes(CLASSES))
    return path


def _val_records(summary):
    records, _ = read_k400_csv(summary.annotation_files["val"], summary.root, CLASSES)
    return records


def _test_net(summary, checkpoint, out, *extra):
    cmd = [sys.executable, str(ROOT / "tools" / "test_net.py"), "--config", TINY, "--output", str(out),
           f"--checkpoint={checkpoint}", *tiny_overrides(summary, out.parent, "test.batch_size=1", "model.method=lora",
                                                                      *extra)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out / "probabilities.pt", weights_only=False)


@pytest.mark.parametrize("views", [(1, 3), (2, 1)])
def test_predictions_equal_test_net_probabilities(tiny_k400, checkpoint, tmp_path, views):
    temporal, spatial = views
    probs = _test_net(tiny_k400, checkpoint, tmp_path / "test", f"test.temporal_views={temporal}",
                      f"test.spatial_views={spatial}")
    records = _val_records(tiny_k400)
    predictor = Predictor(checkpoint, config=TINY, temporal_views=temporal, spatial_views=spatial, batch_size=3)
    predictions = predictor.predict([r.path for r in records])
    assert [p.path for p in predictions] == [r.path for r in records]
    by_id = {r.video_id: p for r, p in zip(records, predictions, strict=True)}
    bad = next(c for c in tiny_k400.corrupt if c.split == "val")
    assert not by_id[Path(bad.path).stem].ok and by_id[Path(bad.path).stem].error
    assert sum(p.ok for p in predictions) == len(probs["video_id"]) == 7
    for video_id, scores, n_views in zip(probs["video_id"], probs["scores"], probs["views"], strict=True):
        p = by_id[video_id]
        assert p.views == n_views == temporal * spatial
        torch.testing.assert_close(p.probabilities, scores, rtol=0, atol=1e-5)
        assert p.classes[0] == CLASSES[int(scores.argmax())] and len(p.classes) == 4  # top_k 5 > 4 classes
        assert abs(p.scores[0] - float(scores.max())) < 1e-5


def test_corrupt_and_missing_files_are_reported_and_others_predicted(tiny_k400, checkpoint, tmp_path):
    corrupt = {str(Path(tiny_k400.root) / c.path) for c in tiny_k400.corrupt}
    good = [r.path for r in _val_records(tiny_k400) if r.path not in corrupt][:3]
    garbage, empty = tmp_path / "garbage.mp4", tmp_path / "empty.mp4"
    garbage.write_bytes(bytes(range(256)) * 40)
    empty.write_bytes(b"")
    predictor = Predictor(checkpoint, config=TINY, top_k=2, batch_size=2)
    alone = predictor.predict(good)
    mixed = predictor.predict([good[0], str(garbage), good[1], str(empty), str(tmp_path / "missing.mp4"), good[2]])
    assert [p.ok for p in mixed] == [True, False, True, False, False, True]
    assert mixed[4].error == "no such file" and mixed[1].error and mixed[3].error
    for a, b in zip(alone, [mixed[0], mixed[2], mixed[5]], strict=True):
        assert a.path == b.path and a.classes == b.classes and len(a.classes) == 2
        torch.testing.assert_close(a.probabilities, b.probabilities, rtol=0, atol=1e-5)


def _predict_tool(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "predict.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=ENV)


def test_cli_prints_the_table_and_writes_json_and_csv(tiny_k400, checkpoint, tmp_path):
    val = Path(tiny_k400.root) / "val"
    out = tmp_path / "out"
    result = _predict_tool(val, "--checkpoint", checkpoint, "--config", TINY, "--views", "1,2", "--top-k", "2",
                           "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "7 of 8 videos predicted, 1 unreadable" in result.stdout and "unreadable:" in result.stdout
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["videos"] == 8 and doc["predicted"] == 7 and doc["temporal_views"] == 1 and doc["spatial_views"] == 2
    assert doc["classes"] == CLASSES
    first = next(p for p in doc["predictions"] if p["ok"])
    assert len(first["top_k"]) == 2 and len(first["scores"]) == 4 and first["views"] == 2
    assert first["top_k"][0]["class"] in result.stdout
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == "path,ok,views,top1_class,top1_score,top2_class,top2_score,error" and len(rows) == 9
    assert not list(out.glob("*.tmp"))


def test_cli_bad_input_is_one_error_line(tiny_k400, checkpoint, tmp_path):
    missing = _predict_tool(Path(tiny_k400.root) / "val", "--checkpoint", tmp_path / "nope.pt")
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0
    assert missing.stderr.startswith("error:") and "nope.pt" in missing.stderr
    (tmp_path / "empty").mkdir()
    none = _predict_tool(tmp_path / "empty", "--checkpoint", checkpoint, "--out", tmp_path / "o")
    assert none.returncode == 2 and none.stderr.startswith("error: no video found"), none.stderr
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    unreadable = _predict_tool(bad, "--checkpoint", checkpoint, "--out", tmp_path / "o2")
    assert unreadable.returncode == 2 and "none of the 1 videos" in unreadable.stderr
    assert json.loads((tmp_path / "o2" / "predictions.json").read_text())["predicted"] == 0


def test_tokens_are_drawn_per_video_and_a_dense_model_is_refused_up_front(tiny_k400, checkpoint, tmp_path):
    torch.manual_seed(0)
    model = create_model("vit_tiny_test", method="sparse_tuning", num_classes=4)
    sparse = tmp_path / "st.pt"
    save_model_file(sparse, model.state_dict(), spec=model.spec.with_classes(CLASSES))
    val = sorted(str(p) for p in (Path(tiny_k400.root) / "val").glob("*.mp4"))[:3]
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    result = _predict_tool(*val, bad, "--checkpoint", sparse, "--config", TINY, "--views", "1,3", "--out",
                           tmp_path / "out", "--tokens", tmp_path / "tokens")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"tokens drawn for {len(val)} videos" in result.stdout
    drawn = sorted(p.name for p in (tmp_path / "tokens").iterdir())
    assert drawn == sorted(Path(v).stem for v in val)  # the unreadable one has no folder
    for folder in (tmp_path / "tokens").iterdir():
        files = {p.name for p in folder.iterdir()}
        assert {"overview.png", "tokens.gif"} <= files and len([f for f in files if f.startswith("stage")]) == 2
    dense = _predict_tool(*val, "--checkpoint", checkpoint, "--out", tmp_path / "o3", "--tokens", tmp_path / "t3")
    assert dense.returncode == 2 and dense.stderr.strip().count("\n") == 0, dense.stderr
    assert "no token-reduction stages" in dense.stderr and not (tmp_path / "o3").exists()
