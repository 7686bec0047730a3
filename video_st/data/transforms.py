"""Video transforms: uint8 frames in, normalised float (C, T, H, W) out, one set of random parameters per clip.

torchvision.transforms.v2 applies one draw of random parameters to a whole ``tv_tensors.Video`` (T, C, H, W), so
every frame of a clip gets the same crop, flip and RandAugment ops; the functions here compose those and add the
test-time crops and the label-aware flip that Something-Something needs (left/right are classes there).
Batch-level mixup/cutmix for video comes from pytorchvideo (``make_mixup``): its cutmix box spans H x W and all
frames, unlike timm's, which would cut along T on 5-D input.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from einops import rearrange
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_video(frames: np.ndarray | torch.Tensor) -> tv_tensors.Video:
    """uint8 (T, H, W, C) from a decoder -> tv_tensors.Video (T, C, H, W), no copy of the pixels."""
    tensor = torch.from_numpy(frames) if isinstance(frames, np.ndarray) else frames
    return tv_tensors.Video(rearrange(tensor, "t h w c -> t c h w"))


def normalize(video: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, *,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (T, C, H, W) -> float32 (C, T, H, W), ``(x / 255 - mean) / std`` per channel, into ``out`` if given.

    One conversion pass into the output layout, then the affine map in place: this runs per clip in every
    loader worker, where three temporaries of a 224 x 224 x 8 clip cost as much as the crop itself."""
    shape = (video.shape[1], video.shape[0]) + tuple(video.shape[2:])
    x = torch.empty(shape, dtype=torch.float32) if out is None else out
    x.copy_(video.as_subclass(torch.Tensor).transpose(0, 1))
    scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(3, 1, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std, strict=True)]).view(3, 1, 1, 1)
    return x.mul_(scale).sub_(shift)


def spatial_crop(video: torch.Tensor, size: int, index: int, num_crops: int = 3) -> torch.Tensor:
    """Square crop ``index`` of ``num_crops`` along the long side (left/centre/right, or top/centre/bottom for
    portrait video); one crop is the centre crop. Input is already resized so that its short side is ``size``."""
    height, width = video.shape[-2:]
    if not 0 <= index < num_crops:
        raise ValueError(f"spatial crop {index} outside 0..{num_crops - 1}")
    if num_crops == 1:
        return TF.center_crop(video, [size, size])
    offsets_y = [0] * num_crops
    offsets_x = [0] * num_crops
    if width >= height:
        offsets_x = [round(i * (width - size) / (num_crops - 1)) for i in range(num_crops)]
        offsets_y = [(height - size) // 2] * num_crops
    else:
        offsets_y = [round(i * (height - size) / (num_crops - 1)) for i in range(num_crops)]
        offsets_x = [(width - size) // 2] * num_crops
    return TF.crop(video, offsets_y[index], offsets_x[index], size, size)


class TrainTransform:
    """Random resized crop, horizontal flip (optionally swapping left/right labels), RandAugment, normalise.

    ``hflip``: "none" (the SSv2 default: a flipped "left to right" would be "right to left"), "flip" (K400), or
    "swap" to flip and map the label through ``label_swap`` (pairs of mirrored classes).
    ``output="uint8"`` stops after the flip and returns uint8 (C, T, H, W): the loader worker then does only the
    cheap geometric part, and :class:`BatchAugment` runs RandAugment and normalisation on the batch after it
    reaches the device (a quarter of the bytes to transfer, and RandAugment's 7-44 ms per clip off the CPU)."""

    def __init__(
        self,
        *,
        size: int = 224,
        scale: tuple[float, float] = (0.25, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: str = "flip",
        label_swap: Mapping[int, int] | None = None,
        rand_augment: tuple[int, int] | None = (2, 9),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        output: str = "float",
    ) -> None:
        if output not in ("float", "uint8"):
            raise ValueError(f"output must be 'float' or 'uint8', got {output!r}")
        if output == "uint8" and rand_augment:
            raise ValueError("output='uint8' leaves RandAugment to BatchAugment; pass rand_augment=None")
        if hflip not in ("none", "flip", "swap"):
            raise ValueError(f"hflip must be 'none', 'flip' or 'swap', got {hflip!r}")
        if hflip == "swap" and not label_swap:
            raise ValueError("hflip='swap' needs label_swap (mirrored class pairs)")
        self.crop = v2.RandomResizedCrop(size, scale=scale, ratio=ratio, antialias=True)
        self.augment = v2.RandAugment(num_ops=rand_augment[0], magnitude=rand_augment[1]) if rand_augment else None
        self.hflip = hflip
        self.label_swap = dict(label_swap or {})
        self.label_swap.update({v: k for k, v in self.label_swap.items()})
        self.mean, self.std, self.output = mean, std, output

    def __call__(self, frames: np.ndarray | torch.Tensor, label: int, rng: random.Random) -> tuple[torch.Tensor, int]:
        video, label, _ = self.apply(frames, label, rng)
        return video, label

    def apply(self, frames: np.ndarray | torch.Tensor, label: int, rng: random.Random,
              mask: np.ndarray | torch.Tensor | None = None) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        """The clip, its label and, given ``mask`` (bool (T, H, W), one per frame, e.g. the object's pixels),
        that mask through the same crop and flip (torchvision's ``tv_tensors.Mask``: nearest-neighbour resize)
        as bool (T, size, size). torchvision's RandAugment takes no masks: a mask needs ``rand_augment=None``."""
        video = to_video(frames)
        if mask is None:
            video, pixels = self.crop(video), None
        elif self.augment is not None:
            raise ValueError("a mask through RandAugment: torchvision's RandAugment takes no masks")
        else:
            video, pixels = self.crop(video, tv_tensors.Mask(torch.as_tensor(np.asarray(mask, dtype=np.uint8))))
        if self.hflip != "none" and rng.random() < 0.5:
            video = TF.horizontal_flip(video)
            pixels = None if pixels is None else TF.horizontal_flip(pixels)
            if self.hflip == "swap":
                label = self.label_swap.get(label, label)
        if self.augment is not None:
            video = self.augment(video)
        pixels = None if pixels is None else pixels.as_subclass(torch.Tensor).bool()
        if self.output == "uint8":
            return rearrange(video.as_subclass(torch.Tensor), "t c h w -> c t h w"), label, pixels
        return normalize(video, self.mean, self.std), label, pixels


class BatchAugment:
    """RandAugment per clip (one draw of ops for all frames of a clip) and normalisation, on a uint8
    (B, C, T, H, W) batch wherever it lives; returns float32 (B, C, T, H, W). Float input passes through (a
    worker already normalised it). Random draws come from torch's global generator, which the engine seeds and
    checkpoints, so a resumed run augments exactly as an uninterrupted one."""

    def __init__(self, *, rand_augment: tuple[int, int] | None = (2, 9), mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        self.augment = v2.RandAugment(num_ops=rand_augment[0], magnitude=rand_augment[1]) if rand_augment else None
        self.mean, self.std = mean, std

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        if video.is_floating_point():
            return video
        if self.augment is not None:
            clips = [self.augment(tv_tensors.Video(rearrange(clip, "c t h w -> t c h w"))) for clip in video]
            video = rearrange(torch.stack([c.as_subclass(torch.Tensor) for c in clips]), "b t c h w -> b c t h w")
        mean = torch.tensor(self.mean, device=video.device).view(1, 3, 1, 1, 1)
        std = torch.tensor(self.std, device=video.device).view(1, 3, 1, 1, 1)
        return (video.float() / 255.0 - mean) / std


class EvalTransform:
    """Short-side resize to ``size`` (or ``short_side``), then the spatial crop of a test view, normalise."""

    def __init__(
        self,
        *,
        size: int = 224,
        short_side: int | None = None,
        num_crops: int = 1,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.size, self.short_side, self.num_crops = size, short_side or size, num_crops
        self.mean, self.std = mean, std

    def __call__(self, frames: np.ndarray | torch.Tensor, spatial_idx: int = 0) -> torch.Tensor:
        video = TF.resize(to_video(frames), [self.short_side], antialias=True)
        video = spatial_crop(video, self.size, spatial_idx, self.num_crops)
        return normalize(video, self.mean, self.std)

    def all_crops(self, frames: np.ndarray | torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """Every spatial crop of one clip, (num_crops, C, T, size, size), resizing once; written into ``out`` when
        given (the test dataset passes the slice of its item's views tensor, so no crop is copied twice).

        The resized clip is made contiguous first: the decoder's (T, H, W, C) order survives the resize as a
        channels-last view, and reading each crop from it into the (C, T, H, W) output costs about 3x a
        contiguous read; one copy of the whole clip is cheaper than three strided crops (when decoding is fast, as
        from JPEG frames, the crops were most of a test item's time)."""
        video = TF.resize(to_video(frames), [self.short_side], antialias=True).as_subclass(torch.Tensor).contiguous()
        if out is None:
            out = torch.empty((self.num_crops, video.shape[1], video.shape[0], self.size, self.size))
        for i in range(self.num_crops):
            normalize(spatial_crop(video, self.size, i, self.num_crops), self.mean, self.std, out=out[i])
        return out


def make_mixup(*, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, cutmix_prob: float = 0.5,
               label_smoothing: float = 0.1):
    """Batch-level mixup/cutmix for (B, C, T, H, W) clips -> (mixed clips, soft labels); pytorchvideo's MixVideo.

    It pairs each clip with the batch reversed and overwrites its input in place (do not reuse the batch)."""
    from pytorchvideo.transforms import MixVideo

    return MixVideo(cutmix_prob=cutmix_prob, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                    label_smoothing=label_smoothing, num_classes=num_classes)
