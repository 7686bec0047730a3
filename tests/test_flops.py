"""FLOP counts reproduce the figures papers quote (fvcore convention), and Sparse-Tuning's saving."""

import pytest

from video_st import create_model
from video_st.models.flops import count_flops


@pytest.mark.slow
def test_vit_b16_image_is_17_58_gflops():
    model = create_model("vit_base_patch16", num_frames=1, tubelet_size=1, num_classes=1000)
    assert count_flops(model, (1, 3, 1, 224, 224)) == pytest.approx(17.583, abs=0.001)


@pytest.mark.slow
def test_dense_tube_vit_b_is_78_9_gflops_and_sparse_tuning_at_most_0_66():
    geometry = dict(num_frames=8, tubelet_size=2, num_classes=400)
    # VideoMAE's layout: 784 tokens, no [CLS], mean pooling -> 78.916 as FACTS.md measured.
    videomae = create_model("vit_base_patch16", class_token=False, global_pool="avg", pos_embed="sincos", **geometry)
    assert count_flops(videomae, (1, 3, 8, 224, 224)) == pytest.approx(78.916, abs=0.01)
    dense = count_flops(create_model("vit_base_patch16", **geometry), (1, 3, 8, 224, 224))  # + [CLS]: 785 tokens
    sparse = count_flops(create_model("vit_base_patch16", method="sparse_tuning", **geometry), (1, 3, 8, 224, 224))
    assert 78.9 < dense < 79.1
    assert sparse / dense <= 0.66


def test_flops_scale_with_kept_tokens():
    model = create_model("vit_tiny_test", method="sparse_tuning", sparse_layers=(2,), keep_rate=1.0)
    full = count_flops(model, (2, 3, 4, 32, 32))
    model.set_keep_rate(0.25)
    assert count_flops(model, (2, 3, 4, 32, 32)) < 0.75 * full
