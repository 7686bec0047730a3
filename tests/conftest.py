import pytest
import torch

import video_st  # noqa: F401  (applies compat fixes before timm/transformers import torchvision)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_clip(batch: int = 2, frames: int = 4, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size)
