"""The authors' published Dense Adapter (``dense_adapter_form="published"``) against literal re-implementations of
the published code (liuting20/Sparse-Tuning: ``Adapter`` in models/adapter.py, the stage sums of
``VisionTransformer.forward_features`` in models/vit_image.py), its start from the backbone, its ViT-B parameter
count and its option errors."""

import pytest
import torch
import torch.nn.functional as F

from video_st import create_model, load_model
from video_st.models.adapters import PublishedDenseAdapter
from video_st.models.spec import save_model_file
from video_st.models.sparsify import plan_reduction

from .conftest import assert_outputs_and_grads_close, tiny_clip


def _published(method="sparse_tuning", **kwargs):
    # 12 layers with the paper's sparse layers 4/7/10 (dense_adapter: its stages' default): the published code's
    # hard-coded stages, at the tiny width (whose own variant default is sparse_layers=(2, 3)).
    layers = {"sparse_layers": (4, 7, 10)} if method == "sparse_tuning" else {}
    return create_model("vit_tiny_test", method=method, depth=12, dense_adapter_form="published", **layers, **kwargs)


def _randomise(model, std=0.2):
    """Fresh published adapters output zero (both up-projections are zero): give every adapter weight a push."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for block in model.blocks:
            for p in block.adapter.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * std)


def _literal_block(adapter, x):
    """The published Adapter.forward, written out on the weights (down1, down2, up1, down3, up2)."""
    x0 = F.relu(x @ adapter.down.weight.T + adapter.down.bias)
    xs_1 = x0 @ adapter.inner_down.weight.T + adapter.inner_down.bias
    xs_2 = xs_1 @ adapter.inner_up.weight.T + adapter.inner_up.bias
    outputs = torch.cat([xs_1, xs_2], dim=2) @ adapter.fuse.weight.T + adapter.fuse.bias
    outputs = outputs + x0
    return outputs @ adapter.up.weight.T + adapter.up.bias


def _literal_published_forward(model, x):
    """The published forward_features' loop for 12 layers, its indices as written there (0-based i)."""
    h = model._pos_embed(model.patch_embed(x))
    prefix = model.num_prefix_tokens
    stage_0, stage_1, stage_2, stage_3 = h, [], [], []  # the published adapter_paraller_0 = x
    for i, block in enumerate(model.blocks):
        attn_out, info = block.attn(block.norm1(h), rows="cls" if block.reducer.reduces else None)
        h = h + attn_out
        if block.reducer.reduces:
            plan = plan_reduction(info.rows.mean(dim=1)[:, prefix:], keep_rate=block.reducer.keep_rate,
                                  num_prefix=prefix, fuse=block.reducer.fuse)
            h = plan.apply(h)
        a = _literal_block(block.adapter, h)
        h = h + (block.mlp(block.norm2(h)) + a)  # the block: residual + (mlp + adapter)
        if i < 3:
            stage_0 = stage_0 + a
        if i == 2:
            h = h + stage_0
        if 2 < i < 6:
            stage_1.append(a)
        if i == 5:
            h = h + sum(stage_1)
        if 5 < i < 9:
            stage_2.append(a)
        if i == 8:
            h = h + sum(stage_2)
        if 8 < i < 11:
            stage_3.append(a)
        if i == 11:
            h = h + sum(stage_3)
    return model.forward_head(model.norm(h))


def test_the_published_block_has_the_published_widths_and_init():
    adapter = PublishedDenseAdapter(dim=768)
    shapes = {name: tuple(p.shape) for name, p in adapter.named_parameters() if name.endswith("weight")}
    assert shapes == {"down.weight": (64, 768), "inner_down.weight": (32, 64), "inner_up.weight": (64, 32),
                      "fuse.weight": (64, 96), "up.weight": (768, 64)}
    for name, p in adapter.named_parameters():
        if name.endswith("bias") or name in ("inner_up.weight", "up.weight"):
            assert not p.any(), name  # zero-initialised up-projections and biases
        else:
            assert p.std() > 0, name
    assert not adapter.delta(torch.randn(2, 5, 768)).any()  # a fresh adapter adds exactly nothing


def test_the_published_block_on_hand_built_inputs():
    # Hand-built weights whose result tells the concat order (s before u) and the skip from the ReLU'd h apart.
    adapter = PublishedDenseAdapter(dim=2, bottleneck=2, inner=1)
    with torch.no_grad():
        for p in adapter.parameters():
            p.zero_()
        adapter.down.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))  # h = relu([3, -2]) = [3, 0]
        adapter.inner_down.weight.copy_(torch.tensor([[1.0, 1.0]]))  # s = [3]
        adapter.inner_up.weight.copy_(torch.tensor([[2.0], [1.0]]))  # u = [6, 3]
        adapter.fuse.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]))  # fuse([3, 6, 3]) = [3, 9]
        adapter.up.weight.copy_(torch.eye(2))
        adapter.up.bias.copy_(torch.tensor([0.5, 0.0]))
    x = torch.tensor([[[3.0, 2.0]]])
    torch.testing.assert_close(adapter.delta(x), torch.tensor([[[6.5, 9.0]]]))  # up([3, 9] + [3, 0]) + [0.5, 0]
    # Random weights at the published widths against the published formula written out.
    adapter = PublishedDenseAdapter(dim=768)
    _randomise_module(adapter)
    x = torch.randn(2, 7, 768)
    torch.testing.assert_close(adapter.delta(x), _literal_block(adapter, x), rtol=1e-5, atol=1e-5)


def _randomise_module(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape) * 0.1)


@pytest.mark.parametrize("method, kwargs", [("sparse_tuning", {"fuse": "sum", "keep_rate": 0.6}),
                                            ("sparse_tuning", {"fuse": "mean", "keep_rate": 0.6}),
                                            ("dense_adapter", {})])
def test_the_published_stage_sums_literally(method, kwargs):
    model = _published(method, **kwargs).eval()
    _randomise(model)
    x = tiny_clip()
    assert_outputs_and_grads_close(model, model(x), _literal_published_forward(model, x))


def test_a_fresh_published_model_is_its_backbone_plus_the_published_embedding_term():
    full = create_model("vit_tiny_test", method="full", depth=12).eval()
    model = _published(keep_rate=1.0).eval()
    missing = model.load_state_dict(full.state_dict(), strict=False).missing_keys
    assert missing and all(".adapter." in k for k in missing)
    x = tiny_clip()
    with torch.no_grad():
        plain = full(x)
        # The published adapter_paraller_0 = x: the embedded tokens are added once more after layer 3.
        seen = {}
        hooks = [full.pos_drop.register_forward_hook(lambda m, i, o: seen.setdefault("embedded", o)),
                 full.blocks[2].register_forward_hook(lambda m, i, o: (o[0] + seen["embedded"], o[1]))]
        with_term = full(x)
        for hook in hooks:
            hook.remove()
        ours = model(x)
    torch.testing.assert_close(ours, with_term, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-3)


def test_with_no_layer_before_the_first_stage_a_fresh_published_model_equals_its_backbone():
    # Sparsifying from layer 1 leaves no first stage, hence no embedding term: the zero up-projections then make
    # a fresh model exactly its backbone, as every other adapter does.
    full = create_model("vit_tiny_test", method="full").eval()
    model = create_model("vit_tiny_test", method="sparse_tuning", sparse_layers=(1, 2, 3), keep_rate=1.0,
                         dense_adapter_form="published").eval()
    model.load_state_dict(full.state_dict(), strict=False)
    x = tiny_clip()
    with torch.no_grad():
        torch.testing.assert_close(model(x), full(x), rtol=1e-5, atol=1e-5)


def test_vit_b_trainable_parameters_are_the_published_widths_arithmetic():
    model = create_model("vit_base_patch16", method="sparse_tuning", dense_adapter_form="published", num_classes=400)
    per_adapter = (768 * 64 + 64) + (64 * 32 + 32) + (32 * 64 + 64) + (96 * 64 + 64) + (64 * 768 + 768)
    assert per_adapter == 109_536
    adapters = sum(p.numel() for b in model.blocks for p in b.adapter.parameters())
    assert adapters == 12 * per_adapter == 1_314_432
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 1_314_432 + (768 * 400 + 400) + 4 * 768 == 1_625_104  # + head + temporal positions


def test_every_trainable_part_of_the_published_form_gets_a_gradient_and_checkpointing_changes_nothing():
    model = create_model("vit_tiny_test", method="sparse_tuning", dense_adapter_form="published").train()
    _randomise(model)
    x = tiny_clip()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    out = model(x)
    grads = torch.autograd.grad(out.square().sum(), list(params.values()))
    assert all(g.abs().sum() > 0 for g in grads), [n for n, g in zip(params, grads, strict=True) if not g.any()]
    model.set_grad_checkpointing(True)
    out_ckpt = model(x)
    torch.testing.assert_close(out_ckpt, out, rtol=0, atol=0)
    for g, g_ckpt in zip(grads, torch.autograd.grad(out_ckpt.square().sum(), list(params.values())), strict=True):
        torch.testing.assert_close(g_ckpt, g, rtol=1e-5, atol=1e-6)


def test_a_published_form_file_comes_back_identical(tmp_path):
    model = create_model("vit_tiny_test", method="sparse_tuning", dense_adapter_form="published").eval()
    _randomise(model)
    save_model_file(tmp_path / "model_final.pt", model.state_dict(), spec=model.spec)
    loaded, spec = load_model(tmp_path / "model_final.pt")
    assert spec.options["dense_adapter_form"] == "published"
    assert isinstance(loaded.blocks[0].adapter, PublishedDenseAdapter)
    x = tiny_clip()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)


def test_the_paper_form_is_the_default():
    model = create_model("vit_tiny_test", method="dense_adapter")
    assert model.spec.options["dense_adapter_form"] == "paper"
    assert not any(isinstance(b.adapter, PublishedDenseAdapter) for b in model.blocks)


@pytest.mark.parametrize("method", ["adaptformer", "evit", "full"])
def test_the_form_is_an_error_for_a_method_without_dense_adapters(method):
    with pytest.raises(ValueError, match=rf"method '{method}' has no option 'dense_adapter_form'.*"
                                         r"it is an option of dense_adapter, sparse_tuning"):
        create_model("vit_tiny_test", method=method, dense_adapter_form="published")


@pytest.mark.parametrize("kwargs, message", [
    (dict(dense_adapter_form="authors"), r"dense_adapter_form must be one of \('paper', 'published'\)"),
    (dict(dense_adapter_form="published", adapter_bottleneck=16), "adapter_bottleneck=16 sets the paper form"),
    (dict(dense_adapter_form="published", dense_inputs=2), "dense_inputs=2 sets the paper form"),
    (dict(published_bottleneck=128), "published_bottleneck=128 sets the published form"),
    (dict(dense_adapter_form="published", published_inner=0), "published_inner must be >= 1"),
])
def test_form_options_that_would_be_ignored_or_are_invalid_are_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model("vit_tiny_test", method="sparse_tuning", **kwargs)
