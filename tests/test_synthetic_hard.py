"""The hard generated style: K400 layout the project's reader takes, ground-truth masks that line up with the
object in the decoded pixels, classes that differ only in the order of their motions, determinism. Small sets
(16 frames of 64 x 64): the file runs in seconds."""

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from video_st.data.annotations import read_k400_csv
from video_st.data.decode import read_frames
from video_st.data.masks import load_masks, masks_path, read_masks
from video_st.synthetic.datasets import make_dataset, make_hard_style
from video_st.synthetic.hard import (TARGET_TURNS, HardClass, hard_classes, render_hard, reverse_video,
                                     sample_hard_scene)

FRAMES, SIZE = 16, 64
SMALL = dict(num_classes=8, train_per_class=1, val_per_class=2, seed=11)
CHANGED = 24  # |with object - without| above this on some channel: a pixel the object changed (codec error ~20)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same small set twice: with the object, and without it (same seed: same everything else)."""
    root = tmp_path_factory.mktemp("hard")
    return (make_hard_style(root / "with", **SMALL), make_hard_style(root / "without", show_object=False, **SMALL))


def _tree_digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def _grow(mask: np.ndarray, steps: int) -> np.ndarray:
    """Dilate (T, H, W) masks by ``steps`` pixels in each frame (4-neighbourhood), not across frames."""
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        grown[:, :, 1:] |= out[:, :, :-1]
        grown[:, :, :-1] |= out[:, :, 1:]
        out = grown
    return out


def test_layout_annotations_and_masks_file(pair):
    summary = pair[0]
    root = Path(summary.root)
    classes = json.loads((root / "classes.json").read_text())
    assert classes == sorted(classes) and len(classes) == 8 and "moving right then up" in classes
    for split, per_class in (("train", 1), ("val", 2)):
        records, names = read_k400_csv(root / "annotations" / f"{split}.csv", root)
        assert names == classes and len(records) == 8 * per_class
        assert sorted(r.label for r in records) == sorted(list(range(8)) * per_class)
        assert all(Path(r.path).is_file() and r.path.endswith(".mp4") for r in records)
        assert summary.mask_files[split] == masks_path(root, split)
        masks = load_masks(root, split)
        assert set(masks) == {r.video_id for r in records}  # one mask per video, keyed by the reader's video id
        for mask in masks.values():
            assert mask.dtype == bool and mask.shape == (FRAMES, SIZE, SIZE)
            assert mask.any(axis=(1, 2)).all()  # the object is on screen in every frame (the world is a torus)
        # The documented format, read with numpy alone.
        with np.load(root / "annotations" / f"{split}_masks.npz") as f:
            assert list(f["__meta__"]) == [1, SIZE, SIZE]
            vid = records[0].video_id
            assert f[vid].dtype == np.uint8 and f[vid].shape == (FRAMES, SIZE, SIZE // 8)
            assert np.array_equal(np.unpackbits(f[vid], axis=-1, count=SIZE).astype(bool), masks[vid])


def test_masks_line_up_with_the_object_in_the_decoded_pixels(pair):
    """Decode each video and its twin rendered without the object: the pixels that change are the mask's."""
    with_object, without = pair
    changed_in, inside, changed_out, outside = 0, 0, 0, 0
    iou_by_shift = {}
    for split in ("train", "val"):
        records, _ = read_k400_csv(with_object.annotation_files[split], with_object.root)
        masks = read_masks(with_object.mask_files[split])
        for record in records:
            a = read_frames(record.path, list(range(FRAMES))).astype(np.int16)
            b = read_frames(record.path.replace(with_object.root, without.root), list(range(FRAMES))).astype(np.int16)
            changed = np.abs(a - b).max(axis=-1) > CHANGED
            mask = masks[record.video_id]
            core = mask & ~_grow(~mask, 1)  # codec: chroma at half resolution blurs the object's edge
            far = ~_grow(mask, 2)
            changed_in += int(changed[core].sum())
            inside += int(core.sum())
            changed_out += int(changed[far].sum())
            outside += int(far.sum())
            for shift in ((0, 0), (0, 1), (1, 0), (0, -2), (-2, 0), (3, 3)):
                moved = np.roll(mask, shift, axis=(1, 2))
                iou = (changed & moved).sum() / (changed | moved).sum()
                iou_by_shift[shift] = iou_by_shift.get(shift, 0.0) + iou / (3 * 8)
    # Inside, the object replaced what was beneath it (except where it lay on a distractor of its own look).
    assert changed_in / inside > 0.85
    # Away from it, only codec noise: nothing else in the video depends on the object.
    assert changed_out / outside < 0.002
    # Pixel-exact: the mask agrees best unshifted; a one-pixel shift is already worse.
    assert max(iou_by_shift, key=iou_by_shift.get) == (0, 0)
    assert iou_by_shift[(0, 0)] > 0.75 and iou_by_shift[(0, 1)] < iou_by_shift[(0, 0)] - 0.05


def test_order_classes_differ_only_in_order():
    """Played backwards a video is one of another class (same pixels reversed); "A then B" and "B then A" share
    their first and last frames (same start, same displacement) and differ in between."""
    classes = hard_classes("target", num_classes=8)
    names = {c.name for c in classes}
    for seed in range(3):
        scene = sample_hard_scene(np.random.default_rng(seed), height=SIZE, width=SIZE, num_frames=FRAMES)
        for cls in classes:
            frames, mask = render_hard(scene, cls)
            back_scene, back = reverse_video(scene, cls)
            assert back.name in names and back != cls and back.reversed() == cls
            back_frames, back_mask = render_hard(back_scene, back)
            assert np.array_equal(back_frames, frames[::-1]) and np.array_equal(back_mask, mask[::-1])
        for first, second in TARGET_TURNS:
            ab, _ = render_hard(scene, HardClass(first, second))
            ba, _ = render_hard(scene, HardClass(second, first))
            assert np.array_equal(ab[0], ba[0]) and np.array_equal(ab[-1], ba[-1])
            assert not np.array_equal(ab[FRAMES // 2 - 2], ba[FRAMES // 2 - 2])


def test_a_frame_does_not_depend_on_the_class():
    """Frame 0 is the same whatever the class, and without the object no class is left in the video."""
    scene = sample_hard_scene(np.random.default_rng(5), height=SIZE, width=SIZE, num_frames=FRAMES)
    firsts = [render_hard(scene, cls)[0][0] for cls in hard_classes("target", num_classes=8)]
    assert all(np.array_equal(f, firsts[0]) for f in firsts)
    empty = [render_hard(scene, cls, show_object=False)[0] for cls in hard_classes("target", num_classes=8)]
    assert all(np.array_equal(e, empty[0]) for e in empty)


def test_pretrain_task_moves_every_sprite_with_the_class_and_turns_whatever_the_class(tmp_path):
    """Pretrain classes are the first half's direction; every sprite moves with it (foreground too) and turns at
    the middle by the video's own rotation, so the second half does not tell the class; reversal is exact."""
    summary = make_hard_style(tmp_path / "pre", task="pretrain", num_classes=8, train_per_class=1, val_per_class=0,
                              seed=2)
    classes = json.loads(Path(summary.classes_file).read_text())
    assert "moving up-right first" in classes and "moving left first" in classes
    scene = sample_hard_scene(np.random.default_rng(0), height=SIZE, width=SIZE, num_frames=FRAMES, distractors=3)
    lone = sample_hard_scene(np.random.default_rng(0), height=SIZE, width=SIZE, num_frames=FRAMES, distractors=0)
    _, mask = render_hard(scene, HardClass("right"))
    _, lone_mask = render_hard(lone, HardClass("right"))
    assert mask.sum() > 2 * lone_mask.sum()  # the distractors move with the class: foreground too
    # The object's path, measured from the mask of a lone object: the first half goes right, the second does not.
    # The frame is a torus: circular means of the covered rows and columns, steps unwrapped.
    angles = [np.exp(2j * np.pi * np.argwhere(m) / SIZE).mean(0) for m in lone_mask]
    steps = np.angle(np.array(angles[1:]) / np.array(angles[:-1])) * SIZE / (2 * np.pi)  # (T - 1, 2) (dy, dx)
    half = FRAMES // 2
    first_step, second_step = steps[:half - 1].sum(0), steps[half:].sum(0)
    assert first_step[1] > 4 and abs(first_step[0]) < 1
    assert not (second_step[1] > 4 and abs(second_step[0]) < 1)
    turns = {sample_hard_scene(np.random.default_rng(s), height=SIZE, width=SIZE, num_frames=FRAMES).turn
             for s in range(40)}
    assert turns == {1, 2, 3, 5, 6, 7}  # never straight on, never back; independent of the class by construction
    names = {c.name for c in hard_classes("pretrain", num_classes=8)}
    for cls in hard_classes("pretrain", num_classes=8):
        frames, mask = render_hard(scene, cls)
        back_scene, back = reverse_video(scene, cls)
        back_frames, back_mask = render_hard(back_scene, back)
        assert back.name in names
        assert np.array_equal(back_frames, frames[::-1]) and np.array_equal(back_mask, mask[::-1])


def test_pretrain_object_task_moves_the_object_alone():
    """pretrain_object: the same classes and turns, but the distractors ride on the background as in the target
    task: the mask is the object's alone, every distractor pixel is the same whatever the class, and the
    reversal is exact."""
    scene = sample_hard_scene(np.random.default_rng(3), height=SIZE, width=SIZE, num_frames=FRAMES, distractors=3)
    solo = hard_classes("pretrain_object", num_classes=8)
    assert [c.name for c in solo] == [c.name for c in hard_classes("pretrain", num_classes=8)]
    for cls in solo:
        frames, mask = render_hard(scene, cls)
        empty, _ = render_hard(scene, cls, show_object=False)
        # the object's pixels only, not the distractors': its whole area on every frame, and all the pixels
        # the object changes (measured from the rendered frames)
        area = (render_hard(replace(scene, distractors=(), distractor_paths=scene.distractor_paths[:0]),
                            cls)[1]).sum(axis=(1, 2))
        assert np.array_equal(mask.sum(axis=(1, 2)), area) and area.min() > 0
        assert not np.any((frames != empty).any(-1) & ~mask)
        assert np.array_equal(empty, render_hard(scene, solo[0], show_object=False)[0])  # no class without it
        assert np.any(frames != empty)
        back_scene, back = reverse_video(scene, cls)
        back_frames, back_mask = render_hard(back_scene, back)
        assert back in solo and np.array_equal(back_frames, frames[::-1]) and np.array_equal(back_mask, mask[::-1])
    grouped, _ = render_hard(scene, HardClass("right"), show_object=False)
    assert not np.array_equal(grouped, render_hard(scene, HardClass("left"), show_object=False)[0])


def test_same_seed_same_bytes_and_corrupt_files_keep_their_masks(pair, tmp_path):
    again = make_hard_style(tmp_path / "again", **SMALL)
    assert _tree_digest(again.root) == _tree_digest(pair[0].root)
    other = make_hard_style(tmp_path / "other", **{**SMALL, "seed": 12})
    assert _tree_digest(other.root) != _tree_digest(pair[0].root)
    planted = make_hard_style(tmp_path / "corrupt", corrupt={"zero": 1, "truncated": 1}, **SMALL)
    assert len(planted.corrupt) == 2
    for bad in planted.corrupt:
        assert Path(bad.path).stem in load_masks(planted.root, bad.split)


def test_options_belong_to_the_hard_style(tmp_path):
    with pytest.raises(ValueError, match="hard style"):
        make_dataset(tmp_path / "a", style="k400", task="pretrain")
    with pytest.raises(ValueError, match="num_classes"):
        make_hard_style(tmp_path / "b", num_classes=9)
    with pytest.raises(ValueError, match="task"):
        make_hard_style(tmp_path / "c", task="other")
    with pytest.raises(ValueError, match=">= 4"):
        make_hard_style(tmp_path / "d", num_frames=3)


def test_tool_writes_a_hard_set(tmp_path, capsys):
    from tools.make_synthetic_dataset import main  # tools/ is importable from the repository root

    assert main(["--style", "hard", "--task", "pretrain", "--out", str(tmp_path / "p"), "--classes", "4",
                 "--train-per-class", "1", "--val-per-class", "1", "--distractors", "1"]) == 0
    assert "hard: 8 videos" in capsys.readouterr().out
    assert set(read_masks(tmp_path / "p" / "annotations" / "val_masks.npz")) and len(
        list((tmp_path / "p" / "train").iterdir())) == 4
    with pytest.raises(SystemExit):
        main(["--style", "k400", "--out", str(tmp_path / "k"), "--task", "pretrain"])
    assert "options of --style hard" in capsys.readouterr().err
