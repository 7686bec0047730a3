"""The hard generated task (``style="hard"``): classes that need a video model and token selection that matters.

Every video is a small object among distractors that look like it, over a textured background that pans; the
world is a torus (everything that leaves one side is drawn entering the other), so the object is always whole
on screen and its position at any frame is uniform whatever the class.

- ``task="target"``: the object moves straight for the first half of the video, turns 90 degrees at the middle
  (t = (T - 1) / 2) and moves straight for the second half: "moving right then up" ... 8 classes, every pair of
  perpendicular directions in both orders. "right then up" and "up then right" have the same displacement (the
  first and last frames cannot tell them apart) and differ only in the order of the two motions; the set is
  closed under time reversal ("right then up" played backwards is "down then left": :func:`reverse_video`).
  The distractors ride on the panning background, wobbling by up to ``JITTER`` per frame: only its own motion
  tells the object from its look-alikes, and a single frame cannot.
- ``task="pretrain"``: the related task of a stand-in pre-trained backbone. The class is the direction of the
  first half (8: 4 axes, 4 diagonals); at the middle every sprite turns by a rotation drawn per video (45, 90,
  135 degrees either way: never straight on, never back), whatever the class. The object and every distractor
  move together (a group motion, each sprite at its own speed: more moving pixels, so a ViT trained from scratch
  on it learns in a few hundred steps). The label depends on when each motion happens, so the backbone learns
  features of temporal order; it is told only the first motion, so its features say little of the second: a
  backbone pre-trained on it must adapt to tell "right then up" from "right then down". (A pretrain task of
  straight motions left the order of the target task unlearnable by the adapter methods: their features of a turn
  were those of the net displacement, which both orders share.)
- ``task="pretrain_object"``: the pretrain task's classes and turns, but only the object moves with them; the
  distractors ride on the panning background as in the target task. A backbone trained on it must find the one
  sprite that moves on its own, so its [CLS] learns to look at the object, as an image-pretrained ViT's [CLS]
  looks at the salient object; the group-motion backbone's [CLS] has no reason to (every sprite carries the
  class there), and a token selection scored by its attention misses the target task's object. Trained from
  scratch in the hard suite's stage-1 budget it does not learn (one small moving sprite is too little signal);
  fine-tuned from the group-motion backbone it does (docs/benchmarks.md, "An object-centred backbone").

What is drawn independently of the class (:func:`sample_hard_scene` takes no class): the object's shape
(square or disc), size, colour (random hue, brighter than the background), start and speed; the distractors
(each a copy of the object's look, or with probability 1/2 a shape and colour of its own; at least one is an
exact copy), their places and wobble; the background texture (periodic low-pass colour noise and stripes) and
its pan (random direction, up to ``PAN_SPEED`` of the frame per frame). So in the target task every single frame
has the same distribution whatever the class. The object is drawn last, on top: its ground-truth mask
(:func:`render_hard`, written by the dataset as ``*_masks.npz``: :mod:`.masks`) is exactly the pixels it covers
(pretrain task: every sprite's, as all of them move with the class; pretrain_object: the object's).

All motion is on a grid of 1/16 pixel and the turn at a multiple of 1/2 frame, so positions are exact in float64
and a reversed video is pixel-identical to the reversal (the tests check it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .scenes import _bright_colour, _paste, _stamp

TASKS = ("target", "pretrain", "pretrain_object")

# (dy, dx), y grows downwards.
UNITS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0),
         "up-left": (-1, -1), "up-right": (-1, 1), "down-left": (1, -1), "down-right": (1, 1)}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up",
            "up-left": "down-right", "down-right": "up-left", "up-right": "down-left", "down-left": "up-right"}

# Class order before the alphabetical index order; any prefix of 4 or 8 is closed under order swap and reversal.
TARGET_TURNS = (("right", "up"), ("up", "right"), ("left", "down"), ("down", "left"),
                ("right", "down"), ("down", "right"), ("left", "up"), ("up", "left"))
PRETRAIN_DIRECTIONS = ("left", "right", "up", "down", "up-left", "up-right", "down-left", "down-right")
# Counter-clockwise on screen, one step = 45 degrees; the pretrain turns (in steps) skip 0 (straight) and 4 (back).
COMPASS = ("right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right")
PRETRAIN_TURNS = (1, 2, 3, 5, 6, 7)
MAX_HARD_CLASSES = 8

# Sizes and speeds as fractions of min(H, W) (64 px frames: object 9-13 px, 1.4-2.2 px per frame, distractor
# wobble up to 0.4 px per axis and frame, pan up to 0.6 px per frame).
OBJECT_SIZE = (0.14, 0.20)
OBJECT_SPEED = (0.022, 0.034)  # per frame, along the motion (diagonals: the same speed, not per axis)
JITTER = 0.006  # distractor step per axis, uniform in [-JITTER, JITTER]
PAN_SPEED = 0.01
DISTRACTORS = {"target": 3, "pretrain": 5, "pretrain_object": 3}  # per task, the dataset's default
GRID = 16  # positions and velocities are multiples of 1 / GRID pixel (exact arithmetic)


@dataclass(frozen=True)
class HardClass:
    """A class of the hard task: ``first`` then ``second`` (target), or ``first`` alone (pretrain: the direction
    of the first half)."""

    first: str
    second: str | None = None  # None: a pretrain class (the second motion is the video's: HardScene.turn)
    group: bool = True  # a pretrain class: every sprite moves with it (False: the object alone, pretrain_object)

    @property
    def name(self) -> str:
        return f"moving {self.first} " + (f"then {self.second}" if self.second else "first")

    def reversed(self) -> HardClass:
        """The class of this target class's videos played backwards (a pretrain video's reversal depends on its
        scene's turn: :func:`reverse_video`)."""
        if self.second is None:
            raise ValueError("a pretrain class's reversal depends on the video's turn: use reverse_video")
        return HardClass(OPPOSITE[self.second], OPPOSITE[self.first])

    @property
    def moves_group(self) -> bool:
        """Every sprite moves with the class (the pretrain task); else the distractors ride on the background."""
        return self.second is None and self.group


@dataclass(frozen=True)
class Sprite:
    kind: str  # "square" | "disc"
    size: int
    colour: tuple[int, int, int]


@dataclass(frozen=True)
class HardScene:
    """Everything a video looks like and every motion but the class's: drawn without knowing the class."""

    texture: np.ndarray  # (H, W, 3) uint8, periodic: the background, rolled by the pan
    pan_start: tuple[float, float]  # (y, x) roll at frame 0, pixels
    pan_velocity: tuple[float, float]  # pixels per frame
    sprite: Sprite  # the object
    start: tuple[float, float]  # the object's top-left at frame 0 (torus coordinates)
    speed: float  # the object's pixels per frame along its motion
    distractors: tuple[Sprite, ...]
    distractor_paths: np.ndarray  # (D, T, 2) float64 top-left per frame (unwrapped), multiples of 1/GRID
    distractor_speeds: tuple[float, ...]  # pixels per frame when they move with the class (pretrain task)
    num_frames: int
    turn: int = 2  # pretrain task: the rotation at the middle, in eighths of a turn (counter-clockwise on screen)

    @property
    def size(self) -> tuple[int, int]:
        return self.texture.shape[0], self.texture.shape[1]


def hard_classes(task: str, *, num_classes: int) -> list[HardClass]:
    """The first ``num_classes`` classes of ``task`` (before the alphabetical index order is applied)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if not 2 <= num_classes <= MAX_HARD_CLASSES:
        raise ValueError(f"num_classes must be in 2..{MAX_HARD_CLASSES} for the hard style, got {num_classes}")
    if task == "target":
        return [HardClass(a, b) for a, b in TARGET_TURNS[:num_classes]]
    return [HardClass(d, group=task == "pretrain") for d in PRETRAIN_DIRECTIONS[:num_classes]]


def sample_hard_scene(rng: np.random.Generator, *, height: int, width: int, num_frames: int,
                      distractors: int = 3) -> HardScene:
    """Background, pan, object and distractors of one video. Takes no class: appearance is independent of it."""
    extent = min(height, width)
    texture = _texture(rng, height=height, width=width)
    mean = texture.reshape(-1, 3).mean(0)
    angle = rng.uniform(0, 2 * math.pi)
    pan = rng.uniform(0, PAN_SPEED) * extent
    pan_velocity = (_q(pan * math.sin(angle)), _q(pan * math.cos(angle)))
    pan_start = (float(rng.integers(height)), float(rng.integers(width)))
    sprite = _sprite(rng, extent, mean)
    start = (float(rng.integers(height)), float(rng.integers(width)))
    speed = _q(rng.uniform(*OBJECT_SPEED) * extent)
    looks, paths, speeds = [], [], []
    copy_first = int(rng.integers(distractors)) if distractors else -1
    for d in range(distractors):
        own = d != copy_first and rng.random() < 0.5
        looks.append(_sprite(rng, extent, mean) if own else sprite)
        origin = np.array([rng.integers(height), rng.integers(width)], dtype=np.float64)
        steps = np.round(rng.uniform(-JITTER, JITTER, size=(num_frames - 1, 2)) * extent * GRID) / GRID
        paths.append(np.concatenate([origin[None], origin + np.cumsum(steps, axis=0)]))
        speeds.append(_q(rng.uniform(*OBJECT_SPEED) * extent))
    turn = int(PRETRAIN_TURNS[rng.integers(len(PRETRAIN_TURNS))])
    return HardScene(texture=texture, pan_start=pan_start, pan_velocity=pan_velocity, sprite=sprite, start=start,
                     speed=speed, distractors=tuple(looks),
                     distractor_paths=np.array(paths, dtype=np.float64).reshape(distractors, num_frames, 2),
                     distractor_speeds=tuple(speeds), num_frames=num_frames, turn=turn)


def motions(scene: HardScene, cls: HardClass) -> tuple[str, str]:
    """The directions of the two halves of a video of ``cls``: the target class's pair, or the pretrain class's
    direction followed by that direction turned by the scene's ``turn``."""
    if cls.second is not None:
        return cls.first, cls.second
    return cls.first, rotate(cls.first, scene.turn)


def rotate(direction: str, eighths: int) -> str:
    """``direction`` turned counter-clockwise on screen (y grows downwards) by ``eighths`` x 45 degrees."""
    return COMPASS[(COMPASS.index(direction) + eighths) % len(COMPASS)]


def object_path(scene: HardScene, cls: HardClass) -> np.ndarray:
    """(T, 2) top-left of the object per frame, unwrapped (torus: take it modulo the frame size)."""
    return _two_motions(np.array(scene.start), scene.speed, motions(scene, cls), scene.num_frames)


def _two_motions(start: np.ndarray, speed: float, directions: tuple[str, str], num_frames: int) -> np.ndarray:
    t = np.arange(num_frames, dtype=np.float64)[:, None]
    turn = (num_frames - 1) / 2
    first, second = (_velocity(d, speed) for d in directions)
    return start + first * np.minimum(t, turn) + second * np.maximum(t - turn, 0.0)


def render_hard(scene: HardScene, cls: HardClass, *, show_object: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(frames (T, H, W, 3) uint8, mask (T, H, W) bool): the scene with the object moving as ``cls`` says, and
    the pixels the object covers (pretrain task: every sprite, all of them move with the class).
    ``show_object=False`` draws the same video without the object (a control: no class is left in the target
    task's videos; the mask is still where the object would be)."""
    height, width = scene.size
    frames = np.empty((scene.num_frames, height, width, 3), dtype=np.uint8)
    mask = np.zeros((scene.num_frames, height, width), dtype=bool)
    path = object_path(scene, cls)
    stamp = _stamp(scene.sprite.kind, scene.sprite.size)
    group = cls.moves_group  # pretrain: every sprite moves as the object does, each at its own speed
    paths = [_two_motions(scene.distractor_paths[d, 0], scene.distractor_speeds[d], motions(scene, cls),
                          scene.num_frames) if group else None for d in range(len(scene.distractors))]
    for t in range(scene.num_frames):
        shift = [int(np.floor(scene.pan_start[i] + scene.pan_velocity[i] * t + 0.5)) for i in (0, 1)]
        frames[t] = np.roll(scene.texture, shift, axis=(0, 1))
        for d, sprite in enumerate(scene.distractors):
            # target: they ride on the background (the pan's whole-pixel shift), wobbling about their place
            place = paths[d][t] if group else scene.distractor_paths[d, t] + shift
            _paste_torus(frames[t], _stamp(sprite.kind, sprite.size), np.array(sprite.colour, np.uint8), place)
            if group:
                _paste_torus(mask[t], _stamp(sprite.kind, sprite.size), np.True_, place)
        _paste_torus(mask[t], stamp, np.True_, path[t])
        if show_object:
            _paste_torus(frames[t], stamp, np.array(scene.sprite.colour, np.uint8), path[t])
    return frames, mask


def reverse_video(scene: HardScene, cls: HardClass) -> tuple[HardScene, HardClass]:
    """The scene and class whose video is this one's played backwards: ``render_hard(*reverse_video(s, c))`` ==
    ``render_hard(s, c)[..., ::-1 in time]``, pixel for pixel."""
    last = scene.num_frames - 1
    end = object_path(scene, cls)[-1]
    pan_end = tuple(scene.pan_start[i] + scene.pan_velocity[i] * last for i in (0, 1))
    if not cls.moves_group:
        back = replace(scene, start=(float(end[0]), float(end[1])), pan_start=pan_end,
                       pan_velocity=(-scene.pan_velocity[0], -scene.pan_velocity[1]),
                       distractor_paths=scene.distractor_paths[:, ::-1].copy())
        if cls.second is not None:
            return back, cls.reversed()
        # pretrain_object: "first d1 then d2" backwards is "first opposite(d2) then opposite(d1)", the turn undone
        return replace(back, turn=-scene.turn % len(COMPASS)), HardClass(OPPOSITE[motions(scene, cls)[1]],
                                                                        group=False)
    # pretrain: "first d1 then d2" backwards is "first opposite(d2) then opposite(d1)", the turn undone; the
    # distractors' paths (group motion) start where they ended
    first, second = motions(scene, cls)
    ends = [_two_motions(scene.distractor_paths[d, 0], scene.distractor_speeds[d], (first, second),
                         scene.num_frames)[-1] for d in range(len(scene.distractors))]
    paths = scene.distractor_paths.copy()
    paths[:, 0] = np.array(ends).reshape(-1, 2)
    return replace(scene, start=(float(end[0]), float(end[1])), pan_start=pan_end,
                   pan_velocity=(-scene.pan_velocity[0], -scene.pan_velocity[1]), distractor_paths=paths,
                   turn=-scene.turn % len(COMPASS)), HardClass(OPPOSITE[second])


def _q(value: float) -> float:
    return round(value * GRID) / GRID


def _velocity(direction: str, speed: float) -> np.ndarray:
    dy, dx = UNITS[direction]
    norm = math.hypot(dy, dx)
    return np.array([_q(speed * dy / norm), _q(speed * dx / norm)])


def _sprite(rng: np.random.Generator, extent: int, background_mean: np.ndarray) -> Sprite:
    return Sprite(kind=("square", "disc")[int(rng.integers(2))],
                  size=max(3, round(rng.uniform(*OBJECT_SIZE) * extent)),
                  colour=_bright_colour(rng, background_mean))


def _texture(rng: np.random.Generator, *, height: int, width: int) -> np.ndarray:
    # Periodic by construction (so rolling it shows no seam): low-pass filtered white noise (FFT) plus stripes
    # with whole numbers of periods across the frame. Darker than the sprites and of limited contrast, as the
    # other styles' backgrounds; the pan moves every background token from frame to frame.
    base = rng.uniform(20, 110, size=3)
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.fftfreq(width)[None, :]
    cutoff = rng.uniform(0.04, 0.12)
    low = np.exp(-(fy ** 2 + fx ** 2) / (2 * cutoff ** 2))
    noise = np.stack([np.fft.ifft2(np.fft.fft2(rng.normal(size=(height, width))) * low).real for _ in range(3)], -1)
    noise *= rng.uniform(12, 24) / max(noise.std(), 1e-6)
    ky, kx = int(rng.integers(-6, 7)), int(rng.integers(1, 7))
    yy, xx = np.mgrid[0:height, 0:width]
    wave = np.sin(2 * math.pi * (ky * yy / height + kx * xx / width) + rng.uniform(0, 2 * math.pi))
    tint = rng.normal(size=3)
    stripes = rng.uniform(5, 18) * wave[..., None] * (tint / np.linalg.norm(tint))
    return np.clip(base + noise + stripes, 0, 255).round().astype(np.uint8)


def _paste_torus(canvas: np.ndarray, stamp: np.ndarray, value, top_left: np.ndarray) -> None:
    # Wrapped onto the torus: drawn at its place and, where it crosses an edge, again one frame size away.
    height, width = canvas.shape[:2]
    top = int(np.floor(top_left[0] + 0.5)) % height
    left = int(np.floor(top_left[1] + 0.5)) % width
    for dy in (0, -height):
        for dx in (0, -width):
            _paste(canvas, stamp, value, top=top + dy, left=left + dx)
