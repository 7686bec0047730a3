"""Decoding real encoded files, bad files, and the frame-index arithmetic."""

import random

import numpy as np
import pytest

from video_st.data.decode import VideoReadError, open_video, probe, read_frames
from video_st.data.frames import read_frame_folder
from video_st.data.sampling import (
    clip_span,
    dense_indices,
    random_clip_start,
    segment_indices,
    temporal_view_start,
    train_indices,
    view_indices,
)


@pytest.mark.parametrize("kind", ["h264", "vp9"])
def test_decord_and_pyav_return_the_same_frames(video_files, kind):
    indices = [7, 0, 19, 7, 3]  # any order, repeats allowed
    a = read_frames(video_files[kind], indices, backend="decord")
    b = read_frames(video_files[kind], indices, backend="pyav")
    assert a.shape == (5, 48, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert np.array_equal(a[0], a[3])
    assert abs(int(a[2, ..., 1].mean()) - 190) < 12  # frame 19 was written with green = 190


def test_probe_and_open_once(video_files):
    info = probe(video_files["vp9"])
    assert (info.num_frames, info.fps, info.height, info.width) == (20, 10.0, 48, 64)
    assert probe(video_files["h264"], backend="pyav").num_frames == 20
    video = open_video(video_files["h264"])
    assert video.num_frames == 20 and video.read([1, 2]).shape[0] == 2


@pytest.mark.parametrize("backend", ["decord", "pyav"])
@pytest.mark.parametrize(
    "kind, cause",
    [("missing", "no such file"), ("empty", "empty file"), ("garbage", "cannot open"), ("no_video", "no video stream"),
     ("truncated", "cannot open .*Invalid data")],  # its index (moov) is at the end, cut off
)
def test_every_bad_file_gives_the_project_error(video_files, backend, kind, cause):
    with pytest.raises(VideoReadError, match=cause) as info:
        video = open_video(video_files[kind], backend=backend)
        video.read(list(range(20)))  # a truncated file may open and fail on later frames
    assert info.value.path == str(video_files[kind])


def test_out_of_range_indices_are_named(video_files):
    with pytest.raises(VideoReadError, match=r"\[25\] outside the video's 20 frames"):
        read_frames(video_files["h264"], [0, 25])


def test_frame_folder_reader(tmp_path, video_files):
    from PIL import Image

    frames = read_frames(video_files["h264"], range(4))
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"img_{i + 1:05d}.jpg", quality=95)
    out = read_frame_folder(tmp_path, [3, 0])
    assert out.shape == (2, 48, 64, 3)
    error = [np.abs(out[1].astype(int) - f).mean() for f in frames]  # JPEG is lossy: the right frame is closest
    assert np.argmin(error) == 0 and error[0] < 0.5 * min(error[1:])
    with pytest.raises(VideoReadError, match="img_00010.jpg"):
        read_frame_folder(tmp_path, [9])


def test_dense_clips():
    assert clip_span(8, 8) == 57
    assert dense_indices(100, num_frames=4, stride=8, start=10) == [10, 18, 26, 34]
    assert dense_indices(5, num_frames=4, stride=2, start=0) == [0, 2, 4, 4]  # short video repeats its last frame
    assert dense_indices(1, num_frames=3, stride=8, start=0) == [0, 0, 0]
    rng = random.Random(0)
    starts = {random_clip_start(100, num_frames=8, stride=8, rng=rng) for _ in range(200)}
    assert min(starts) >= 0 and max(starts) <= 100 - 57 and len(starts) > 20
    assert random_clip_start(10, num_frames=8, stride=8, rng=rng) == 0


def test_temporal_test_views_evenly_spaced():
    assert [temporal_view_start(157, num_frames=8, stride=8, view=v, num_views=3) for v in range(3)] == [0, 50, 100]
    assert temporal_view_start(157, num_frames=8, stride=8, view=0, num_views=1) == 50
    assert temporal_view_start(20, num_frames=8, stride=8, view=2, num_views=3) == 0  # shorter than a clip
    views = view_indices(20, sampling="dense", num_frames=4, stride=8, num_temporal=2)
    assert views == [[0, 8, 16, 19], [0, 8, 16, 19]]


def test_segment_sampling():
    assert segment_indices(80, num_segments=8) == [5, 15, 25, 35, 45, 55, 65, 75]  # segment centres
    assert segment_indices(3, num_segments=8) == [0, 0, 0, 1, 1, 2, 2, 2]  # fewer frames than segments
    rng = random.Random(0)
    for _ in range(50):
        idx = segment_indices(80, num_segments=8, rng=rng)
        assert all(10 * s <= i < 10 * (s + 1) for s, i in enumerate(idx))
    three = view_indices(80, sampling="segment", num_frames=4, stride=1, num_temporal=2)
    assert three == [[5, 25, 45, 65], [15, 35, 55, 75]]
    assert len(train_indices(7, sampling="segment", num_frames=8, stride=1, rng=rng)) == 8
    with pytest.raises(ValueError, match="sampling"):
        train_indices(7, sampling="uniform", num_frames=8, stride=1, rng=rng)


@pytest.mark.parametrize("width", [48, 96])
def test_widths_decord_cannot_copy_still_read(tmp_path, width):
    from .conftest import write_video

    write_video(tmp_path / "v.mp4", width=width, height=48)
    frames = read_frames(tmp_path / "v.mp4", [0, 5])  # decord2 3.4.0 fails on these widths; PyAV takes over
    assert frames.shape == (2, 48, width, 3)
    assert np.array_equal(frames, read_frames(tmp_path / "v.mp4", [0, 5], backend="pyav"))
    assert probe(tmp_path / "v.mp4").width == width


def test_corrupt_stream_never_hangs_the_reader(tmp_path):
    """Bit-flipped H.264: decoding fails part-way. With PyAV's frame threading the freed codec deadlocked in about
    2 of 5 reads; ten reads in a fresh process must all end (bounded by the subprocess timeout)."""
    import subprocess
    import sys

    from .conftest import write_video

    write_video(tmp_path / "src.mp4", num_frames=60)
    data = bytearray((tmp_path / "src.mp4").read_bytes())
    rng = random.Random(0)
    for _ in range(200):
        data[rng.randrange(2000, len(data) - 2000)] ^= 0xFF
    (tmp_path / "flipped.mp4").write_bytes(bytes(data))
    script = (
        "import video_st\nfrom video_st.data import decode\n"
        "for backend in ('pyav', 'decord') * 5:\n"
        "    try:\n        decode.read_frames(%r, list(range(60)), backend=backend)\n"
        "    except decode.VideoReadError:\n        pass\nprint('ok')\n" % str(tmp_path / "flipped.mp4")
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
