"""data.dataset=folder (ROOT/SPLIT/CLASS/*.mp4): the reader (classes = sorted folder names, matched by name at
val/test), training, testing and predicting on it through the tools, and docs/custom_data.md's worked example run
as written (only its data/ and runs/ paths moved into a temporary folder)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from video_st import Predictor
from video_st.data.annotations import AnnotationError, read_k400_csv
from video_st.data.folders import read_class_folders

from .conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny_cpu.yaml")
ENV = {"OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def folder_set(tiny_k400, tmp_path_factory):
    """tiny_k400's videos copied into ROOT/{train,val}/CLASS/ by their labels (its corrupt files included)."""
    root = tmp_path_factory.mktemp("folder")
    for split in ("train", "val"):
        records, names = read_k400_csv(tiny_k400.annotation_files[split], tiny_k400.root)
        for r in records:
            (root / split / names[r.label]).mkdir(parents=True, exist_ok=True)
            shutil.copy(r.path, root / split / names[r.label] / os.path.basename(r.path))
    return root


def test_reader_classes_are_sorted_folders_and_matched_by_name(folder_set, tmp_path):
    records, names = read_class_folders(folder_set / "train")
    assert names == ["moving down", "moving left", "moving right", "moving up"] and len(records) == 16
    assert all(Path(r.path).parent.name == names[r.label] for r in records)
    model_order = ["moving up", "moving right", "moving left", "moving down"]
    val, got = read_class_folders(folder_set / "val", class_names=model_order)
    assert got == model_order and all(Path(r.path).parent.name == model_order[r.label] for r in val)
    with pytest.raises(AnnotationError, match="'moving left' is not among"):
        read_class_folders(folder_set / "val", class_names=["moving down", "moving right", "moving up"])
    (tmp_path / "a").mkdir()
    shutil.copy(records[0].path, tmp_path / "stray.mp4")
    with pytest.raises(AnnotationError, match="in no class folder"):
        read_class_folders(tmp_path)


def _tool(name, *args):
    result = subprocess.run([sys.executable, str(ROOT / "tools" / name), *map(str, args)], capture_output=True,
                            text=True, timeout=600, cwd=ROOT, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_train_test_and_predict_on_a_folder_dataset(tiny_k400, folder_set, tmp_path):
    run = tmp_path / "run"
    folder = ["data.dataset=folder", f"data.root={folder_set}", "data.train=train", "data.val=val"]
    _tool("train_net.py", "--config", TINY, *tiny_overrides(tiny_k400, run, "engine.max_steps=2", *folder))
    assert json.loads((run / "classes.json").read_text()) == ["moving down", "moving left", "moving right",
                                                                "moving up"]
    out = tmp_path / "test"
    test = _tool("test_net.py", "--config", TINY, "--output", out, *tiny_overrides(tiny_k400, run, *folder))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["videos"] == 7 and summary["excluded"] == 1, test.stdout
    probs = torch.load(out / "probabilities.pt", weights_only=False)
    predictions = Predictor(run, batch_size=2).predict(folder_set / "val")  # settings from run/config.yaml
    by_id = {os.path.join(Path(p.path).parent.name, Path(p.path).stem): p for p in predictions}
    assert len(predictions) == 8 and sum(p.ok for p in predictions) == 7
    for video_id, scores in zip(probs["video_id"], probs["scores"], strict=True):
        torch.testing.assert_close(by_id[video_id].probabilities, scores, rtol=0, atol=1e-5)


def test_missing_split_folder_is_one_error_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "train_net.py"), "--config", TINY,
                             "data.dataset=folder", f"data.root={tmp_path}", "data.train=train", "data.val=val",
                             f"output_dir={tmp_path / 'run'}", "model.pretrained=none"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
    assert result.returncode == 2 and result.stderr.startswith("error: data.train=train: no such folder")


def test_docs_worked_example_runs_as_written(tmp_path):
    page = (ROOT / "docs" / "custom_data.md").read_text()
    blocks = re.findall(r"^```bash\n(.*?)^```", page, flags=re.S | re.M)
    assert len(blocks) == 2
    for block in blocks:
        assert "data/my_" in block
        script = block.replace("data/my_", f"{tmp_path}/data/my_").replace("runs/my_", f"{tmp_path}/runs/my_")
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                                timeout=600, cwd=ROOT, env=ENV)
        assert result.returncode == 0, f"{script}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    classes = sorted(p.name for p in (tmp_path / "data" / "my_videos" / "train").iterdir())
    assert classes == ["moving down", "moving left", "moving right", "moving up"]
    doc = json.loads((tmp_path / "runs" / "my_videos" / "predictions" / "predictions.json").read_text())
    assert doc["videos"] == doc["predicted"] == 8 and len(doc["predictions"][0]["top_k"]) == 3
    assert "8 of 8 videos predicted" in result.stdout
