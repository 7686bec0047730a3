"""What the synthetic classes are and how their frames look: motions, random scenes, rendering, film grain.

A class is only a motion (a direction, and optionally a speed); a scene (background, shapes, colours, start
positions) is drawn independently of the class, so frame 0 of a video is the same whatever its class and only the
motion tells the classes apart. :mod:`video_st.synthetic.datasets` writes these frames as datasets in the real formats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DIRECTIONS = ("left", "right", "up", "down")  # class order before sorting: 4 directions, then the same fast


MAX_CLASSES = 2 * len(DIRECTIONS)


# Per-frame displacement as a fraction of the frame extent along the motion axis. Normal speed is at least
# 1/20 of the extent per frame even at the lowest jitter (0.07 * 0.85 ~ 0.06), so a model that sees 32 x 32 frames
# sees the shape move ~2 px per frame; fast is twice that, and the jitter ranges of the two never overlap.
NORMAL_SPEED = 0.07


FAST_SPEED = 0.14


SPEED_JITTER = (0.85, 1.15)


SSV2_TEMPLATES = {  # (direction, fast) -> template; left/right matter: a horizontal flip swaps the classes
    ("right", False): "Moving [something] from left to right",
    ("left", False): "Moving [something] from right to left",
    ("up", False): "Pushing [something] up",
    ("down", False): "Pulling [something] down",
    ("right", True): "Quickly moving [something] from left to right",
    ("left", True): "Quickly moving [something] from right to left",
    ("up", True): "Quickly pushing [something] up",
    ("down", True): "Quickly pulling [something] down",
}


_LUMA = np.array([0.299, 0.587, 0.114])  # BT.601 weights: brightness as the encoder's Y plane sees it


@dataclass(frozen=True)
class Motion:
    """What a class is: a direction of motion and a speed."""

    direction: str  # one of DIRECTIONS
    fast: bool = False

    @property
    def unit(self) -> tuple[int, int]:
        """(dy, dx) in image coordinates (y grows downwards)."""
        return {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}[self.direction]

    @property
    def speed(self) -> float:
        return FAST_SPEED if self.fast else NORMAL_SPEED

    @property
    def k400_name(self) -> str:
        return f"moving {self.direction}" + (" fast" if self.fast else "")

    @property
    def ssv2_template(self) -> str:
        return SSV2_TEMPLATES[(self.direction, self.fast)]


@dataclass(frozen=True)
class Shape:
    kind: str  # "square" | "disc"
    size: int  # side or diameter, pixels
    colour: tuple[int, int, int]
    top: int  # position at frame 0 (fully inside the frame)
    left: int
    speed_factor: float  # per-shape jitter of the class speed, drawn independently of the class


@dataclass(frozen=True)
class Scene:
    """Everything a video looks like, nothing about how it moves: drawn without knowing the class."""

    background: np.ndarray  # (H, W, 3) uint8, static
    shapes: tuple[Shape, ...]


def class_motions(*, num_classes: int) -> list[Motion]:
    """The motions of the first ``num_classes`` classes (before the alphabetical index order is applied)."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in 2..{MAX_CLASSES}, got {num_classes}")
    motions = [Motion(d) for d in DIRECTIONS] + [Motion(d, fast=True) for d in DIRECTIONS]
    return motions[:num_classes]


def sample_scene(rng: np.random.Generator, *, height: int, width: int) -> Scene:
    """Background and shapes of one video. Takes no class: appearance is independent of the label by design."""
    background = _background(rng, height=height, width=width)
    mean = background.reshape(-1, 3).mean(0)
    shapes = []
    for _ in range(int(rng.integers(1, 3))):
        size = round(rng.uniform(0.18, 0.32) * min(height, width))
        shapes.append(Shape(
            kind=("square", "disc")[int(rng.integers(2))],
            size=size,
            colour=_bright_colour(rng, mean),
            top=int(rng.integers(0, height - size + 1)),
            left=int(rng.integers(0, width - size + 1)),
            speed_factor=float(rng.uniform(*SPEED_JITTER)),
        ))
    return Scene(background=background, shapes=tuple(shapes))


def add_grain(frames: np.ndarray, *, std: float, rng: np.random.Generator) -> np.ndarray:
    """Independent Gaussian noise per frame and pixel (film grain / sensor noise). The flat synthetic scenes
    compress to about 150 kbit/s at 240 x 320, several times below real 320p Kinetics video, so they decode
    unrealistically fast; grain of std 6-10 brings the bitrate, and the decoding cost, to that of real footage.
    Used by the data benchmark; the class still depends only on the motion."""
    noisy = frames.astype(np.int16) + rng.normal(0.0, std, size=frames.shape).astype(np.int16)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def render_frames(scene: Scene, *, motion: Motion, num_frames: int) -> np.ndarray:
    """(num_frames, H, W, 3) uint8: the scene's shapes moving by ``motion``; frame 0 does not depend on it.

    A shape leaving one side re-enters from the other (period extent + size, so it is never drawn twice): the
    direction stays the same for the whole video however long it is.
    """
    height, width = scene.background.shape[:2]
    dy, dx = motion.unit
    frames = np.repeat(scene.background[None], num_frames, axis=0)
    for shape in scene.shapes:
        stamp = _stamp(shape.kind, shape.size)
        colour = np.array(shape.colour, dtype=np.uint8)
        # Pixels per frame along the motion axis, relative to that axis's extent.
        step = motion.speed * shape.speed_factor * (height if dy else width)
        for t in range(num_frames):
            top = _wrap(shape.top + dy * step * t, extent=height, size=shape.size)
            left = _wrap(shape.left + dx * step * t, extent=width, size=shape.size)
            _paste(frames[t], stamp, colour, top=top, left=left)
    return frames


def _background(rng: np.random.Generator, *, height: int, width: int) -> np.ndarray:
    # Smooth colour noise (a coarse random grid, bilinearly upsampled) plus faint stripes of random orientation:
    # texture for the model to ignore, of limited contrast and darker than the shapes (see _bright_colour).
    base = rng.uniform(20, 120, size=3)
    cells = int(rng.integers(2, 6))
    noise = _upsample(rng.normal(0.0, 20.0, size=(cells + 1, cells + 1, 3)), height=height, width=width)
    theta, period, phase = rng.uniform(0, math.pi), rng.uniform(6, 24), rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:height, 0:width]
    wave = np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period + phase)
    tint = rng.normal(size=3)
    stripes = rng.uniform(0, 20) * wave[..., None] * (tint / np.linalg.norm(tint))
    return np.clip(base + noise + stripes, 0, 255).round().astype(np.uint8)


def _upsample(grid: np.ndarray, *, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a (h, w, C) grid to (height, width, C), corners aligned."""
    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.linspace(0, n_in - 1, n_out)
        low = np.minimum(np.floor(pos).astype(int), n_in - 2)
        return low, low + 1, pos - low

    y0, y1, fy = axis(height, grid.shape[0])
    x0, x1, fx = axis(width, grid.shape[1])
    rows = grid[y0] * (1 - fy)[:, None, None] + grid[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def _bright_colour(rng: np.random.Generator, background_mean: np.ndarray) -> tuple[int, int, int]:
    # A random hue, lifted towards white until it is clearly brighter than the background. The same contrast
    # polarity in every video makes the direction a local, linear feature of two consecutive frames (brightening
    # ahead of the shape, darkening behind it). With random polarity, a from-scratch vit_tiny_test memorised the
    # 64 training videos of the default set (val accuracy 0.38 after 2000 steps); with this it reaches ~0.9 in 250.
    colour = rng.integers(0, 256, size=3).astype(np.float64)
    luma, target = _LUMA @ colour, min(255.0, _LUMA @ background_mean + 90.0)
    if luma < target:
        colour += (target - luma) / (255.0 - luma) * (255.0 - colour)
    return tuple(int(c) for c in np.clip(np.round(colour), 0, 255))


def _stamp(kind: str, size: int) -> np.ndarray:
    if kind == "square":
        return np.ones((size, size), dtype=bool)
    centre = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size]
    return (yy - centre) ** 2 + (xx - centre) ** 2 <= (size / 2) ** 2


def _wrap(position: float, *, extent: int, size: int) -> int:
    # Top/left edge in [-size, extent): leaving at one side, the shape comes back from the other.
    return round((position + size) % (extent + size) - size)


def _paste(canvas: np.ndarray, stamp: np.ndarray, colour: np.ndarray, *, top: int, left: int) -> None:
    height, width = canvas.shape[:2]
    y0, y1 = max(top, 0), min(top + stamp.shape[0], height)
    x0, x1 = max(left, 0), min(left + stamp.shape[1], width)
    if y0 < y1 and x0 < x1:
        canvas[y0:y1, x0:x1][stamp[y0 - top:y1 - top, x0 - left:x1 - left]] = colour
