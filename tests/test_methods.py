"""Adapter, VPT, DyT (+ MoE adapter), AS-ViT, EViT and ToMe: what each trains, that gradients reach exactly that,
that with the reduction off each equals its backbone, that reducing costs fewer FLOPs, and that DyT's and AS-ViT's
inference paths compute only the tokens they keep (FLOPs and outputs against the masked path on the same
decisions). ViT-B trainable counts against the published figures."""

import pytest
import torch

from video_st import create_model
from video_st.models.adapters import MoEAdapter
from video_st.models.calibrate import calibrate
from video_st.models.flops import count_flops

from .conftest import tiny_clip

NEW = ["adapter", "vpt", "dyt", "asvit", "evit", "tome"]
REDUCE = {"sparse_layers": (2, 3), "keep_rate": 0.5}
# AS-ViT's keep_rate is a FLOPs budget for the whole model: 0.5 of the tiny model's FLOPs leaves its last stage
# about no token (its first layer and a half cost 0.4 alone).
ASVIT_REDUCE = {"sparse_layers": (2, 3), "keep_rate": 0.7}


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _names(model, *markers):
    return {n for n, _ in model.named_parameters()
            if n.startswith("head.") or n == "pos_embed_temporal" or any(m in f".{n}" for m in markers)}


def _same_backbone(method, **kwargs):
    torch.manual_seed(0)
    full = create_model("vit_tiny_test", method="full").eval()
    model = create_model("vit_tiny_test", method=method, **kwargs).eval()
    missing = model.load_state_dict(full.state_dict(), strict=False).missing_keys
    assert all(any(m in f".{k}" for m in (".adapter.", ".dispatcher.", ".reducer.", "prompts")) for k in missing)
    return full, model


def _randomise_new_parts(model, std=0.05):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(m in f".{name}" for m in (".adapter.", ".dispatcher.gate.weight")) and p.dim() >= 1:
                p.add_(torch.randn_like(p) * std)


def test_trainable_sets():
    sets = {
        "adapter": _names(create_model("vit_tiny_test", method="adapter"), ".adapter."),
        "vpt": {"prompts.weight"} | _names(create_model("vit_tiny_test", method="vpt")),
        "dyt": _names(create_model("vit_tiny_test", method="dyt"), ".adapter.", ".dispatcher."),
        "asvit": _names(create_model("vit_tiny_test", method="asvit"), ".adapter.", ".reducer."),
        "evit": {"head.weight", "head.bias"},
        "tome": {"head.weight", "head.bias"},
    }
    for method, expected in sets.items():
        model = create_model("vit_tiny_test", method=method)
        assert _trainable(model) == expected, method
    asvit = create_model("vit_tiny_test", method="asvit", **REDUCE)
    assert {n for n in _trainable(asvit) if ".reducer." in n} == {"blocks.1.reducer.threshold", "blocks.2.reducer.threshold"}
    dyt = create_model("vit_tiny_test", method="dyt")
    assert sum(".dispatcher." in n for n in _trainable(dyt)) == 2 * len(dyt.blocks)  # gate weight + bias per layer


@pytest.mark.parametrize("method", NEW)
def test_gradients_reach_exactly_the_trainable_set(method):
    model = create_model("vit_tiny_test", method=method, **(REDUCE if method in ("asvit", "evit", "tome") else {}))
    _randomise_new_parts(model)
    if method == "asvit":  # AS-ViT's straight-through sigmoid (tau 1e-4) only passes a gradient to a threshold
        calibrate(model, tiny_clip())  # from tokens scoring within about 1e-3 of it: start the thresholds there
    model.train()
    logits, terms = model(tiny_clip(), return_terms=True)
    loss = logits.square().sum() + sum(terms.losses.values())
    loss.backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got == _trainable(model)


@pytest.mark.parametrize("method", ["adapter", "dyt", "asvit", "evit", "tome"])
def test_with_the_reduction_off_each_equals_its_backbone(method):
    full, model = _same_backbone(method, **(REDUCE if method in ("asvit", "evit", "tome") else {}))
    clip = tiny_clip()
    if method in ("evit", "tome"):
        model.set_keep_rate(1.0)
    elif method == "asvit":
        for block in model.reducing_blocks:
            block.reducer.threshold.data.fill_(-1e4)  # below every score: nothing is pruned
    if method == "dyt":  # the full-token pass: every token runs the MLP
        logits = model.forward_head(model.forward_features(clip, full_tokens=True))
    else:
        logits = model(clip)
    torch.testing.assert_close(logits, full(clip), rtol=1e-5, atol=1e-5)  # fresh adapters add zero


def test_vpt_prompts_change_attention_but_not_the_output_tokens():
    full, vpt = _same_backbone("vpt", num_prompts=3)
    clip = tiny_clip()
    feats = vpt.forward_features(clip)
    assert feats.shape == full.forward_features(clip).shape  # prompts leave with the last layer
    assert not torch.allclose(vpt(clip), full(clip), atol=1e-4)
    with torch.no_grad():
        vpt.prompts.weight.zero_()
        vpt.prompts.weight[1, 0, 0] = 50.0  # layer 2's prompt replaces layer 1's: only it reaches layers 2 and later
        first = vpt(clip)
        vpt.prompts.weight[0].normal_()  # layer 1's prompts only act in layer 1
        assert not torch.allclose(vpt(clip), first)


@pytest.mark.parametrize("method", ["evit", "tome", "asvit", "dyt"])
def test_reducing_costs_fewer_flops_than_dense(method):
    full, model = _same_backbone(method, **(REDUCE if method != "dyt" else {}))
    clip = tiny_clip()
    if model.input_dependent:
        calibrate(model, clip)
    dense = count_flops(full, inputs=clip)
    reduced = count_flops(model, inputs=clip)
    assert reduced < 0.95 * dense, (method, reduced, dense)


def test_tome_merges_to_the_planned_count_with_sizes_and_ids():
    model = create_model("vit_tiny_test", method="tome", **REDUCE).eval()
    feats, kept = model.forward_features(tiny_clip(), return_token_ids=True)
    assert [k.shape[1] for k in kept] == [16, 8]  # 32 -> ceil(.5 * 32); 16 -> ceil(.5 * 16)
    assert feats.shape[1] == 1 + 8
    for ids in kept:
        assert (ids >= 0).all() and all(len(set(row.tolist())) == len(row) for row in ids)


def test_tome_merge_is_a_size_weighted_average():
    from video_st.models.sparsify import plan_merge

    # 0 ~ 1 (cosine 0.995) is the closer pair than 2 ~ 3 (0.96): one merge takes token 0 into token 1.
    metric = torch.tensor([[[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.3, 1.0]]])
    plan = plan_merge(metric, torch.tensor([[1.0, 3.0, 1.0, 1.0]]), keep_rate=0.75, num_prefix=0)
    x = torch.tensor([[[0.0], [4.0], [10.0], [20.0]]])
    assert plan.src_idx.tolist() == [[0]] and plan.dst_idx.tolist() == [[1]]
    out = plan.apply(x)  # token 0 (size 1) into token 1 (size 3): (0 + 3 * 4) / 4
    assert out.flatten().tolist() == [3.0, 10.0, 20.0] and plan.new_sizes.tolist() == [[4.0, 1.0, 1.0]]


def test_dyt_inference_computes_only_the_active_tokens():
    model = create_model("vit_tiny_test", method="dyt").eval()
    _randomise_new_parts(model, std=0.5)
    clip = tiny_clip()[:1]
    calibrate(model, clip)
    dim = model.embed_dim
    model.set_dispatch_mode("mask")
    masked, (_, kept_mask) = model(clip), model.forward_features(clip, return_token_ids=True)
    flops_mask = count_flops(model, inputs=clip, by_module=True)
    model.set_dispatch_mode(None)
    skipped, (_, kept) = model(clip), model.forward_features(clip, return_token_ids=True)
    flops_skip = count_flops(model, inputs=clip, by_module=True)
    torch.testing.assert_close(skipped, masked, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(kept, kept_mask, strict=True))
    tokens = 1 + model.patch_embed.num_patches
    mlp_per_token = 2 * dim * 4 * dim / 1e9  # fc1 + fc2 multiply-adds
    for layer, ids in enumerate(kept):
        active = 1 + int((ids >= 0).sum())  # [CLS] always runs
        assert 0 < active - 1 < tokens - 1  # the gate really splits the tokens
        assert flops_skip[f"blocks.{layer}.mlp"] == pytest.approx(active * mlp_per_token, rel=1e-6)
        assert flops_mask[f"blocks.{layer}.mlp"] == pytest.approx(tokens * mlp_per_token, rel=1e-6)


def test_asvit_inference_prunes_each_sample_on_its_own_batched():
    model = create_model("vit_tiny_test", method="asvit", **ASVIT_REDUCE).eval()
    _randomise_new_parts(model)
    clips = tiny_clip()  # two different clips: different kept counts, one batch with padding
    calibrate(model, clips)
    model.set_dispatch_mode("mask")
    masked = model(clips)
    _, kept_mask = model.forward_features(clips, return_token_ids=True)
    model.set_dispatch_mode(None)
    pruned = model(clips)
    _, kept = model.forward_features(clips, return_token_ids=True)
    torch.testing.assert_close(pruned, masked, rtol=1e-4, atol=1e-5)
    for ids, ids_mask in zip(kept, kept_mask, strict=True):
        for row, row_mask in zip(ids, ids_mask, strict=True):
            assert row[row >= 0].tolist() == row_mask[row_mask >= 0].tolist()  # same tokens, in grid order
    # One sample alone: nothing is padded and each later block computes exactly its kept tokens.
    one = clips[:1]
    _, kept_one = model.forward_features(one, return_token_ids=True)
    flops = count_flops(model, inputs=one, by_module=True)
    dim, n = model.embed_dim, model.patch_embed.num_patches
    counts = [n] + [int((k >= 0).sum()) for k in kept_one]
    assert counts[1] < n and counts[2] <= counts[1]
    stage_of_layer = [0, 1, 2, 2]  # layers 2 and 3 prune before their MLP
    for layer, stage in enumerate(stage_of_layer):
        assert flops[f"blocks.{layer}.mlp"] == pytest.approx((1 + counts[stage]) * 8 * dim * dim / 1e9, rel=1e-6)


def test_asvit_straight_through_mask_trains_the_thresholds_toward_the_budget():
    model = create_model("vit_tiny_test", method="asvit", **ASVIT_REDUCE)
    clip = tiny_clip()
    calibrate(model, clip)  # thresholds among the scores: the tau = 1e-4 sigmoid has a gradient there only
    model.train()
    _, terms = model(clip, return_terms=True)
    losses = terms.losses
    assert set(losses) == {"budget"} and terms.stats["budget_flops_ratio"] > 0.5
    losses["budget"].backward()
    grads = [b.reducer.threshold.grad for b in model.reducing_blocks]
    assert all(g is not None and g != 0 for g in grads)


def test_dyt_self_distillation_adds_the_full_token_pass():
    model = create_model("vit_tiny_test", method="dyt", distill_weight=1.0).train()
    labels = torch.tensor([0, 1])
    logits, terms = model(tiny_clip(), return_terms=True)
    losses = terms.with_task(lambda s: torch.nn.functional.cross_entropy(s, labels))
    assert set(losses) == {"activation", "full_token", "distill"}
    # distill_weight x KL(teacher || student) with the teacher detached, by hand:
    p_teacher = terms.teacher.detach().softmax(-1)
    kl = (p_teacher * (p_teacher.log() - logits.log_softmax(-1))).sum(-1).mean()
    torch.testing.assert_close(losses["distill"], kl, rtol=1e-5, atol=1e-6)
    assert losses["distill"] > 0  # the dynamic pass skips MLPs the full-token pass runs
    torch.testing.assert_close(losses["full_token"], torch.nn.functional.cross_entropy(terms.teacher, labels))
    model.eval()
    assert model(tiny_clip(), return_terms=True)[1].teacher is None  # inference runs the dynamic pass only


def test_moe_adapter_mixes_expert_weights_per_sample():
    adapter = MoEAdapter(dim=16, bottleneck=4, experts=3, scale=0.5)
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_()
    x = torch.randn(2, 5, 16)
    gate = adapter.router(x.mean(1)).softmax(-1)
    for b in range(2):  # sample b runs one adapter whose weights are the gate-weighted sum of the experts'
        down = sum(gate[b, e] * adapter.down_weight[e] for e in range(3))
        down_b = sum(gate[b, e] * adapter.down_bias[e] for e in range(3))
        up = sum(gate[b, e] * adapter.up_weight[e] for e in range(3))
        up_b = sum(gate[b, e] * adapter.up_bias[e] for e in range(3))
        expected = 0.5 * (torch.relu(x[b] @ down.T + down_b) @ up.T + up_b)
        torch.testing.assert_close(adapter.delta(x)[b], expected, rtol=1e-5, atol=1e-5)


def test_vit_b_trainable_counts_match_the_published_figures():
    # Sparse-Tuning's Table 2 (video, ViT-B/16): Adapter 1.19 M, VPT 0.07 M, DyT 1.19 M, DyT with the MoE adapter
    # 4.80 M (without head; plus here the 3 K temporal table). The DyT figures leave out the 12 x 769 dispatcher
    # parameters (9.2 K): the adapters alone give the published 1.19 M.
    def count(method, **kwargs):
        model = create_model("vit_base_patch16", method=method, num_classes=400, **kwargs)
        extra = model.head.weight.numel() + model.head.bias.numel() + model.pos_embed_temporal.numel()
        return sum(p.numel() for p in model.parameters() if p.requires_grad) - extra

    dispatchers = 12 * (768 + 1)
    assert count("adapter") == 1_189_632  # 1.19 M
    assert count("vpt") == 73_728  # 0.07 M
    assert count("dyt") - dispatchers == 1_189_632
    moe = count("dyt", adapter="moe") - dispatchers
    assert moe == 4 * 1_189_632 + 12 * (768 * 4 + 4)  # 4.80 M
    assert count("asvit") == 1_189_632 + 3  # AdaptFormer's adapters + one threshold per pruning stage


def test_every_method_starts_from_a_saved_backbone(tmp_path):
    from video_st import list_methods
    from video_st.models.spec import save_model_file

    backbone = create_model("vit_tiny_test", method="full", num_classes=0)
    path = tmp_path / "backbone.pt"
    save_model_file(path, backbone.state_dict(), spec=backbone.spec, content="backbone")
    for method in list_methods():  # the new parts (prompts, gates, thresholds, adapters) start from their init
        model = create_model("vit_tiny_test", method=method, pretrained=path, num_classes=4)
        torch.testing.assert_close(model.blocks[0].attn.qkv.weight, backbone.blocks[0].attn.qkv.weight)
