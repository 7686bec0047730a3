"""The environment fixes: the libraries they exist for import and work after ``import video_st``."""

import torch

import video_st  # noqa: F401  (applies the fixes)


def test_torchvision_transforms_work_on_video_tensors():
    from torchvision.transforms import v2

    clip = torch.randint(0, 256, (8, 3, 40, 48), dtype=torch.uint8)  # T, C, H, W
    out = v2.Compose([v2.RandomResizedCrop(32, antialias=True), v2.RandomHorizontalFlip()])(clip)
    assert out.shape == (8, 3, 32, 32)


def test_pytorchvideo_transforms_import():
    from pytorchvideo.transforms import ShortSideScale

    out = ShortSideScale(16)(torch.rand(3, 4, 32, 48))  # C, T, H, W
    assert out.shape == (3, 4, 16, 24)


def test_timm_and_transformers_models_run_after_video_st():
    # Both import torchvision, which fails on this CPU torch without compat's schema fix.
    import timm
    from transformers import VideoMAEConfig, VideoMAEModel

    vit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1,
                                                           num_heads=2, num_classes=3)
    assert vit(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    config = VideoMAEConfig(num_frames=2, tubelet_size=2, image_size=32, patch_size=8, hidden_size=32,
                            num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    assert VideoMAEModel(config)(torch.randn(1, 2, 3, 32, 32)).last_hidden_state.shape == (1, 16, 32)
