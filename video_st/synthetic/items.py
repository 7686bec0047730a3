"""What a generated dataset holds before any pixel is drawn: per video its split, label, appearance seed, file
name and annotation entry, in the naming of the real datasets (K400: ``{split}/{youtube_id}_{start}_{end}.mp4``
with 11-character YouTube ids and 10 s windows; SSv2: ``videos/{id}.webm`` with ids in SSv2's range and a label
made from the template and an object)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .files import SPLITS
from .hard import HardClass
from .scenes import Motion

SSV2_OBJECTS = (
    "ball", "box", "cup", "book", "bottle", "phone", "pen", "remote control", "spoon", "toy car", "apple",
    "shoe", "key", "wallet", "mug", "paper", "lighter", "scissors", "coin", "charger",
)
SSV2_MAX_ID = 220847  # real SSv2 ids are 1..220847
_YOUTUBE_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"))

Plan = list[tuple[str, int, int]]  # (split, label, appearance seed) per video


@dataclass(frozen=True)
class Item:
    split: str
    label: int  # class index (alphabetical order)
    motion: Motion | HardClass
    seed: int  # appearance seed of this video, drawn independently of the label
    relpath: str
    row: dict  # the annotation entry (K400 CSV row or SSv2 JSON object)


def plan_labels(rng: np.random.Generator, *, num_classes: int, counts: dict[str, int]) -> Plan:
    """(split, label, appearance seed) per video; shuffled within a split so classes are not in blocks."""
    plan = []
    for split in SPLITS:
        labels = np.repeat(np.arange(num_classes), counts[split])
        labels = labels[rng.permutation(len(labels))]
        seeds = rng.integers(0, 2**63, size=len(labels))  # one independent stream per video
        plan += [(split, int(label), int(s)) for label, s in zip(labels, seeds, strict=True)]
    return plan


def k400_items(rng: np.random.Generator, *, plan: Plan, motions: Sequence[Motion | HardClass],
               classes: Sequence[str]) -> list[Item]:
    ids: set[str] = set()
    items = []
    for split, label, seed in plan:
        youtube_id = _unique(ids, lambda: "".join(_YOUTUBE_ALPHABET[rng.integers(0, 64, size=11)]))
        time_start = int(rng.integers(0, 291))
        time_end = time_start + 10  # real K400 clips are 10 s windows of a YouTube video
        relpath = f"{split}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"
        row = {"label": classes[label], "youtube_id": youtube_id, "time_start": time_start, "time_end": time_end,
               "split": split}
        items.append(Item(split=split, label=label, motion=motions[label], seed=seed, relpath=relpath, row=row))
    return items


def ssv2_items(rng: np.random.Generator, *, plan: Plan, motions: Sequence[Motion],
               classes: Sequence[str]) -> list[Item]:
    ids = rng.choice(SSV2_MAX_ID, size=len(plan), replace=False) + 1
    items = []
    for (split, label, seed), video_id in zip(plan, ids, strict=True):
        template = motions[label].ssv2_template
        obj = SSV2_OBJECTS[int(rng.integers(len(SSV2_OBJECTS)))]
        row = {"id": str(int(video_id)), "label": template.replace("[something]", obj).lower(),
               "template": template, "placeholders": [obj]}
        items.append(Item(split=split, label=label, motion=motions[label], seed=seed,
                          relpath=f"videos/{int(video_id)}.webm", row=row))
    return items


def _unique(seen: set[str], draw: Callable[[], str]) -> str:
    value = draw()
    while value in seen:
        value = draw()
    seen.add(value)
    return value
