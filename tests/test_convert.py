"""Parity of converted checkpoints with the reference implementations (random weights, float32, CPU)."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from video_st import CheckpointError, convert_checkpoint, create_model
from video_st.models.convert import to_video_st

TIMM_ARGS = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10)
OUR_IMAGE_ARGS = dict(img_size=32, depth=2, num_frames=1, tubelet_size=1, num_classes=10)


def _randomise(module):
    # Random values everywhere (LayerNorm scales, biases, pos/cls included) so that a wrong mapping shows.
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(std=0.2 if p.ndim > 1 else 0.5)
    return module.eval()


@pytest.fixture(scope="module")
def timm_vit():
    import timm

    torch.manual_seed(0)
    return _randomise(timm.models.vision_transformer.VisionTransformer(**TIMM_ARGS))


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".safetensors"])
def test_timm_state_dict_parity_on_images(tmp_path, timm_vit, suffix):
    path = tmp_path / f"vit{suffix}"
    sd = {k: v.contiguous() for k, v in timm_vit.state_dict().items()}
    save_file(sd, path) if suffix == ".safetensors" else torch.save(sd, path)
    model = create_model("vit_tiny_test", pretrained=path, **OUR_IMAGE_ARGS).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        diff = (model(images[:, :, None]) - timm_vit(images)).abs().max()
    assert diff < 1e-4


def _timm_to_jax_npz(sd, path):
    """Write a timm ViT in the original JAX release's npz layout (the format definition, written out)."""
    dim, heads = TIMM_ARGS["embed_dim"], TIMM_ARGS["num_heads"]
    hd = dim // heads
    n = lambda t: t.detach().numpy()  # noqa: E731
    out = {
        "embedding/kernel": n(sd["patch_embed.proj.weight"].permute(2, 3, 1, 0)),
        "embedding/bias": n(sd["patch_embed.proj.bias"]),
        "cls": n(sd["cls_token"]),
        "Transformer/posembed_input/pos_embedding": n(sd["pos_embed"]),
        "Transformer/encoder_norm/scale": n(sd["norm.weight"]),
        "Transformer/encoder_norm/bias": n(sd["norm.bias"]),
        "head/kernel": n(sd["head.weight"].T),
        "head/bias": n(sd["head.bias"]),
        "pre_logits/kernel": np.zeros((dim, dim), np.float32),  # the 21k release's representation layer
        "pre_logits/bias": np.zeros(dim, np.float32),
    }
    for i in range(TIMM_ARGS["depth"]):
        b, s = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        att = b + "MultiHeadDotProductAttention_1/"
        qkv_w, qkv_b = sd[s + "attn.qkv.weight"].chunk(3), sd[s + "attn.qkv.bias"].chunk(3)
        for name, w, bias in zip(("query", "key", "value"), qkv_w, qkv_b, strict=True):
            out[f"{att}{name}/kernel"] = n(w.T.reshape(dim, heads, hd))
            out[f"{att}{name}/bias"] = n(bias.reshape(heads, hd))
        out[att + "out/kernel"] = n(sd[s + "attn.proj.weight"].T.reshape(heads, hd, dim))
        out[att + "out/bias"] = n(sd[s + "attn.proj.bias"])
        for ln, key in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            out[f"{b}{ln}/scale"], out[f"{b}{ln}/bias"] = n(sd[s + key + ".weight"]), n(sd[s + key + ".bias"])
        for r in range(2):
            out[f"{b}MlpBlock_3/Dense_{r}/kernel"] = n(sd[f"{s}mlp.fc{r + 1}.weight"].T)
            out[f"{b}MlpBlock_3/Dense_{r}/bias"] = n(sd[f"{s}mlp.fc{r + 1}.bias"])
    np.savez(path, **out)


def test_npz_release_parity_with_timm_loader(tmp_path, timm_vit):
    import timm
    from timm.models.vision_transformer import _load_weights  # the reference npz loader (test-only use)

    path = tmp_path / "ViT-B_16.npz"
    _timm_to_jax_npz(timm_vit.state_dict(), path)
    reference = timm.models.vision_transformer.VisionTransformer(**TIMM_ARGS).eval()
    _load_weights(reference, str(path))
    model = create_model("vit_tiny_test", pretrained=path, **OUR_IMAGE_ARGS).eval()
    assert to_video_st(path).arch["num_heads"] == 4
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (reference(images) - timm_vit(images)).abs().max() < 1e-5  # the npz writer itself is right
        assert (model(images[:, :, None]) - reference(images)).abs().max() < 1e-4


@pytest.mark.parametrize("inflation", ["central", "average"])
def test_inflated_model_on_a_static_clip_equals_the_image_model(tmp_path, timm_vit, inflation):
    path = tmp_path / "vit.pth"
    torch.save(timm_vit.state_dict(), path)
    images = torch.randn(2, 3, 32, 32)
    common = dict(pretrained=path, inflation=inflation, img_size=32, depth=2, tubelet_size=2, num_classes=10)
    # One tubelet of a static clip: the whole model is the image model.
    one_tube = create_model("vit_tiny_test", num_frames=2, **common).eval()
    with torch.no_grad():
        assert (one_tube(images[:, :, None].expand(-1, -1, 2, -1, -1)) - timm_vit(images)).abs().max() < 1e-4
    # Several tubelets: every tube token of a static clip is the image's patch token.
    video = create_model("vit_tiny_test", num_frames=4, **common).eval()
    with torch.no_grad():
        tubes = video.patch_embed(images[:, :, None].expand(-1, -1, 4, -1, -1))
        patches = timm_vit.patch_embed(images)
    torch.testing.assert_close(tubes, torch.cat([patches, patches], dim=1), rtol=1e-5, atol=1e-5)
    kernel = video.patch_embed.proj.weight
    if inflation == "central":
        assert kernel[:, :, 0].abs().max() == 0 and torch.equal(kernel[:, :, 1], timm_vit.patch_embed.proj.weight)
    else:
        torch.testing.assert_close(kernel.sum(2), timm_vit.patch_embed.proj.weight)


def test_spatial_position_table_is_resampled_like_timm(tmp_path, timm_vit):
    from timm.layers import resample_abs_pos_embed

    path = tmp_path / "vit.pth"
    torch.save(timm_vit.state_dict(), path)
    model = create_model("vit_tiny_test", pretrained=path, img_size=48, depth=2, num_frames=4, num_classes=10)
    expected = resample_abs_pos_embed(timm_vit.pos_embed, new_size=(6, 6), num_prefix_tokens=1,
                                      interpolation="bicubic", antialias=False)
    torch.testing.assert_close(model.pos_embed_spatial.detach(), expected.detach())
    assert model.pos_embed_temporal.abs().max() == 0  # image sources have no temporal table


@pytest.fixture(scope="module")
def hf_videomae():
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    torch.manual_seed(0)
    config = VideoMAEConfig(num_frames=8, tubelet_size=2, image_size=32, patch_size=16, hidden_size=64,
                            num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, num_labels=5)
    return _randomise(VideoMAEForVideoClassification(config))


HF_GEOMETRY = dict(num_frames=8, img_size=32, patch_size=16, depth=2, num_classes=5)


def test_hf_videomae_folder_parity(tmp_path, hf_videomae):
    hf_videomae.save_pretrained(tmp_path / "hf")
    model = create_model("vit_tiny_test", pretrained=tmp_path / "hf", **HF_GEOMETRY).eval()
    assert model.cls_token is None and model.global_pool == "avg"
    clips = torch.randn(2, 8, 3, 32, 32)  # transformers' layout: (B, T, C, H, W)
    with torch.no_grad():
        expected = hf_videomae(pixel_values=clips).logits
        ours = model(clips.transpose(1, 2))
    assert (ours - expected).abs().max() < 1e-4


def test_hf_videomae_safetensors_file_without_its_config(tmp_path, hf_videomae):
    hf_videomae.save_pretrained(tmp_path / "hf")
    # Without config.json the layer-norm eps falls back to transformers' default (1e-12), as the model used.
    model = create_model("vit_tiny_test", pretrained=tmp_path / "hf" / "model.safetensors", **HF_GEOMETRY).eval()
    clips = torch.randn(1, 8, 3, 32, 32)
    with torch.no_grad():
        assert (model(clips.transpose(1, 2)) - hf_videomae(pixel_values=clips).logits).abs().max() < 1e-4


def _hf_to_mcg(sd):
    """HF VideoMAE -> the original VideoMAE (MCG-NJU) fine-tuning keys, with q_bias/v_bias."""
    sd = {k.removeprefix("videomae."): v for k, v in sd.items()}
    out = {"patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
           "fc_norm.weight": sd["fc_norm.weight"], "fc_norm.bias": sd["fc_norm.bias"],
           "head.weight": sd["classifier.weight"], "head.bias": sd["classifier.bias"]}
    for i in range(2):
        s, d = f"encoder.layer.{i}.", f"blocks.{i}."
        a = s + "attention.attention."
        out[d + "attn.qkv.weight"] = torch.cat([sd[a + n + ".weight"] for n in ("query", "key", "value")])
        out[d + "attn.q_bias"], out[d + "attn.v_bias"] = sd[a + "query.bias"], sd[a + "value.bias"]
        for src, dst in (("attention.output.dense", "attn.proj"), ("intermediate.dense", "mlp.fc1"),
                         ("output.dense", "mlp.fc2"), ("layernorm_before", "norm1"), ("layernorm_after", "norm2")):
            out[f"{d}{dst}.weight"], out[f"{d}{dst}.bias"] = sd[f"{s}{src}.weight"], sd[f"{s}{src}.bias"]
    return out


def test_original_videomae_checkpoints_finetuned_and_pretrained(tmp_path, hf_videomae):
    mcg = _hf_to_mcg(hf_videomae.state_dict())
    torch.save({"module": mcg}, tmp_path / "finetuned.pth")
    clips = torch.randn(2, 8, 3, 32, 32)
    geometry = HF_GEOMETRY | dict(pos_embed_grid=(4, 2, 2), norm_eps=1e-12, head_norm_eps=1e-5)
    model = create_model("vit_tiny_test", pretrained=tmp_path / "finetuned.pth", **geometry).eval()
    with torch.no_grad():
        expected = hf_videomae(pixel_values=clips, output_hidden_states=True)
        assert (model(clips.transpose(1, 2)) - expected.logits).abs().max() < 1e-4
    # Pre-training layout: "encoder." keys, a final encoder norm, decoder keys to drop.
    encoder = {k: v for k, v in mcg.items() if not k.startswith(("head.", "fc_norm."))}
    encoder["norm.weight"], encoder["norm.bias"] = mcg["fc_norm.weight"], mcg["fc_norm.bias"]
    pretrain = {f"encoder.{k}": v for k, v in encoder.items()} | {"decoder.norm.weight": torch.ones(64), "mask_token": torch.zeros(1, 1, 64)}
    torch.save({"model": pretrain}, tmp_path / "pretrain.pth")
    model = create_model("vit_tiny_test", pretrained=tmp_path / "pretrain.pth", **geometry).eval()
    with torch.no_grad():
        ours = model.forward_head(model.forward_features(clips.transpose(1, 2)), pre_logits=True)
        ref = hf_videomae.fc_norm(hf_videomae.videomae(pixel_values=clips).last_hidden_state.mean(1))
    assert (ours - ref).abs().max() < 1e-4


def test_sinusoid_table_is_resampled_to_fewer_frames(tmp_path, hf_videomae):
    from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table

    hf_videomae.config.num_frames = 16  # pre-trained on 16 frames, fine-tuned on 8
    hf_videomae.save_pretrained(tmp_path / "hf16")
    hf_videomae.config.num_frames = 8
    model = create_model("vit_tiny_test", pretrained=tmp_path / "hf16", **HF_GEOMETRY)
    table16 = get_sinusoid_encoding_table(8 * 2 * 2, 64).reshape(1, 8, 2, 2, 64).permute(0, 4, 1, 2, 3)
    expected = torch.nn.functional.interpolate(table16, size=(4, 2, 2), mode="trilinear").permute(0, 2, 3, 4, 1)
    torch.testing.assert_close(model.pos_embed_fixed, expected.reshape(1, 16, 64))


def test_converted_file_roundtrip(tmp_path, timm_vit):
    torch.save({"model": timm_vit.state_dict()}, tmp_path / "vit.pth")
    meta = convert_checkpoint(tmp_path / "vit.pth", tmp_path / "video.pth", arch="vit_tiny_test", img_size=32,
                              depth=2, num_frames=4, tubelet_size=2)
    assert meta["source"] == "timm" and meta["inflation"] == "central"
    a = create_model("vit_tiny_test", pretrained=tmp_path / "video.pth", method="sparse_tuning", sparse_layers=(2,)).eval()
    b = create_model("vit_tiny_test", pretrained=tmp_path / "vit.pth", method="sparse_tuning", sparse_layers=(2,),
                     img_size=32, depth=2, num_frames=4, num_classes=10).eval()
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(clip), b(clip), rtol=0, atol=0)


def test_bad_checkpoints_are_named(tmp_path, timm_vit):
    good = tmp_path / "vit.pth"
    torch.save(timm_vit.state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "noise.safetensors").write_bytes(b"\x13\x00\x00\x00\x00\x00\x00\x00garbage-not-a-header")
    for path, message in [(truncated, "cannot read"), (tmp_path / "empty.safetensors", "empty"),
                          (tmp_path / "noise.safetensors", "cannot read"), (tmp_path / "missing.pth", "no such file")]:
        with pytest.raises(CheckpointError, match=message) as info:
            create_model("vit_tiny_test", pretrained=path)
        assert str(path) in str(info.value)
    with pytest.raises(CheckpointError, match="embed_dim=64 but vit_base_patch16 has embed_dim=768"):
        create_model("vit_base_patch16", pretrained=good)
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        create_model("vit_tiny_test", pretrained=tmp_path / "other.pth")
    sd = dict(timm_vit.state_dict())
    sd.pop("blocks.1.mlp.fc2.weight")
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="blocks.1.mlp.fc2.weight"):
        create_model("vit_tiny_test", pretrained=tmp_path / "partial.pth", **OUR_IMAGE_ARGS)
