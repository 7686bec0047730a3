"""Foreground scoring of token selection (video_st/bench/foreground.py), the mask -> token-grid mapping
(video_st/data/masks.py) and the object's outline in the token drawings (video_st/viz): hand-built cases with
known answers, then a random tiny model on a small hard set checked against an independent count."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from video_st import create_model
from video_st.bench.foreground import ForegroundMeter, foreground_scores
from video_st.config import load_config
from video_st.data.masks import (MasksError, clip_coverage, encode_masks, find_masks, load_masks, read_masks,
                                token_masks, view_token_masks)
from video_st.data.sampling import ClipSpec
from video_st.engine.build import eval_dataset, read_split
from video_st.models.spec import save_model_file
from video_st.synthetic.datasets import make_hard_style
from video_st.viz.draw import OUTLINE, outline, tile_origin
from video_st.viz.tokens import Geometry, kept_masks
from video_st.viz.visualize import visualize

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny_cpu.yaml")


# ------------------------------------------------------------------------------------ masks -> token grid


def test_token_masks_identity_geometry_fraction_and_frames():
    mask = np.zeros((4, 8, 8), dtype=bool)
    mask[1, 0:4, 0:4] = True  # token (0, 0, 0) fully in frame 1
    mask[2, 0:1, 4:8] = True  # one row of token (1, 0, 1) in frame 2: 4 of 32 pixels of its tube
    mask[3, 7, 7] = True  # a single pixel of token (1, 1, 1)
    kwargs = dict(patch=4, tubelet=2, frame_indices=[0, 1, 2, 3], size=8)
    # Token fraction = mean over the tubelet's frames and the patch: 16/32, 4/32, 1/32.
    expected = np.zeros((2, 2, 2), dtype=bool)
    expected[0, 0, 0] = True
    assert np.array_equal(token_masks(mask, **kwargs), expected)  # default: >= 0.25
    expected[1, 0, 1] = True
    assert np.array_equal(token_masks(mask, min_fraction=0.125, **kwargs), expected)
    expected[1, 1, 1] = True
    assert np.array_equal(token_masks(mask, min_fraction=0.0, **kwargs), expected)  # any pixel
    # The sampled frames decide: frames 2, 3 only -> one time step, token (0, 0, 1) at 4/32.
    picked = token_masks(mask, patch=4, tubelet=2, frame_indices=[2, 3], size=8, min_fraction=0.1)
    assert picked.shape == (1, 2, 2) and picked[0].tolist() == [[False, True], [False, False]]
    with pytest.raises(ValueError, match="tile"):
        token_masks(mask, patch=3, tubelet=2, frame_indices=[0, 1], size=8)


def test_token_masks_follow_the_short_side_resize_and_the_crops():
    """A 16 x 32 video whose object is its left half, resized to short side 8 (-> 8 x 16) and cropped 8 x 8:
    the centre crop (columns 4..11 of the resized frame) sees it in its left half, the left crop everywhere, the
    right crop nowhere."""
    mask = np.zeros((2, 16, 32), dtype=bool)
    mask[:, :, :16] = True
    kwargs = dict(patch=4, tubelet=2, frame_indices=[0, 1], size=8, short_side=8)
    centre = token_masks(mask, **kwargs)
    assert centre.tolist() == [[[True, False], [True, False]]]
    cover = clip_coverage(mask, frame_indices=[0, 1], size=8, short_side=8)
    assert cover.shape == (2, 8, 8) and np.allclose(cover[:, :, :3], 1) and np.allclose(cover[:, :, 5:], 0)
    three = [token_masks(mask, num_crops=3, spatial_idx=s, **kwargs) for s in range(3)]
    assert three[0].all() and not three[2].any() and np.array_equal(three[1], centre)
    # All views of a clip spec, temporal-major, crops inside (the test item's order).
    clip = ClipSpec(sampling="dense", num_frames=2, stride=1, num_temporal_views=1, num_spatial_views=3)
    views = view_token_masks(mask, clip, patch=4, tubelet=2, size=8, short_side=8)
    assert views.shape == (3, 1, 2, 2) and all(np.array_equal(v, t) for v, t in zip(views, three, strict=True))


def test_masks_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    masks = {"a_000001_000011": rng.random((3, 6, 10)) > 0.5, "b_000002_000012": np.zeros((2, 6, 10), bool)}
    path = tmp_path / "annotations" / "val_masks.npz"
    path.parent.mkdir()
    path.write_bytes(encode_masks(masks))
    assert encode_masks(masks) == path.read_bytes()  # deterministic
    back = load_masks(tmp_path, "val")
    assert set(back) == set(masks) and all(np.array_equal(back[k], masks[k]) for k in masks)
    (tmp_path / "val").mkdir()
    assert find_masks(tmp_path / "val" / "a_000001_000011.mp4") == str(path)
    assert find_masks(tmp_path / "train" / "x.mp4") is None
    with pytest.raises(ValueError, match="frame size"):
        encode_masks({"a": np.zeros((1, 2, 2), bool), "b": np.zeros((1, 3, 2), bool)})


# ------------------------------------------------------------------------------------------- the metrics


def test_meter_counts_a_hand_built_case():
    # Grid of 4 tokens, two clips. Foreground: clip A token 0; clip B tokens 0 and 1.
    fg = np.array([[1, 0, 0, 0], [1, 1, 0, 0]], dtype=bool).reshape(2, 1, 2, 2)
    # Stage 1 keeps 2 grid tokens per clip (and a fused token, -1); stage 2 keeps 1 (padding -1 in clip A).
    stage1 = torch.tensor([[0, 2, -1], [0, 1, -1]])
    stage2 = torch.tensor([[3, -1], [1, -1]])
    meter = ForegroundMeter()
    meter.update([stage1, stage2], fg)
    s1, s2 = meter.result(["layer 2", "layer 3"])
    assert (s1.tokens, s1.foreground, s1.kept, s1.kept_foreground) == (8, 3, 4, 3)
    assert s1.recall == 1.0 and s1.precision == 0.75
    # Random choice of 2 of 4: A expects 2 * 1/4, B 2 * 2/4 foreground tokens -> 1.5 of 3, 1.5 of 4 kept.
    assert math.isclose(s1.random_recall, 0.5) and math.isclose(s1.random_precision, 0.375)
    assert math.isclose(s1.lift, 2.0) and s1.keep_share == 0.5
    assert (s2.kept, s2.kept_foreground) == (2, 1) and s2.recall == 1 / 3 and s2.precision == 0.5
    assert math.isclose(s2.random_recall, (0.25 + 0.5) / 3) and math.isclose(s2.random_precision, 0.75 / 2)
    # A second batch adds up (micro average over clips).
    meter.update([stage1[:1], stage2[:1]], fg[:1])
    again = meter.result(["layer 2", "layer 3"])[0]
    assert (again.clips, again.foreground, again.kept_foreground) == (3, 4, 4)


def test_random_baseline_is_the_expectation_of_a_random_choice():
    rng = np.random.default_rng(0)
    fg = rng.random((6, 2, 4, 4)) < 0.2
    counts = [3, 9, 16, 1, 7, 12]  # a different keep count per clip (as AS-ViT / DyT keep)
    width = max(counts)
    ids = torch.full((6, width), -1)
    for b, k in enumerate(counts):
        ids[b, :k] = torch.from_numpy(rng.permutation(32)[:k])
    meter = ForegroundMeter()
    meter.update([ids], fg)
    stage = meter.result(["s"])[0]
    draws = []
    for _ in range(4000):  # the same counts drawn at random: the sampled mean approaches the analytic value
        hits = sum(fg[b].reshape(-1)[rng.permutation(32)[:k]].sum() for b, k in enumerate(counts))
        draws.append(hits)
    assert math.isclose(np.mean(draws), stage.random_kept_foreground, rel_tol=0.03)


# ---------------------------------------------------------------------------- a model on a small hard set


@pytest.fixture(scope="module")
def hard_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("hard")
    return make_hard_style(root / "data", num_classes=4, train_per_class=1, val_per_class=2, num_frames=16, seed=4)


def _cfg(summary, *extra):
    return load_config(TINY, [f"data.root={summary.root}", f"data.train={summary.annotation_files['train']}",
                              f"data.val={summary.annotation_files['val']}", "data.size=64", "data.short_side=64",
                              "data.num_frames=8", "data.stride=2", "model.num_classes=4", "model.pretrained=none",
                              "data.num_workers=0", "test.spatial_views=1", *extra])


def _model(method="sparse_tuning"):
    torch.manual_seed(1)
    return create_model("vit_tiny_test", method=method, num_frames=8, img_size=64, num_classes=4).eval()


def test_foreground_scores_agree_with_an_independent_count(hard_set):
    cfg = _cfg(hard_set)
    model = _model()
    result = foreground_scores(model, cfg, batch_size=3)
    assert result.videos == result.clips == 8 and not result.failed
    assert [s.stage for s in result.stages] == model.stage_names()
    # The same numbers, counted here from the dataset's clips, the model's ids and the masks.
    records, _ = read_split(cfg, "val")
    dataset = eval_dataset(cfg, records)
    masks = load_masks(hard_set.root, "val")
    geo = Geometry(grid=(4, 8, 8), tubelet=2, patch=8, img_size=64)
    kept_fg, fg_total, kept_total, right = np.zeros(2), 0, np.zeros(2), 0
    for index in range(len(dataset)):
        item = dataset[index]
        with torch.no_grad():
            _, kept = model.forward_features(item["views"], return_token_ids=True)
            right += int(model(item["views"]).softmax(-1).mean(0).argmax()) == item["label"]
        fg = token_masks(masks[item["video_id"]], patch=8, tubelet=2, frame_indices=list(range(0, 16, 2)), size=64)
        grid = kept_masks([k[0] for k in kept], geo)
        kept_fg += [(g & fg).sum() for g in grid]
        kept_total += [g.sum() for g in grid]
        fg_total += fg.sum()
    for s, stage in enumerate(result.stages):
        assert (stage.kept_foreground, stage.kept, stage.foreground) == (kept_fg[s], kept_total[s], fg_total)
        # One keep count for every clip: random recall is the keep share, random precision the foreground share.
        assert math.isclose(stage.random_recall, stage.keep_share)
        assert math.isclose(stage.random_precision, stage.foreground_share)
    assert 0.01 < result.stages[0].foreground_share < 0.2
    assert result.top1 == right / len(dataset)  # the model's accuracy on the same views, per video
    assert "recall" in result.describe() and result.to_json()["stages"][0]["recall"] == result.stages[0].recall


def test_dense_models_have_no_stages_and_missing_masks_are_an_error(hard_set, tmp_path):
    result = foreground_scores(_model("full"), _cfg(hard_set))
    assert result.stages == () and "every token is kept" in result.describe()
    with pytest.raises(MasksError, match="no such masks file"):
        foreground_scores(_model(), _cfg(hard_set), masks_file=str(tmp_path / "none.npz"))
    partial = tmp_path / "partial.npz"
    some = read_masks(hard_set.mask_files["val"])
    partial.write_bytes(encode_masks(dict(list(some.items())[:3])))
    with pytest.raises(MasksError, match="no mask for 5 of 8"):
        foreground_scores(_model(), _cfg(hard_set), masks_file=str(partial))


# ------------------------------------------------------------------------------------------- the outline


def test_outline_draws_around_the_object_and_leaves_it_alone():
    frame = np.full((6, 6, 3), 10, dtype=np.uint8)
    mask = np.zeros((6, 6), dtype=bool)
    mask[2:4, 2:4] = True
    out = outline(frame, mask)
    ring = np.zeros((6, 6), dtype=bool)
    ring[1, 2:4] = ring[4, 2:4] = ring[2:4, 1] = ring[2:4, 4] = True
    assert (out[ring] == OUTLINE).all() and (out[~ring] == 10).all()


def test_visualize_outlines_the_object_found_next_to_the_annotations(hard_set, tmp_path):
    model = _model()
    path = tmp_path / "model_final.pt"
    save_model_file(path, model.state_dict(), spec=model.spec.with_classes(["a", "b", "c", "d"]))
    records, _ = read_split(_cfg(hard_set), "val")
    video = records[0].path
    cfg = _cfg(hard_set, f"output_dir={tmp_path}", "test.temporal_views=1")
    drawn = visualize(cfg, video, str(tmp_path / "vis"), checkpoint=str(path), scale=1)
    assert drawn.masks == hard_set.mask_files["val"] and "object outlined" in drawn.report()
    overview = np.asarray(Image.open(tmp_path / "vis" / "overview.png").convert("RGB"))
    # Input row, frame 0 (the clip's first frame is video frame 0): the ring around the object is magenta.
    x0, y0 = tile_origin(0, 0, 64, 64, True)
    tile = overview[y0:y0 + 64, x0:x0 + 64]
    cover = clip_coverage(load_masks(hard_set.root, "val")[records[0].video_id], frame_indices=[0], size=64)[0] >= 0.5
    expected = outline(np.zeros((64, 64, 3), np.uint8), cover)
    ring = (expected == OUTLINE).all(-1)
    assert ring.any() and (tile[ring] == OUTLINE).all()
    assert not (tile[~ring] == OUTLINE).all(-1).any()
    # The same video elsewhere (no masks beside it): nothing is outlined.
    lone = tmp_path / "lone" / "val" / Path(video).name
    lone.parent.mkdir(parents=True)
    lone.write_bytes(Path(video).read_bytes())
    plain = visualize(cfg, str(lone), str(tmp_path / "plain"), checkpoint=str(path), scale=1)
    assert plain.masks is None and "outlined" not in plain.report()
    tile = np.asarray(Image.open(tmp_path / "plain" / "overview.png").convert("RGB"))[y0:y0 + 64, x0:x0 + 64]
    assert not (tile == OUTLINE).all(-1).any()
