"""DyT's published recipe (NUS-HPC-AI-Lab/Dynamic-Tuning) as the method's defaults: dropout 0.1 in the adapter
bottleneck, self-distillation on (the full-token pass's CE + KL, weight 1 each), the gate bias at zero (the
data-dependent start is the option calibrate=true), the head initialised with std 0.01; the MLP's pre-norm runs on
the active tokens only, as the authors' does."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from video_st import create_model
from video_st.config import load_config
from video_st.engine.build import build_model
from video_st.models.adapters import MoEAdapter, ParallelAdapter
from video_st.models.calibrate import calibrate, wants_calibration
from video_st.models.flops import count_flops

from .conftest import tiny_clip

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _adapters(model):
    return [b.adapter for b in model.blocks]


def test_the_defaults_are_the_published_recipe():
    model = create_model("vit_tiny_test", method="dyt", num_classes=400)
    o = model.spec.options
    assert (o["adapter_dropout"], o["distill_weight"], o["head_init_std"], o["calibrate"]) == (0.1, 1.0, 0.01, False)
    assert all(isinstance(a, ParallelAdapter) and a.dropout.p == 0.1 for a in _adapters(model))
    assert all(isinstance(a, MoEAdapter) and a.dropout.p == 0.1
               for a in _adapters(create_model("vit_tiny_test", method="dyt", adapter="moe")))
    assert all(float(b.dispatcher.gate.bias.detach()) == 0.0 for b in model.blocks)
    assert model.head.weight.std().item() == pytest.approx(0.01, rel=0.03)  # 400 x 64 weights
    other = create_model("vit_tiny_test", method="adaptformer", num_classes=400)
    assert other.head.weight.std().item() == pytest.approx(0.02, rel=0.03)  # the backbone's init elsewhere
    assert all(a.dropout.p == 0.0 for a in _adapters(other))


def test_the_dataset_and_method_configs_give_the_recipe():
    cfg = load_config([CONFIGS / "datasets" / "k400.yaml", CONFIGS / "methods" / "dyt.yaml"])
    with torch.device("meta"):
        model = build_model(cfg)
    assert model.distill_weight == 1.0 and not wants_calibration(model)
    assert all(a.dropout.p == 0.1 for a in _adapters(model))


def test_dropout_sits_in_the_adapter_bottleneck():
    adapter = ParallelAdapter(dim=16, bottleneck=8, scale=0.1, dropout=0.1).train()
    with torch.no_grad():
        adapter.up.weight.normal_()
    x = torch.randn(2, 5, 16)
    torch.manual_seed(3)
    ours = adapter.delta(x)
    torch.manual_seed(3)
    literal = 0.1 * adapter.up(F.dropout(F.relu(adapter.down(x)), p=0.1, training=True))  # the authors' Adapter
    torch.testing.assert_close(ours, literal)
    adapter.eval()
    torch.testing.assert_close(adapter.delta(x), 0.1 * adapter.up(F.relu(adapter.down(x))))


def test_training_distils_from_the_full_token_pass_by_default():
    model = create_model("vit_tiny_test", method="dyt").train()
    labels = torch.tensor([0, 1])
    logits, terms = model(tiny_clip(), return_terms=True)
    losses = terms.with_task(lambda s: F.cross_entropy(s, labels))
    assert set(losses) == {"activation", "distill", "full_token"}
    kl = F.kl_div(logits.log_softmax(-1), terms.teacher.detach().log_softmax(-1), log_target=True,
                  reduction="batchmean")
    torch.testing.assert_close(losses["distill"], kl)  # weight 1
    torch.testing.assert_close(losses["full_token"], F.cross_entropy(terms.teacher, labels))  # weight 1


def test_the_mlp_norm_runs_on_the_active_tokens_only():
    model = create_model("vit_tiny_test", method="dyt").eval()
    with torch.no_grad():
        for block in model.blocks:
            block.dispatcher.gate.weight.normal_(std=0.5)
    clip = tiny_clip()[:1]
    _, kept = model.forward_features(clip, return_token_ids=True)
    skipped = model(clip)
    flops = count_flops(model, inputs=clip, by_module=True)
    model.set_dispatch_mode("mask")
    masked = model(clip)
    flops_mask = count_flops(model, inputs=clip, by_module=True)
    torch.testing.assert_close(skipped, masked, rtol=1e-5, atol=1e-5)
    tokens, per_token = 1 + model.patch_embed.num_patches, 5 * model.embed_dim / 1e9  # fvcore's layer norm count
    for layer, ids in enumerate(kept):
        active = 1 + int((ids >= 0).sum())
        assert 1 < active < tokens
        assert flops[f"blocks.{layer}.norm2"] == pytest.approx(active * per_token, rel=1e-6)
        assert flops_mask[f"blocks.{layer}.norm2"] == pytest.approx(tokens * per_token, rel=1e-6)


@pytest.mark.parametrize("method", ["dyt", "asvit"])
def test_calibration_is_an_option(method):
    model = create_model("vit_tiny_test", method=method)
    assert not wants_calibration(model)
    assert wants_calibration(create_model("vit_tiny_test", method=method, calibrate=True))
    with pytest.raises(ValueError, match="calibrate must be true or false"):
        create_model("vit_tiny_test", method=method, calibrate="yes")
    found = calibrate(model, tiny_clip())  # the benchmarks' start at the budget, whatever the option says
    assert found["dispatcher_bias" if method == "dyt" else "threshold"]
