"""tools/test_net.py: exact multi-view results on 1, 2 and 3 processes, bad videos excluded and reported, every
checkpoint kind loads to the same predictions, metrics against hand-computed values."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from video_st import create_model
from video_st.engine.evaluate import Predictions, accuracy
from video_st.engine.report import metrics
from video_st.models.spec import save_model_file

from .conftest import python_launcher, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny_cpu.yaml")


def _test_net(summary, out, *extra, nproc=1):
    cmd = [*python_launcher(nproc), str(ROOT / "tools" / "test_net.py"), "--config", TINY, "--output", str(out),
           *tiny_overrides(summary, out.parent, "test.batch_size=1", *extra)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "summary.json").read_text()), torch.load(out / "probabilities.pt", weights_only=False), result


@pytest.fixture(scope="module")
def consolidated(tmp_path_factory):
    """A model_final.pt-style file of a randomly initialised tiny Sparse-Tuning model (what training exports)."""
    torch.manual_seed(3)
    model = create_model("vit_tiny_test", method="sparse_tuning", num_classes=4, sparse_layers=[2, 3], keep_rate=0.7)
    path = tmp_path_factory.mktemp("ckpt") / "model_final.pt"
    classes = ["moving down", "moving left", "moving right", "moving up"]
    save_model_file(path, model.state_dict(), spec=model.spec.with_classes(classes))
    return path, model


def test_same_result_on_one_two_and_three_processes(tiny_k400, consolidated, tmp_path):
    runs = [_test_net(tiny_k400, tmp_path / f"n{n}", f"--checkpoint={consolidated[0]}", nproc=n) for n in (1, 2, 3)]
    (s1, p1, out1), *others = runs
    assert s1["videos"] == 7 and s1["excluded"] == 1 and s1["views_per_video"] == 3
    assert "videos evaluated: 7 (3 views each: 1 temporal x 3 spatial" in out1.stdout
    for summary, probs, _ in others:
        assert torch.equal(probs["scores"], p1["scores"]) and probs["video_id"] == p1["video_id"]
        assert {k: summary[k] for k in ("top1", "top5", "videos", "excluded")} == \
               {k: s1[k] for k in ("top1", "top5", "videos", "excluded")}
        assert summary["world_size"] in (2, 3)


def test_corrupt_video_is_excluded_and_others_unchanged(tiny_k400, consolidated, tmp_path):
    bad = next(c for c in tiny_k400.corrupt if c.split == "val")
    summary, probs, _ = _test_net(tiny_k400, tmp_path / "all", f"--checkpoint={consolidated[0]}")
    excluded = (tmp_path / "all" / "excluded_videos.txt").read_text()
    assert bad.path in excluded and summary["excluded"] == 1
    lines = Path(tiny_k400.annotation_files["val"]).read_text().splitlines()
    stem = Path(bad.path).stem
    clean = tmp_path / "clean.csv"
    clean.write_text("\n".join(line for line in lines if line.split(",")[1] not in stem) + "\n")
    summary_clean, probs_clean, _ = _test_net(tiny_k400, tmp_path / "clean", f"--checkpoint={consolidated[0]}",
                                              f"data.test={clean}")
    assert summary_clean["excluded"] == 0 and probs_clean["video_id"] == probs["video_id"]
    assert torch.equal(probs_clean["scores"], probs["scores"])
    rows = (tmp_path / "all" / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("video_id,label,label_name,views,top1_class,top1_score") and len(rows) == 8
    assert (tmp_path / "all" / "confusion.png").stat().st_size > 0


def test_every_checkpoint_kind_gives_the_same_predictions(tiny_k400, consolidated, tmp_path):
    """Train two steps from a backbone file, then test the DeepSpeed folder, model_final.pt and the adapter-only
    file over the backbone: identical scores."""
    backbone = tmp_path / "backbone.pt"
    _, model = consolidated
    save_model_file(backbone, model.state_dict(), spec=model.spec, content="backbone")
    run = tmp_path / "run"
    train = [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config", TINY,
             *tiny_overrides(tiny_k400, run, "engine.max_steps=2", "engine.precision=fp32",
                             f"model.pretrained={backbone}")]
    result = subprocess.run(train, capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    folder = run / "checkpoints" / (run / "checkpoints" / "latest").read_text()
    scores = {}
    for name, checkpoint in (("engine", folder), ("final", run / "model_final.pt"),
                             ("adapters", run / "trainable_final.pt")):
        summary, probs, _ = _test_net(tiny_k400, tmp_path / name, f"--checkpoint={checkpoint}",
                                      f"model.pretrained={backbone}")
        scores[name] = probs["scores"]
    assert torch.allclose(scores["engine"], scores["final"]) and torch.equal(scores["final"], scores["adapters"])


def test_metrics_match_hand_computed_values():
    # 5 videos, 3 classes; labels 0 0 1 2 2.
    scores = torch.tensor([[0.7, 0.2, 0.1],   # right
                           [0.1, 0.6, 0.3],   # wrong: predicts 1, the label 0 ranks third
                           [0.2, 0.5, 0.3],   # right
                           [0.5, 0.4, 0.1],   # wrong: predicts 0, the label 2 ranks third
                           [0.1, 0.1, 0.8]])  # right
    labels = torch.tensor([0, 0, 1, 2, 2])
    pred = Predictions(torch.arange(5), scores, labels, torch.full((5,), 3))
    result = metrics(pred, 3)
    assert result["top1"] == pytest.approx(3 / 5)
    assert result["top5"] == pytest.approx(1.0)  # k clipped to the 3 classes
    # per class: class 0 1/2, class 1 1/1, class 2 1/2 -> mean 2/3
    assert result["mean_class_accuracy"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert result["confusion"].tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert accuracy(scores, labels, 2) == pytest.approx(3 / 5)  # both wrong ones rank their label third
    unlabelled = torch.tensor([0, 0, 1, 2, -1])  # a test split without labels is not counted
    assert accuracy(scores, unlabelled, 1) == pytest.approx(2 / 4)


def test_views_of_a_short_video(video_files):
    from video_st.config import load_config
    from video_st.data.annotations import VideoRecord
    from video_st.engine.build import eval_dataset

    cfg = load_config(TINY, ["data.num_frames=8", "data.stride=4"])
    dataset = eval_dataset(cfg, [VideoRecord(str(video_files["short"]), 0, "short")], temporal_views=5, spatial_views=3)
    item = dataset[0]  # 5 frames, clip span 29: every view repeats the last frame
    assert item["error"] is None and item["views"].shape == (15, 3, 8, 32, 32)


def test_a_hugging_face_videomae_folder_is_tested_directly(tiny_k400, tmp_path):
    """A checkpoint of another codebase goes through the model factory's converter: here a (randomly
    initialised) Hugging Face VideoMAE classifier saved with save_pretrained, at the test model's geometry."""
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    torch.manual_seed(0)
    config = VideoMAEConfig(num_frames=4, tubelet_size=2, image_size=32, patch_size=8, hidden_size=64,
                            num_hidden_layers=4, num_attention_heads=4, intermediate_size=256, num_labels=4)
    hf = VideoMAEForVideoClassification(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    summary, probs, _ = _test_net(tiny_k400, tmp_path / "out", f"--checkpoint={tmp_path / 'hf'}", "model.method=full",
                                  "model.class_token=false", "model.global_pool=avg",
                                  "test.spatial_views=1")
    assert summary["checkpoint_kind"] == "converted checkpoint" and summary["videos"] == 7
    # The first test video through Hugging Face's own model gives the same probabilities.
    from video_st.config import load_config
    from video_st.engine.build import eval_dataset, read_split

    cfg = load_config(TINY, tiny_overrides(tiny_k400, tmp_path, "test.spatial_views=1"))
    records, _ = read_split(cfg, "val", list(tiny_k400.classes))
    first = probs["index"][0].item()
    clip = eval_dataset(cfg, records, temporal_views=1, spatial_views=1)[first]["views"]  # (1, C, T, H, W)
    with torch.no_grad():
        expected = hf(pixel_values=clip.permute(0, 2, 1, 3, 4)).logits.softmax(-1)[0]
    assert torch.allclose(probs["scores"][0], expected, atol=1e-4)


def test_a_model_that_draws_at_random_tests_the_same_twice(tiny_k400, tmp_path):
    torch.manual_seed(3)
    model = create_model("vit_tiny_test", method="sparse_tuning", num_classes=4, score="random")
    path = tmp_path / "random.pt"
    save_model_file(path, model.state_dict(), spec=model.spec.with_classes(
        ["moving down", "moving left", "moving right", "moving up"]))
    (_, a, _), (_, b, _) = (_test_net(tiny_k400, tmp_path / name, f"--checkpoint={path}") for name in "ab")
    assert torch.equal(a["scores"], b["scores"])
    (_, c, _) = _test_net(tiny_k400, tmp_path / "c", f"--checkpoint={path}", "engine.seed=1")
    assert not torch.equal(a["scores"], c["scores"])  # another seed, other draws: the seed is what fixes them
