import pytest
import torch

from video_st.models.sparsify import KeepRateWarmup, expand_keep_rates, keep_count, plan_reduction


def test_keep_count_is_ceil_without_float_noise():
    assert keep_count(10, 0.7) == 7  # 0.7 * 10 = 7.000000000000001 in floats
    assert keep_count(784, 0.7) == 549
    assert keep_count(5, 1.0) == 5
    assert keep_count(3, 0.01) == 1
    with pytest.raises(ValueError, match="keep_rate"):
        keep_count(10, 0.0)


def test_fused_token_matches_hand_computation():
    # one [CLS] + 4 tokens of dim 2; scores pick tokens 3 and 1, tokens 0 and 2 are fused by their scores.
    x = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [4.0, 0.0]]])
    scores = torch.tensor([[0.1, 0.3, 0.2, 0.4]])
    plan = plan_reduction(scores, keep_rate=0.5, num_prefix=1, fuse="mean")
    out = plan.apply(x)
    assert plan.keep_idx.tolist() == [[1, 3]]  # original order, not score order
    fused = (0.1 * torch.tensor([1.0, 0.0]) + 0.2 * torch.tensor([2.0, 2.0])) / 0.3
    expected = torch.stack([x[0, 0], x[0, 2], x[0, 4], fused])[None]
    torch.testing.assert_close(out, expected)
    # the published variant: weighted sum without renormalisation
    out_sum = plan_reduction(scores, keep_rate=0.5, num_prefix=1, fuse="sum").apply(x)
    torch.testing.assert_close(out_sum[0, -1], 0.1 * torch.tensor([1.0, 0.0]) + 0.2 * torch.tensor([2.0, 2.0]))
    ids = plan.apply_ids(torch.arange(4)[None])
    assert ids.tolist() == [[1, 3, -1]]


def test_keep_rate_one_is_identity():
    x = torch.randn(3, 9, 5)
    plan = plan_reduction(torch.rand(3, 8), keep_rate=1.0, num_prefix=1)
    assert not plan.fuses
    assert torch.equal(plan.apply(x), x)


def test_per_sample_selection_differs():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.1, 0.9]])
    plan = plan_reduction(scores, keep_rate=0.3, num_prefix=0)  # ceil(0.9) = 1
    assert plan.keep_idx.tolist() == [[0], [2]]


def test_expand_keep_rates():
    assert expand_keep_rates(0.7, 3) == (0.7, 0.7, 0.7)
    assert expand_keep_rates([0.9, 0.8, 0.7], 3) == (0.9, 0.8, 0.7)
    with pytest.raises(ValueError, match="3 sparsification stages"):
        expand_keep_rates([0.9, 0.8], 3)


def test_warmup_schedule_moves_from_one_to_target():
    schedule = KeepRateWarmup(target=(0.7, 0.5), warmup_epochs=2)
    assert schedule(0) == (1.0, 1.0)
    assert schedule(1.0) == pytest.approx((0.85, 0.75))
    assert schedule(2) == (0.7, 0.5)
    assert schedule(10) == (0.7, 0.5)
    assert KeepRateWarmup((0.7,), 0)(0) == (0.7,)
