"""LoRA and BitFit: the right parameters train, gradients reach them, a fresh model equals its backbone, LoRA
merges into the weights exactly, and ViT-B trainable counts match the published figures."""

import pytest
import torch

from video_st import create_model, list_methods

from .conftest import tiny_clip


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_methods_are_listed():
    assert {"lora", "bitfit"} <= set(list_methods())


def test_trainable_sets():
    lora = create_model("vit_tiny_test", method="lora")
    assert _trainable(lora) == {n for n, _ in lora.named_parameters()
                                if ".lora." in n or n.startswith("head.") or n == "pos_embed_temporal"}
    assert all(".attn.lora.q." in n or ".attn.lora.v." in n for n in _trainable(lora) if "lora" in n)
    bitfit = create_model("vit_tiny_test", method="bitfit")
    assert _trainable(bitfit) == {n for n, _ in bitfit.named_parameters()
                                  if n.endswith(".bias") or n.startswith("head.") or n == "pos_embed_temporal"}
    assert "blocks.0.norm1.bias" in _trainable(bitfit) and "blocks.0.attn.qkv.weight" not in _trainable(bitfit)


@pytest.mark.parametrize("method", ["lora", "bitfit"])
def test_gradients_reach_exactly_the_trainable_set(method):
    model = create_model("vit_tiny_test", method=method)
    with torch.no_grad():  # LoRA's up-projection starts at zero: give it weight so both factors get gradients
        for name, p in model.named_parameters():
            if ".up." in name:
                p.normal_(std=0.02)
    model(tiny_clip()).sum().backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got == _trainable(model)


def test_fresh_lora_equals_the_backbone_and_merges_exactly():
    torch.manual_seed(0)
    full = create_model("vit_tiny_test", method="full").eval()
    lora = create_model("vit_tiny_test", method="lora").eval()
    lora.load_state_dict(full.state_dict(), strict=False)
    clip = tiny_clip()
    assert torch.allclose(lora(clip), full(clip), atol=1e-6)  # zero-initialised up-projections
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if ".lora." in name:
                p.normal_(std=0.05)
    before = lora(clip)
    assert not torch.allclose(before, full(clip), atol=1e-3)
    lora.merge_lora()
    assert not any(".lora." in n for n, _ in lora.named_parameters())
    assert torch.allclose(lora(clip), before, atol=1e-5)


def test_vit_b_trainable_counts_match_the_published_figures():
    # Published ViT-B/16 figures (without the head), as in the VPT / NOAH comparison tables: LoRA (q, v, rank 8)
    # 0.29 M, BitFit 0.10 M. Here plus the 3 K temporal position table that every adapter-style method trains.
    for method, expected in (("lora", 294_912), ("bitfit", 102_912)):
        model = create_model("vit_base_patch16", method=method, num_classes=400)
        extra = model.head.weight.numel() + model.head.bias.numel() + model.pos_embed_temporal.numel()
        count = sum(p.numel() for p in model.parameters() if p.requires_grad) - extra
        assert count == expected, method
