"""The fast storage formats (tools/preprocess.py resize --gop / --all-intra, frames --short-side): what the job
writes (keyframe spacing, frame size, verification on rerun), and that the datasets read the same clips from them
as from the source: the same frame indices, pixels within the encoders' error."""

from __future__ import annotations

import json
import os

import av
import numpy as np
import pytest
import torch

from video_st.config import load_config
from video_st.data import decode
from video_st.data.frames import read_frame_folder, read_jpeg
from video_st.data.annotations import VideoRecord
from video_st.engine.build import eval_dataset, train_dataset
from video_st.preprocess import jobs, media
from video_st.preprocess import run as pp
from video_st.synthetic.datasets import make_k400_style

FRAMES = 48  # frames per generated video: six GOPs of 8


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast")
    summary = make_k400_style(root / "data", num_classes=2, train_per_class=1, val_per_class=1, num_frames=FRAMES,
                              height=66, width=88, seed=4)
    return summary


def _videos(summary) -> list[str]:
    train = os.path.join(summary.root, "train")
    return sorted(os.path.join(train, f) for f in os.listdir(train))


def _keyframes(path: str) -> list[int]:
    """Positions (presentation order) of the keyframes, from the decoded frames' own flags."""
    with av.open(path) as container:
        return [i for i, frame in enumerate(container.decode(video=0)) if frame.key_frame]


def _job(subcommand: str, summary, out, **kw):
    spec = jobs.JobSpec(subcommand=subcommand, input=os.path.join(summary.root, "train"), output=str(out),
                        x264_params="mbtree=0", **kw)
    return pp.run_shard(spec)


@pytest.mark.parametrize("gop,expected", [(8, list(range(0, FRAMES, 8))), (1, list(range(FRAMES)))])
def test_resize_writes_a_keyframe_every_gop_frames(sources, tmp_path, gop, expected):
    assert _keyframes(_videos(sources)[0]) == [0]  # the source: x264's default GOP, one keyframe in 48 frames
    summary = _job("resize", sources, tmp_path / "out", short_side=64, gop=gop)
    assert summary.ok == 2
    for file in sorted((tmp_path / "out").glob("*.mp4")):
        assert _keyframes(str(file)) == expected
        assert decode.probe(str(file)).num_frames == FRAMES


def test_gop_params_keep_the_users_options_last():
    assert media.gop_params(None, "mbtree=0") == "mbtree=0"
    assert media.gop_params(8) == "keyint=8:min-keyint=8:scenecut=0"
    assert media.gop_params(1, "mbtree=0") == "keyint=1:min-keyint=1:scenecut=0:mbtree=0"
    with pytest.raises(Exception, match="GOP must be at least 1"):
        jobs.JobSpec(subcommand="resize", input="x", output="y", gop=0)


def test_frames_at_a_short_side_and_a_rerun_at_another_redoes_them(sources, tmp_path):
    out = tmp_path / "frames"
    first = _job("frames", sources, out, short_side=40)
    assert first.ok == 2
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    frame = read_frame_folder(folders[0], [0, FRAMES - 1])
    assert frame.shape == (2, 40, 54, 3)  # 66 x 88 -> short side 40, aspect kept, even sides
    again = _job("frames", sources, out, short_side=40)
    assert again.skipped == 2 and again.ok == 0
    other = _job("frames", sources, out, short_side=50)  # a different size does not verify: redone
    assert other.ok == 2 and read_frame_folder(folders[0], [0]).shape == (1, 50, 66, 3)


def _records(summary, frames_out, video_out) -> dict[str, list[VideoRecord]]:
    """The same videos three ways: the source files, JPEG frame folders (every frame, source size), H.264 GOP 8
    at the source size."""
    source = [VideoRecord(v, 0, os.path.basename(v)) for v in _videos(summary)]
    frames, resized = [], []
    for record in source:
        stem = os.path.splitext(os.path.basename(record.path))[0]
        frames.append(VideoRecord(os.path.join(frames_out, stem), 0, record.video_id, num_frames=FRAMES,
                                  is_frame_folder=True))
        resized.append(VideoRecord(os.path.join(video_out, stem + ".mp4"), 0, record.video_id))
    return {"source": source, "frames": frames, "gop8": resized}


def test_the_fast_formats_give_the_source_clips(sources, tmp_path):
    assert _job("frames", sources, tmp_path / "frames").ok == 2
    assert _job("resize", sources, tmp_path / "gop8", short_side=66, gop=8).ok == 2  # 66: the source's size
    records = _records(sources, tmp_path / "frames", tmp_path / "gop8")
    cfg = load_config(None, ["data.num_frames=8", "data.stride=4", "data.size=48", "data.short_side=48",
                             "data.scale=[0.5,1.0]"])
    views = {}
    for name, recs in records.items():
        train = train_dataset(cfg, recs)
        test = eval_dataset(cfg, recs, temporal_views=2, spatial_views=3)
        clips = []
        for v in range(len(recs)):
            torch.manual_seed(100 + v)  # the crop's draw (torchvision's, from torch's generator) ...
            clips.append(train[(v, 100 + v)]["video"].float())  # ... and the frames' and flip's (the seed)
        views[name] = torch.stack(clips), torch.stack([test[v]["views"] for v in range(len(recs))])
    level = 1 / (255 * 0.225)  # one uint8 level in the normalised test views (ImageNet std is 0.225-0.229)
    for name in ("frames", "gop8"):
        (train_got, test_got), (train_want, test_want) = views[name], views["source"]
        assert train_got.shape == train_want.shape and test_got.shape == test_want.shape
        # The same seed picks the same frames and crop from either format: the clips differ by coding noise only
        # (a clip one frame off, or another crop, differs by tens of levels on these moving scenes).
        assert (train_got - train_want).abs().mean() < 2.5, name
        assert (test_got - test_want).abs().mean() < 2.5 * level, name
    # Pixels: the frame folder's frame k is the source's frame k, within JPEG error, and far from its neighbours.
    source = decode.read_frames(records["source"][0].path, list(range(FRAMES)))
    folder = read_frame_folder(records["frames"][0].path, list(range(FRAMES)))
    gop8 = decode.read_frames(records["gop8"][0].path, list(range(FRAMES)))
    for got in (folder, gop8):
        # (got frame, source frame) mean absolute error, one row at a time (the whole cube would be 0.3 GB)
        error = np.stack([np.abs(frame.astype(np.int16) - source).mean(axis=(1, 2, 3)) for frame in got])
        assert np.diag(error).max() < 2.5
        assert (error.argmin(axis=1) == np.arange(FRAMES)).all()  # each frame is nearest to its own index


def test_simplejpeg_and_pillow_decode_the_same_pixels(sources, tmp_path):
    pytest.importorskip("simplejpeg")
    from PIL import Image

    assert _job("frames", sources, tmp_path / "frames").ok == 2
    folder = sorted(p for p in (tmp_path / "frames").iterdir() if p.is_dir())[0]
    for name in sorted(os.listdir(folder))[:4]:
        with Image.open(folder / name) as img:
            want = np.asarray(img.convert("RGB"))
        np.testing.assert_array_equal(read_jpeg(str(folder / name)), want)


def test_k400_frames_carry_their_class_names_and_train_from_the_frame_list(sources, tmp_path):
    from video_st.data.annotations import read_k400_csv
    from video_st.engine.build import read_split

    csv = sources.annotation_files["train"]
    spec = jobs.JobSpec(subcommand="frames", input=csv, root=sources.root, output=str(tmp_path / "frames"),
                        short_side=40)
    assert pp.run_shard(spec).ok == 2
    assert json.loads((tmp_path / "frames" / "classes.json").read_text()) == list(sources.classes)
    # No data.root: the frame folders are relative to their list's folder (per-split outputs need no common root).
    cfg = load_config(None, ["data.dataset=frames", "data.root=''",
                             f"data.train={tmp_path / 'frames' / 'frames.txt'}",
                             f"data.labels={tmp_path / 'frames' / 'classes.json'}"])
    records, names = read_split(cfg, "train")
    source, source_names = read_k400_csv(csv, sources.root)
    assert names == source_names == list(sources.classes)
    by_stem = {os.path.splitext(os.path.basename(r.path))[0]: r.label for r in source}
    assert {os.path.basename(r.path): r.label for r in records} == by_stem
    assert all(r.is_frame_folder and r.num_frames == FRAMES and os.path.isdir(r.path) for r in records)
