"""The environment fixes: the libraries they exist for import and work after ``import video_st``."""

import torch

import video_st
from video_st import compat


def test_fixes_are_idempotent_and_reported():
    first = compat.apply()
    assert compat.apply() == first and first


def test_torchvision_transforms_work_on_video_tensors():
    from torchvision.transforms import v2

    clip = torch.randint(0, 256, (8, 3, 40, 48), dtype=torch.uint8)  # T, C, H, W
    out = v2.Compose([v2.RandomResizedCrop(32, antialias=True), v2.RandomHorizontalFlip()])(clip)
    assert out.shape == (8, 3, 32, 32)


def test_pytorchvideo_transforms_import():
    from pytorchvideo.transforms import ShortSideScale

    out = ShortSideScale(16)(torch.rand(3, 4, 32, 48))  # C, T, H, W
    assert out.shape == (3, 4, 16, 24)


def test_timm_and_transformers_import_after_video_st():
    import timm
    import transformers

    assert timm.__version__ and transformers.__version__ and video_st.__version__
