"""The selection oracle (video_st/bench/hard_oracle.py) and the orders it needs from the top-k step: a ranking
apart from the fusion weights (plan_reduction's ``rank``), the random choice (``score="random"``), the object's
tokens first; hand-built cases, then a tiny model on a small hard set."""

import math
from pathlib import Path

import pytest
import torch

from video_st import create_model
from video_st.bench.hard_oracle import (SELECTIONS, aggregate_oracle, oracle_scores, own_reduction, render_oracle,
                                        with_selection)
from video_st.bench.foreground import foreground_scores
from video_st.config import load_config
from video_st.data.masks import load_masks, token_masks
from video_st.engine.build import read_split
from video_st.engine.train import train
from video_st.models.sparsify import TopKFuse, plan_reduction

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml")


def test_rank_orders_the_kept_tokens_and_the_scores_stay_the_fusion_weights():
    scores = torch.tensor([[0.1, 0.4, 0.2, 0.3]])
    plan = plan_reduction(scores, keep_rate=0.5, num_prefix=1, rank=torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
    assert plan.keep_idx.tolist() == [[0, 1]] and sorted(plan.drop_idx.tolist()[0]) == [2, 3]
    weights = dict(zip(plan.drop_idx[0].tolist(), plan.drop_weight[0].tolist()))
    assert weights == pytest.approx({2: 0.4, 3: 0.6})  # 0.2 and 0.3 of their sum, not the rank's 2 and 1
    default = plan_reduction(scores, keep_rate=0.5, num_prefix=1)
    assert default.keep_idx.tolist() == [[1, 3]]  # no rank: the scores decide


def _model(method="sparse_tuning", **options):
    torch.manual_seed(3)
    return create_model("vit_tiny_test", method=method, num_frames=8, img_size=64, num_classes=4,
                        **options).eval()


def _kept(model, clip, prefer=None):
    with torch.no_grad():
        return model.forward_features(clip, return_token_ids=True, prefer=prefer)


def test_random_choice_keeps_the_count_draws_anew_and_is_seeded():
    model = _model(score="random")
    step = model.blocks[1].reducer
    assert isinstance(step, TopKFuse) and step.rows == "cls"  # fused by the [CLS] row's weights
    clip = torch.randn(2, 3, 8, 64, 64)
    torch.manual_seed(0)
    out_a, kept_a = _kept(model, clip)
    out_b, kept_b = _kept(model, clip)
    torch.manual_seed(0)
    out_c, kept_c = _kept(model, clip)
    assert torch.equal(out_a, out_c) and all(torch.equal(a, c) for a, c in zip(kept_a, kept_c))
    assert not torch.equal(kept_a[0], kept_b[0])
    assert [k.shape[1] for k in kept_a] == [math.ceil(0.7 * 256) + 1, math.ceil(0.7 * 181) + 1]  # + a fused one


def test_selections_replace_only_which_tokens_are_kept():
    model = _model()
    clip = torch.randn(2, 3, 8, 64, 64)
    own, own_kept = _kept(model, clip)
    # cls: the trained selection exactly; all: the model at keep rate 1
    cls, cls_kept = _kept(with_selection(model, "own", layers=[2, 3], keep_rate=0.7), clip)
    assert torch.equal(cls, own) and all(torch.equal(a, b) for a, b in zip(cls_kept, own_kept))
    mean_scored = _model(score="mean")  # own: the model's own scoring, here the mean query's
    assert torch.equal(_kept(with_selection(mean_scored, "own", layers=[2, 3], keep_rate=0.7), clip)[0],
                       _kept(mean_scored, clip)[0])
    dense = _model()
    dense.set_keep_rate(1.0)
    assert torch.allclose(_kept(with_selection(model, "all", layers=[2, 3], keep_rate=0.7), clip)[0],
                          _kept(dense, clip)[0], atol=1e-6)
    # object: the model's own top-k steps; the forward's `prefer` puts the object first (tested below)
    probe = with_selection(model, "object", layers=[2, 3], keep_rate=0.7)
    assert [(type(b.reducer), b.reducer.score) for b in probe.blocks if b.reducer.reduces] == [(TopKFuse, "cls")] * 2
    # a dense model gets the step where it is told (one keep rate per layer too); other reducers are refused
    assert own_reduction(model) == {"layers": [2, 3], "keep_rate": [0.7, 0.7]}
    assert own_reduction(_model("dense_adapter")) is None
    dense_adapter = with_selection(_model("dense_adapter"), "own", layers=[2, 3], keep_rate=[0.7, 0.5])
    assert dense_adapter.stage_names() == ["layer 2", "layer 3"] and dense_adapter.keep_rates == (0.7, 0.5)
    with pytest.raises(ValueError, match="top-k steps only"):
        with_selection(_model("tome"), "own", layers=[2, 3], keep_rate=0.7)


@pytest.mark.parametrize("score", ["cls", "random"])
def test_preferred_tokens_survive_every_stage_and_nothing_else_changes(score):
    model = _model(score=score)
    clip = torch.randn(2, 3, 8, 64, 64)
    torch.manual_seed(0)
    own, own_kept = _kept(model, clip)
    torch.manual_seed(0)
    none, none_kept = _kept(model, clip, prefer=torch.zeros(2, 8 // 2, 8, 8, dtype=torch.bool))  # (B, T', H', W')
    assert torch.equal(none, own) and all(torch.equal(a, b) for a, b in zip(none_kept, own_kept))
    foreground = torch.zeros(2, 256, dtype=torch.bool)
    # clip 0: tokens the own choice drops at layer 2; clip 1: ones it keeps at layer 2 and drops at layer 3
    foreground[0, sorted(set(range(256)) - set(own_kept[0][0].tolist()))[:20]] = True
    foreground[1, sorted(set(own_kept[0][1].tolist()) - set(own_kept[1][1].tolist()) - {-1})[:10]] = True
    torch.manual_seed(0)
    _, forced = _kept(model, clip, prefer=foreground)
    for stage in forced:
        for b in range(2):
            assert set(foreground[b].nonzero().flatten().tolist()) <= set(stage[b].tolist())
    assert [k.shape for k in forced] == [k.shape for k in own_kept]  # the same counts
    assert sorted(forced[0][0].tolist()) != sorted(own_kept[0][0].tolist())
    # the other reducers ignore it; a prefer of the wrong grid is refused
    tome = _model("tome")
    assert torch.equal(_kept(tome, clip, prefer=foreground)[0], _kept(tome, clip)[0])
    with pytest.raises(ValueError, match="prefer: \\(2, 100\\) for 2 clips of 256 tokens"):
        _kept(model, clip, prefer=torch.zeros(2, 100, dtype=torch.bool))


def test_aggregate_means_over_seeds_and_compares_with_the_cls_choice():
    def scores(method, cls, obj, rnd, full, layers=(2, 3)):
        return {"method": method, "layers": list(layers), "keep_rate": [0.7] * len(layers), "selections": {
            "own": {"top1_pct": cls, "fg1_recall": 0.4}, "object": {"top1_pct": obj, "fg1_recall": 1.0},
            "random": {"top1_pct": rnd, "fg1_recall": 0.7}, "all": {"top1_pct": full}}}

    rows = aggregate_oracle({
        0: {"sparse_tuning": scores("sparse_tuning", 50, 52, 46, 51)},
        1: {"sparse_tuning": scores("sparse_tuning", 44, 48, 42, 43), "evit": scores("evit", 40, 41, 39, 42),
            "layers=1+3": scores("sparse_tuning", 45, 45, 45, 47, layers=(1, 3))}})
    by = {(r["model"], r["selection"]): r for r in rows}
    assert [(r["model"], r["selection"]) for r in rows] == \
        [(m, s) for m in ("sparse_tuning", "evit", "layers=1+3") for s in SELECTIONS]
    obj = by["sparse_tuning", "object"]
    assert obj["seeds"] == 2 and obj["test_top1_pct"] == 50 and obj["vs_own_pct"] == 3
    assert obj["test_top1_pct_std"] == pytest.approx(math.sqrt(8)) and obj["fg1_recall"] == 1.0
    assert "fg1_recall" not in by["sparse_tuning", "all"] and by["evit", "all"]["vs_own_pct"] == 2
    assert by["evit", "own"]["seeds"] == 1 and "test_top1_pct_std" not in by["evit", "own"]
    assert by["layers=1+3", "all"]["method"] == "sparse_tuning" and by["layers=1+3", "all"]["layers"] == [1, 3]
    # the report: one line per model, mean +- std where there are two seeds
    table = [line for line in "\n".join(render_oracle(rows)).splitlines() if line.startswith("| ")]
    assert table[0] == "| model | layers | keep_rate | seeds | own | object | random | all | own_recall |"
    assert table[1] == "| sparse_tuning | 2+3 | 0.7/0.7 | 2 | 47.0 +- 4.2 | 50.0 +- 2.8 | 44.0 +- 2.8 | " \
                       "47.0 +- 5.7 | 0.400 |"
    assert table[3] == "| layers=1+3 | 1+3 | 0.7/0.7 | 1 | 45.0 | 45.0 | 45.0 | 47.0 | 0.400 |"


@pytest.fixture(scope="module")
def hard_cfg(hard_overrides):
    return load_config(TINY, hard_overrides)


def test_oracle_scores_on_real_clips_agree_with_the_models_own_test(hard_cfg):
    model = _model()
    result = oracle_scores(model, hard_cfg, layers=[2, 3], keep_rate=0.7, draws=2)
    assert list(result) == list(SELECTIONS)
    own = foreground_scores(model, hard_cfg, split="test")
    assert result["own"]["top1_pct"] == pytest.approx(100 * own.top1)
    assert result["own"]["fg1_recall"] == pytest.approx(own.stages[0].recall)
    assert result["object"]["fg1_recall"] == 1.0 and "fg1_recall" not in result["all"]
    assert 0 < result["random"]["fg1_recall"] < 1
    # seeded: the same model scores the same twice
    assert oracle_scores(model, hard_cfg, layers=[2, 3], keep_rate=0.7, draws=2) == result
    # a model trained with the random choice: its own selection is that choice, averaged over the same draws
    random_model = _model(score="random")
    drawn = oracle_scores(random_model, hard_cfg, layers=[2, 3], keep_rate=0.7, draws=2)
    assert drawn["own"] == drawn["random"]


def test_object_first_training_keeps_every_training_clips_object_tokens(hard_overrides, tmp_path, monkeypatch):
    calls = []  # per top-k step in a training forward: what it was told to prefer, its tokens before and after
    forward = TopKFuse.forward

    def spy(self, x, state, info):
        out, after = forward(self, x, state, info)
        if self.training:
            calls.append((state.prefer, state.ids, after.ids))
        return out, after

    monkeypatch.setattr(TopKFuse, "forward", spy)
    # no zoom, no flip: a training clip is 8 frames 2 apart from frame 0 or 1 of the 16, so its tokens must be
    # the token masks of those frames of one of the videos
    cfg = load_config(TINY, [*hard_overrides, "data.object_first=true", "data.scale=[1.0,1.0]", "data.hflip=none",
                             "optim.epochs=1", "data.batch_size=2", "engine.kind=ddp", f"output_dir={tmp_path}",
                             "log.progress=false", "log.tensorboard=false"])
    assert train(cfg) == 0
    assert len(calls) == 2 * 2  # 4 videos in batches of 2, two top-k steps each
    for prefer, before, after in calls:
        for b in range(prefer.shape[0]):
            wanted = set(prefer[b].nonzero().flatten().tolist()) & set(before[b].tolist())
            assert wanted and wanted <= set(after[b].tolist())  # kept, every one, at both stages
    told = [tuple(p.tolist()) for prefer, _, _ in calls[::2] for p in prefer]  # the first step's, per clip
    masks = load_masks(cfg.data.root, "train")
    records, _ = read_split(cfg, "train")
    candidates = {r.video_id: {tuple(token_masks(masks[r.video_id], patch=8, tubelet=2, size=64,
                                                 frame_indices=range(start, start + 16, 2)).reshape(-1).tolist())
                               for start in (0, 1)} for r in records}
    assert len(told) == len(records) and all(any(t in c for c in candidates.values()) for t in told)
    assert len({next(v for v, c in candidates.items() if t in c) for t in told}) == len(records)  # each video once
