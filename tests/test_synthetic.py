"""The synthetic datasets: real K400 / SSv2 file formats, decodable videos, planted corrupt files, determinism,
and classes that only motion can tell apart. Small sizes: the whole file runs in seconds on a CPU."""

import csv
import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import av
import decord
import numpy as np
import pytest

from video_st.synthetic.corrupt import CORRUPT_KINDS, parse_corrupt_spec
from video_st.synthetic.datasets import make_k400_style, make_ssv2_style
from video_st.synthetic.scenes import Motion, render_frames, sample_scene

REPO = Path(__file__).resolve().parents[1]
FRAMES, HEIGHT, WIDTH = 12, 48, 64
CORRUPT = {"zero": 1, "truncated": 1, "garbage": 1}
K400_NAME = re.compile(r"^[A-Za-z0-9_-]{11}_\d{6}_\d{6}\.mp4$")
K400_HEADER = "label,youtube_id,time_start,time_end,split"
SSV2_FILES = ("something-something-v2-labels.json", "something-something-v2-train.json",
              "something-something-v2-validation.json")

# Written independently of the library: what each label promises, as (dy, dx) with y growing downwards.
K400_DIRECTION = {"moving left": (0, -1), "moving right": (0, 1), "moving up": (-1, 0), "moving down": (1, 0)}
SSV2_DIRECTION = {"from left to right": (0, 1), "from right to left": (0, -1), " up": (-1, 0), " down": (1, 0)}

decord.logging.set_level(decord.logging.QUIET)
av.logging.set_level(av.logging.PANIC)


@pytest.fixture(scope="module")
def k400(tmp_path_factory):
    root = tmp_path_factory.mktemp("k400")
    summary = make_k400_style(root, num_classes=2, train_per_class=4, val_per_class=2, num_frames=FRAMES,
                              height=HEIGHT, width=WIDTH, seed=3, corrupt=CORRUPT)
    return root, summary


@pytest.fixture(scope="module")
def ssv2(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssv2")
    summary = make_ssv2_style(root, num_classes=4, train_per_class=2, val_per_class=1, num_frames=FRAMES,
                              height=HEIGHT, width=WIDTH, seed=5, corrupt=CORRUPT)
    return root, summary


# ------------------------------------------------------------------------------------------ readers of the formats


def k400_videos(root: Path) -> list[tuple[str, str, str]]:
    """(path relative to root, label, split) of every annotation row."""
    out = []
    for split in ("train", "val"):
        with open(root / "annotations" / f"{split}.csv", newline="") as f:
            for row in csv.DictReader(f):
                name = f"{row['youtube_id']}_{int(row['time_start']):06d}_{int(row['time_end']):06d}.mp4"
                out.append((f"{split}/{name}", row["label"], split))
    return out


def ssv2_videos(root: Path) -> list[tuple[str, str, str]]:
    out = []
    for split, name in (("train", SSV2_FILES[1]), ("val", SSV2_FILES[2])):
        out += [(f"videos/{e['id']}.webm", e["template"], split) for e in json.loads((root / name).read_text())]
    return out


def expected_direction(label: str) -> tuple[int, int]:
    if label in K400_DIRECTION:
        return K400_DIRECTION[label]
    return next(d for key, d in SSV2_DIRECTION.items() if label.endswith(key))


def valid_videos(root: Path, videos):
    corrupt = {c["path"] for c in json.loads((root / "corrupt.json").read_text())}
    return [v for v in videos if v[0] not in corrupt]


def decord_frames(path: Path) -> np.ndarray:
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def shift_per_frame(frames: np.ndarray, max_shift: int = 14) -> tuple[int, int]:
    """The axis-aligned displacement (dy, dx) that best maps the changing pixels of frame t onto frame t + 1.

    Block matching over the pixels that change (the shapes' old and new places): at the true shift the shape at
    t + 1 equals the shape at t moved; the opposite shift mismatches about three times as many pixels. Only the
    sign is reliable: for a solid shape any shift between the true one and the shape's size fits about as well."""
    frames = frames.astype(np.float32)
    candidates = [(0, k) for k in range(-max_shift, max_shift + 1) if k] + \
                 [(k, 0) for k in range(-max_shift, max_shift + 1) if k]
    errors = np.zeros(len(candidates))
    for a, b in itertools.pairwise(frames):
        changed = np.abs(b - a).sum(-1) > 40  # RGB, so a shape differing from the background in hue still counts
        if changed.sum() < 4:
            continue
        for i, shift in enumerate(candidates):
            errors[i] += np.abs(b - np.roll(a, shift, axis=(0, 1))).sum(-1)[changed].mean()
    return candidates[int(errors.argmin())]


# ------------------------------------------------------------------------------------------ formats


def test_k400_layout_and_annotations(k400):
    root, summary = k400
    classes = json.loads((root / "classes.json").read_text())
    assert classes == ["moving left", "moving right"] == list(summary.classes)
    for split, count in (("train", 8), ("val", 4)):
        path = root / "annotations" / f"{split}.csv"
        assert path.read_text().splitlines()[0] == K400_HEADER
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == count == summary.num_videos[split]
        assert {r["split"] for r in rows} == {split}
        assert {r["label"] for r in rows} == set(classes)
        for label in classes:  # balanced
            assert sum(r["label"] == label for r in rows) == count // 2
        for r in rows:
            assert int(r["time_end"]) - int(r["time_start"]) == 10
    videos = k400_videos(root)
    names = [Path(p).name for p, _, _ in videos]
    assert all(K400_NAME.match(n) for n in names), names
    assert len({n[:11] for n in names}) == len(names)  # unique youtube ids
    assert all((root / p).is_file() for p, _, _ in videos)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*.mp4")) == sorted(p for p, _, _ in videos)
    assert not list(root.rglob("*.tmp"))
    assert str(summary.annotation_files["train"]) == str(root / "annotations" / "train.csv")


def test_ssv2_layout_and_annotations(ssv2):
    root, summary = ssv2
    labels = json.loads((root / SSV2_FILES[0]).read_text())
    classes = json.loads((root / "classes.json").read_text())
    assert labels == {name: str(i) for i, name in enumerate(classes)}
    assert "Moving something from left to right" in labels and "Moving something from right to left" in labels
    assert not any("[" in name for name in labels)
    ids = []
    for name, split, count in ((SSV2_FILES[1], "train", 8), (SSV2_FILES[2], "val", 4)):
        entries = json.loads((root / name).read_text())
        assert len(entries) == count == summary.num_videos[split]
        for e in entries:
            assert set(e) == {"id", "label", "template", "placeholders"}
            assert e["id"].isdigit() and "[something]" in e["template"]
            assert e["template"].replace("[", "").replace("]", "") in labels
            assert e["label"] == e["template"].replace("[something]", e["placeholders"][0]).lower()
            assert (root / "videos" / f"{e['id']}.webm").is_file()
        ids += [e["id"] for e in entries]
    assert len(set(ids)) == len(ids) == len(list((root / "videos").glob("*.webm")))
    assert not list(root.rglob("*.tmp"))


def test_corrupt_list_matches_planted_files(k400, ssv2):
    for (root, summary), videos in ((k400, k400_videos(k400[0])), (ssv2, ssv2_videos(ssv2[0]))):
        listed = json.loads((root / "corrupt.json").read_text())
        assert sorted(c["kind"] for c in listed) == sorted(CORRUPT_KINDS)
        annotated = {p: split for p, _, split in videos}
        for c in listed:
            assert annotated[c["path"]] == c["split"]  # corrupt files keep their annotation rows
        assert [c.to_json() for c in summary.corrupt] == listed
        sizes = {c["kind"]: os.path.getsize(root / c["path"]) for c in listed}
        assert sizes["zero"] == 0 and sizes["truncated"] > 0 and sizes["garbage"] > 0


# ------------------------------------------------------------------------------------------ decoding


@pytest.mark.parametrize("style", ["k400", "ssv2"])
def test_valid_videos_decode_identically_in_decord_and_pyav(style, k400, ssv2):
    root, _ = k400 if style == "k400" else ssv2
    videos = valid_videos(root, k400_videos(root) if style == "k400" else ssv2_videos(root))
    assert len(videos) == 9
    for rel, _, _ in videos:
        path = str(root / rel)
        reader = decord.VideoReader(path)
        assert len(reader) == FRAMES
        with av.open(path) as container:
            assert len(container.streams.video) == 1 and len(container.streams.audio) == 0
            stream = container.streams.video[0]
            assert stream.codec_context.name == ("h264" if style == "k400" else "vp9")
            assert stream.codec_context.pix_fmt == "yuv420p"
            reference = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        assert len(reference) == FRAMES
        indices = [0, FRAMES // 2, FRAMES - 1]
        frames = reader.get_batch(indices).asnumpy()
        assert frames.shape == (3, HEIGHT, WIDTH, 3)
        for row, index in enumerate(indices):
            np.testing.assert_array_equal(frames[row], reference[index])


@pytest.mark.parametrize("style", ["k400", "ssv2"])
def test_corrupt_videos_fail_in_decord(style, k400, ssv2):
    root, _ = k400 if style == "k400" else ssv2
    for c in json.loads((root / "corrupt.json").read_text()):
        path = str(root / c["path"])
        # A truncated file may open (WebM, or an MP4 with its index first) and then lack or fail its last frames:
        # reading the last frame the annotation promises must fail.
        with pytest.raises((RuntimeError, decord.DECORDError, IndexError)):
            decord.VideoReader(path).get_batch([FRAMES - 1]).asnumpy()


# ------------------------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("make", [make_k400_style, make_ssv2_style])
def test_same_seed_same_dataset_other_seed_differs(make, tmp_path):
    kwargs = {"num_classes": 2, "train_per_class": 1, "val_per_class": 1, "num_frames": 6, "height": HEIGHT,
              "width": WIDTH, "corrupt": {"garbage": 1}}
    runs = {name: make(tmp_path / name, seed=seed, **kwargs) for name, seed in (("a", 7), ("b", 7), ("c", 8))}

    def text_files(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.suffix in (".csv", ".json")}

    def decoded(root: Path) -> dict[str, np.ndarray]:
        corrupt = {c["path"] for c in json.loads((root / "corrupt.json").read_text())}
        return {str(p.relative_to(root)): decord_frames(p) for p in sorted(root.rglob("*"))
                if p.suffix in (".mp4", ".webm") and str(p.relative_to(root)) not in corrupt}

    assert text_files(tmp_path / "a") == text_files(tmp_path / "b")
    # Bytes too (single-threaded, CPU-independent encoders, bit-exact muxers); frames below say it for pixels.
    videos_a = sorted(p for p in (tmp_path / "a").rglob("*") if p.suffix in (".mp4", ".webm"))
    assert [p.read_bytes() for p in videos_a] == [(tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes()
                                                  for p in videos_a]
    frames_a, frames_b = decoded(tmp_path / "a"), decoded(tmp_path / "b")
    assert frames_a.keys() == frames_b.keys() and len(frames_a) == 3
    for name in frames_a:
        np.testing.assert_array_equal(frames_a[name], frames_b[name])
    assert runs["a"].classes == runs["c"].classes
    assert text_files(tmp_path / "a") != text_files(tmp_path / "c")
    frames_c = decoded(tmp_path / "c")
    assert not any(a.shape == c.shape and np.array_equal(a, c) for a in frames_a.values() for c in frames_c.values())


# ------------------------------------------------------------------------------------------ the class is the motion


@pytest.mark.parametrize("style", ["k400", "ssv2"])
def test_decoded_motion_matches_the_label(style, k400, ssv2):
    root, _ = k400 if style == "k400" else ssv2
    videos = valid_videos(root, k400_videos(root) if style == "k400" else ssv2_videos(root))
    seen = set()
    for rel, label, _ in videos:
        dy, dx = shift_per_frame(decord_frames(root / rel))
        direction = expected_direction(label)
        assert (np.sign(dy), np.sign(dx)) == direction, (rel, label, (dy, dx))
        seen.add(direction)
    assert len(seen) == (2 if style == "k400" else 4)


def test_every_class_motion_direction_and_speed():
    # Exact, before encoding: one shape on a flat background, its centroid from frame 0 to frame 1.
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(6):
        scene = sample_scene(rng, height=HEIGHT, width=WIDTH)
        shape = dataclasses.replace(scene.shapes[0], colour=(255, 255, 255))  # visible on black whatever it was
        scene = dataclasses.replace(scene, background=np.zeros_like(scene.background), shapes=(shape,))
        for direction, expected in {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}.items():
            for fast, (low, high) in ((False, (0.06, 0.081)), (True, (0.119, 0.161))):
                frames = render_frames(scene, motion=Motion(direction, fast=fast), num_frames=2)
                masks = frames.any(-1)
                ys, xs = np.nonzero(masks[1])
                if ys.min() == 0 or xs.min() == 0 or ys.max() == HEIGHT - 1 or xs.max() == WIDTH - 1:
                    continue  # partly outside the frame: the centroid is not the shape's
                (y0, x0), (y1, x1) = (np.argwhere(m).mean(0) for m in masks)
                dy, dx = y1 - y0, x1 - x0
                assert (np.sign(round(dy)), np.sign(round(dx))) == expected
                extent = HEIGHT if dy else WIDTH
                assert low * extent - 1 <= abs(dy) + abs(dx) <= high * extent + 1, (direction, fast, dy, dx)
                checked += 1
    assert checked >= 20


def test_first_frame_does_not_depend_on_the_class():
    rng = np.random.default_rng(1)
    motions = [Motion(d, fast=f) for d in ("left", "right", "up", "down") for f in (False, True)]
    for _ in range(5):
        scene = sample_scene(rng, height=HEIGHT, width=WIDTH)
        videos = [render_frames(scene, motion=m, num_frames=3) for m in motions]
        for video in videos[1:]:
            np.testing.assert_array_equal(video[0], videos[0][0])  # same appearance -> same first frame
        assert len({video[1].tobytes() for video in videos}) == len(motions)  # the motion shows from frame 1


def test_first_frame_statistics_overlap_between_classes(tmp_path):
    # On generated (encoded) data: the mean colour of frame 0 spans overlapping ranges in both classes.
    make_k400_style(tmp_path, num_classes=2, train_per_class=10, val_per_class=0, num_frames=2, height=40,
                    width=40, seed=11)
    means: dict[str, list[np.ndarray]] = {}
    for rel, label, _ in k400_videos(tmp_path):
        means.setdefault(label, []).append(decord_frames(tmp_path / rel)[0].reshape(-1, 3).mean(0))
    a, b = (np.stack(v) for v in means.values())
    assert np.all((a.min(0) < b.max(0)) & (b.min(0) < a.max(0)))


# ------------------------------------------------------------------------------------------ arguments and CLI


def test_bad_arguments_are_refused(tmp_path):
    small = {"num_classes": 2, "train_per_class": 1, "val_per_class": 1, "num_frames": 4, "height": HEIGHT,
             "width": WIDTH}
    for override, message in (({"num_classes": 9}, "num_classes"), ({"width": 96}, "decord"),
                              ({"height": 47}, "even"), ({"num_frames": 1}, "num_frames"),
                              ({"corrupt": {"zero": 5}}, "corrupt files"), ({"corrupt": {"bad": 1}}, "unknown")):
        with pytest.raises(ValueError, match=message):
            make_k400_style(tmp_path / "x", **{**small, **override})
    assert not (tmp_path / "x").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        make_ssv2_style(tmp_path / "full", **small)
    make_ssv2_style(tmp_path / "full", overwrite=True, **small)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"  # overwrite replaces only generated files
    assert parse_corrupt_spec("zero:1, garbage:2") == {"zero": 1, "garbage": 2}
    for spec in ("zero", "foo:1", "zero:x"):
        with pytest.raises(ValueError):
            parse_corrupt_spec(spec)


def _tool_main():
    from tools.make_synthetic_dataset import main  # tools/ is importable from the repository root

    return main


def test_cli_argument_errors_are_clear(tmp_path, capsys):
    main = _tool_main()
    for argv, message in ((["--style", "k400", "--out", str(tmp_path / "x"), "--width", "96"], "decord"),
                          (["--style", "ssv2", "--out", str(tmp_path / "x"), "--corrupt", "foo:1"], "corrupt spec"),
                          (["--style", "k400", "--out", str(tmp_path / "x"), "--classes", "0"], "must be >= 1"),
                          (["--style", "avi", "--out", str(tmp_path / "x")], "invalid choice")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_writes_a_dataset_and_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "something").write_text("x")
    common = ["--classes", "2", "--train-per-class", "1", "--val-per-class", "1", "--frames", "4",
              "--height", str(HEIGHT), "--width", str(WIDTH)]
    script = "tools/make_synthetic_dataset.py"
    # Both runs at once: each process spends most of its time importing torch.
    ok = subprocess.Popen([sys.executable, script, "--style", "ssv2", "--out", str(tmp_path / "new"), *common,
                           "--corrupt", "zero:1"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    refused = subprocess.Popen([sys.executable, script, "--style", "k400", "--out", str(tmp_path / "taken"), *common],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = ok.communicate(timeout=120)
    assert ok.returncode == 0, err
    assert len(out.strip().splitlines()) == 1 and "4 videos" in out and "1 corrupt" in out
    assert (tmp_path / "new" / "classes.json").is_file() and len(list((tmp_path / "new" / "videos").iterdir())) == 4
    out, err = refused.communicate(timeout=120)
    assert refused.returncode == 2
    assert "not empty" in err and "--overwrite" in err
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["something"]


def test_grain_raises_the_bitrate_and_stays_deterministic(tmp_path):
    import os

    from video_st.data.decode import read_frames
    from video_st.synthetic.datasets import make_k400_style

    kwargs = dict(num_classes=2, train_per_class=1, val_per_class=1, num_frames=12, height=66, width=88, seed=3)
    flat = make_k400_style(tmp_path / "flat", **kwargs)
    grainy = make_k400_style(tmp_path / "grainy", grain=5.0, **kwargs)
    again = make_k400_style(tmp_path / "again", grain=5.0, **kwargs)

    def sizes(summary):
        return sum(os.path.getsize(os.path.join(summary.root, "train", n)) for n in os.listdir(os.path.join(summary.root, "train")))

    assert sizes(grainy) > 2 * sizes(flat)
    name = sorted(os.listdir(os.path.join(grainy.root, "train")))[0]
    assert (read_frames(os.path.join(grainy.root, "train", name), [0, 11]) ==
            read_frames(os.path.join(again.root, "train", name), [0, 11])).all()
