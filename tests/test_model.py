import pytest
import torch

from video_st import KeepRateWarmup, create_model, list_methods, list_models, load_trainable_state_dict, trainable_state_dict
from video_st.models.adapters import DenseAdapter, ParallelAdapter
from video_st.models.sparsify import TokenState

from .conftest import assert_outputs_and_grads_close, tiny_clip

SPARSE = dict(sparse_layers=(2, 3), keep_rate=0.5)


def _randomise_adapters(model):
    # Fresh adapters are zero (the model equals its backbone); tests that need them to matter perturb them.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (DenseAdapter, ParallelAdapter)):
                module.up.weight.normal_(std=0.2)
                module.up.bias.normal_(std=0.2)


def _with_same_backbone(method, source, **kwargs):
    model = create_model("vit_tiny_test", method=method, **kwargs)
    model.load_state_dict(source.state_dict(), strict=False)
    return model.eval()


def test_registry():
    assert {"vit_small_patch16", "vit_base_patch16", "vit_large_patch16", "vit_tiny_test"} <= set(list_models())
    assert {"full", "linear", "adaptformer", "dense_adapter", "sparse_tuning"} <= set(list_methods())


@pytest.mark.parametrize("method", ["full", "linear", "adaptformer", "dense_adapter", "sparse_tuning"])
def test_fresh_model_equals_its_backbone_and_shapes(method):
    backbone = create_model("vit_tiny_test").eval()
    model = _with_same_backbone(method, backbone, **(SPARSE | {"keep_rate": 1.0} if method == "sparse_tuning" else {}))
    x = tiny_clip()
    with torch.no_grad():
        assert model(x).shape == (2, 10)
        torch.testing.assert_close(model(x), backbone(x), rtol=0, atol=1e-6)


def test_sparse_keep_rate_one_equals_dense_adapter_model():
    dense = create_model("vit_tiny_test", method="dense_adapter")
    _randomise_adapters(dense)
    sparse = _with_same_backbone("sparse_tuning", dense, sparse_layers=(1, 2, 3), keep_rate=1.0)
    sparse.load_state_dict(dense.state_dict())
    x = tiny_clip()
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), dense.eval()(x), rtol=0, atol=1e-6)
        sparse.set_keep_rate(0.5)
        assert (sparse(x) - dense(x)).abs().max() > 1e-4  # and the reduction really changes the result


@pytest.mark.parametrize("score", ["cls", "mean"])
def test_kept_token_ids_follow_the_scoring_query(score):
    # score="cls": the [CLS] query's attention row (the paper); "mean": the mean query's (the [CLS] token stays).
    model = create_model("vit_tiny_test", method="sparse_tuning", score=score, **SPARSE).eval()
    x = tiny_clip()
    feats, kept = model.forward_features(x, return_token_ids=True)
    n = model.patch_embed.num_patches  # 32
    assert [k.shape[1] for k in kept] == [16 + 1, 9 + 1]  # ceil(.5 * 32) + fused, ceil(.5 * 17) + fused
    assert feats.shape[1] == 1 + 10
    for ids in kept:
        real = ids[ids >= 0]
        assert real.max() < n and (ids == -1).any()
    # Stage 1 keeps the top tokens of layer 2's attention row of the scoring query: recompute it by hand.
    with torch.no_grad():
        h = model._pos_embed(model.patch_embed(x))
        h, _ = model.blocks[0](h, TokenState(ids=torch.arange(n).expand(2, -1)))
        attn = model.blocks[1].attn
        q, k, _ = attn.qkv(model.blocks[1].norm1(h)).reshape(2, -1, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        query = q[:, :, :1] if score == "cls" else q.mean(dim=2, keepdim=True)
        row = ((query @ k.transpose(-2, -1)) * attn.scale).softmax(-1).mean(1)[:, 0, 1:]
        other = q.mean(dim=2, keepdim=True) if score == "cls" else q[:, :, :1]
        other_row = ((other @ k.transpose(-2, -1)) * attn.scale).softmax(-1).mean(1)[:, 0, 1:]
    expected = row.topk(16, dim=1).indices.sort(dim=1).values
    assert torch.equal(kept[0][:, :16], expected)
    assert not torch.equal(other_row.topk(16, dim=1).indices.sort(dim=1).values, expected)  # the query matters


def test_score_option_is_checked():
    with pytest.raises(ValueError, match="score must be one of"):
        create_model("vit_tiny_test", method="sparse_tuning", score="max", **SPARSE)
    with pytest.raises(ValueError, match="has no option 'score'"):
        create_model("vit_tiny_test", method="tome", score="mean", **SPARSE)


def test_keep_rate_schedule_changes_token_count():
    model = create_model("vit_tiny_test", method="sparse_tuning", **SPARSE).eval()
    schedule = KeepRateWarmup(target=(0.5, 0.5), warmup_epochs=2)
    counts = []
    for epoch in (0, 1, 2):
        model.set_keep_rate(schedule(epoch))
        with torch.no_grad():
            counts.append(model.forward_features(tiny_clip()).shape[1])
    # rate 1: all 32 tokens; 0.75: 24 + fused = 25, then ceil(.75 * 25) = 19 + fused; 0.5: 16 + 1, then 9 + 1
    assert counts == [1 + 32, 1 + 19 + 1, 1 + 9 + 1]
    assert model.keep_rates == (0.5, 0.5)


@pytest.mark.parametrize("method", ["full", "linear", "adaptformer", "dense_adapter", "sparse_tuning"])
def test_every_trainable_parameter_gets_a_gradient(method):
    model = create_model("vit_tiny_test", method=method, **(SPARSE if method == "sparse_tuning" else {}))
    _randomise_adapters(model)
    model(tiny_clip()).logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    if method in ("adaptformer", "dense_adapter", "sparse_tuning"):
        assert all(".adapter." not in f".{n}" for n in frozen)
        assert any(n.startswith("blocks.0.attn") for n in frozen)


def test_dense_adapter_inputs_by_position():
    model = create_model("vit_tiny_test", method="dense_adapter")
    assert [b.adapter.num_inputs for b in model.blocks] == [1, 2, 3, 3]
    vit_b = create_model("vit_base_patch16", method="sparse_tuning")
    adapter_params = sum(p.numel() for n, p in vit_b.named_parameters() if ".adapter." in f".{n}")
    assert abs(adapter_params / 1e6 - 1.10) < 0.03  # the paper: 1.10 M for ViT-B, bottleneck 32
    assert [i + 1 for i, b in enumerate(vit_b.blocks) if b.reducer.reduces] == [4, 7, 10]


def test_gradient_checkpointing_gives_same_output_and_grads():
    model = create_model("vit_tiny_test", method="sparse_tuning", drop_path_rate=0.1, **SPARSE)
    _randomise_adapters(model)
    x = tiny_clip()

    def run(ckpt):
        model.zero_grad()
        model.set_grad_checkpointing(ckpt)
        torch.manual_seed(1)
        out = model.train()(x)
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    out_a, grads_a = run(False)
    out_b, grads_b = run(True)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=1e-6)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_videomae_style_model_without_cls_sparsifies_by_mean_query():
    model = create_model(
        "vit_tiny_test", method="sparse_tuning", class_token=False, global_pool="avg", pos_embed="sincos", **SPARSE
    ).eval()
    feats, kept = model.forward_features(tiny_clip(), return_token_ids=True)
    assert feats.shape[1] == 10 and kept[0].shape[1] == 17
    assert model(tiny_clip()).shape == (2, 10)


def test_adapter_only_state_dict_roundtrip(tmp_path):
    model = create_model("vit_tiny_test", method="sparse_tuning", **SPARSE)
    _randomise_adapters(model)
    torch.save(trainable_state_dict(model), tmp_path / "adapters.pth")
    other = create_model("vit_tiny_test", method="sparse_tuning", **SPARSE)
    other.load_state_dict({k: v for k, v in model.state_dict().items() if ".adapter." not in f".{k}" and not k.startswith("head.")}, strict=False)
    x = tiny_clip()
    with torch.no_grad():
        assert not torch.allclose(other.eval()(x), model.eval()(x))
        load_trainable_state_dict(other, torch.load(tmp_path / "adapters.pth", weights_only=True))
        torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)
    with pytest.raises(KeyError, match="misses trainable"):
        load_trainable_state_dict(other, {"head.weight": model.head.weight})


def test_adapter_file_for_vit_b_is_a_few_megabytes():
    model = create_model("vit_base_patch16", method="sparse_tuning", num_classes=400)
    size = sum(v.numel() * v.element_size() for v in trainable_state_dict(model).values())
    assert 4e6 < size < 8e6  # 1.12 M adapter + 0.31 M head parameters in float32


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="sparse_tuning", sparse_layers=(0, 5)), "1-based"),
        (dict(num_frames=5), "num_frames=5"),
        (dict(img_size=36), "img_size=36"),
        (dict(global_pool="token", class_token=False), "class_token"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model("vit_tiny_test", **kwargs)


def test_wrong_input_shape_is_reported():
    model = create_model("vit_tiny_test")
    with pytest.raises(ValueError, match="expected input"):
        model(torch.randn(1, 3, 8, 32, 32))


def _literal_dense_adapter_forward(model, x):
    """The paper's Dense Adapter evaluated literally: every earlier adapter's d-wide output A_j is kept, passed
    through each sparsification step with the same plan, and down-projected by the later adapters."""
    from video_st.models.sparsify import plan_reduction

    h = model._pos_embed(model.patch_embed(x))
    prefix = model.num_prefix_tokens
    outputs = []  # A_j, oldest first
    for block in model.blocks:
        attn_out, info = block.attn(block.norm1(h), rows="cls" if block.reducer.reduces else None)
        h = h + attn_out
        if block.reducer.reduces:
            scores = info.rows.mean(dim=1)
            plan = plan_reduction(scores[:, prefix:], keep_rate=block.reducer.keep_rate, num_prefix=prefix,
                                  fuse=block.reducer.fuse)
            h, outputs = plan.apply(h), [plan.apply(a) for a in outputs]
        adapter = block.adapter
        inputs = [h] + outputs[::-1][: adapter.num_inputs - 1]
        a = adapter.scale * adapter.up(adapter.act(sum(down(i) for down, i in zip(adapter.downs, inputs, strict=True))))
        outputs = (outputs + [a])[-2:]
        h = h + block.mlp(block.norm2(h)) + a
    return model.forward_head(model.norm(h))


@pytest.mark.parametrize("fuse", ["mean", "sum"])
def test_dense_adapter_evaluation_order_is_exact(fuse):
    model = create_model("vit_tiny_test", method="sparse_tuning", sparse_layers=(2, 3), keep_rate=0.6,
                         adapter_scale=0.5, fuse=fuse).eval()
    _randomise_adapters(model)
    x = tiny_clip()
    assert_outputs_and_grads_close(model, model(x), _literal_dense_adapter_forward(model, x))
