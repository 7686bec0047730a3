"""Preprocessing jobs on real tiny videos (H.264 mp4, VP9 webm, one with audio, one portrait) and planted bad files.

Frame widths avoid 16/24/32/48/96/144: decord2 3.4.0 cannot return frames of those widths (see the report of
the preprocessing issue), and the verification of outputs reads them through decord.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from video_st.data.frames import read_frame_folder
from video_st.preprocess import media
from video_st.preprocess import jobs, staging
from video_st.preprocess import run as pp
from video_st.data.annotations import AnnotationError
from video_st.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# rel path -> (frames, height, width, codec, rate, with audio)
GOOD = {
    "a/v0.mp4": (12, 48, 64, "libx264", 10, False),
    "a/v1.mp4": (20, 48, 64, "libx264", 10, False),
    "b/ntsc.mp4": (15, 48, 64, "libx264", Fraction(30000, 1001), False),
    "b/portrait.mp4": (16, 72, 56, "libx264", 10, False),
    "c/vp9.webm": (14, 48, 64, "libvpx-vp9", 10, False),
    "with_audio.mp4": (18, 48, 64, "libx264", 10, True),
}
BAD = ["bad/garbage.mp4", "bad/truncated.mp4", "bad/zero.mp4"]
SHORT_SIDE = 40


def _write_video(path: Path, frames: int, height: int, width: int, codec: str, rate, audio: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        sound = container.add_stream("aac", rate=16000, layout="mono") if audio else None
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(frames):
            img = np.stack([(xx * 4 + i * 12) % 256, (yy * 4) % 256, np.full_like(xx, (i * 40) % 256)], -1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")))
        container.mux(stream.encode(None))
        if sound is not None:
            for i in range(8):
                chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 16000, i * 1024
                container.mux(sound.encode(chunk))
            container.mux(sound.encode(None))


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for rel, spec in GOOD.items():
        _write_video(root / rel, *spec)
    (root / "bad").mkdir()
    (root / "bad/zero.mp4").write_bytes(b"")
    data = (root / "a/v1.mp4").read_bytes()
    (root / "bad/truncated.mp4").write_bytes(data[: int(len(data) * 0.4)])
    (root / "bad/garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    (root / "notes.txt").write_text("not a video")
    return root


def _spec(subcommand: str, videos: Path, out: Path, **kw) -> jobs.JobSpec:
    if subcommand == "resize":  # frames keep the source's size unless a test asks
        kw.setdefault("short_side", SHORT_SIDE)
    # Byte-for-byte comparisons of re-encodes: x264's MB-tree reads uninitialised memory on frames this small
    # (width not a multiple of 16), which changes a few bits between runs; test_resize_outputs keeps defaults.
    kw.setdefault("x264_params", "mbtree=0")
    return jobs.JobSpec(subcommand=subcommand, input=str(videos), output=str(out), **kw)


def _manifest(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _by_rel(rows: list[dict], videos: Path) -> dict[str, dict]:
    return {os.path.relpath(row["input"], videos): row for row in rows}


def _tree(root: Path) -> dict[str, str]:
    """Hashes of every output file (manifests left out: they hold timings and statuses)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith("manifest.")}


def _expected_frames(rel: str, fps: float | None) -> int:
    frames, _, _, _, rate, _ = GOOD[rel]
    return frames if fps is None or fps >= rate else math.ceil(frames * fps / float(rate) - 1e-9)


# ---------------------------------------------------------------------------------------------- pure parts


def test_target_size_keeps_aspect_and_even_sides():
    assert media.target_size(640, 480, short_side=320) == (426, 320)
    assert media.target_size(480, 640, short_side=320) == (320, 426)
    assert media.target_size(1920, 1080, short_side=320) == (568, 320)
    assert media.target_size(64, 48, short_side=40) == (54, 40)
    assert media.target_size(321, 241, short_side=320) == (320, 240)  # smaller: kept, rounded down to even
    assert all(side % 2 == 0 for w, h in [(333, 999), (17, 9)] for side in media.target_size(w, h, short_side=100))


def test_frame_indices():
    assert media.frame_indices(5, source_fps=10, fps=None) == [0, 1, 2, 3, 4]
    assert media.frame_indices(5, source_fps=10, fps=30) == [0, 1, 2, 3, 4]  # never duplicated
    assert media.frame_indices(17, source_fps=10, fps=5) == [0, 2, 4, 6, 8, 10, 12, 14, 16]
    ntsc = media.frame_indices(300, source_fps=30000 / 1001, fps=30000 / 1001 / 3)
    assert len(ntsc) == 100 and ntsc[-1] == 297


# --------------------------------------------------------------------------------------------- subcommands


def test_scan_finds_exactly_the_bad_files(videos, tmp_path):
    summary = pp.run_shard(_spec("scan", videos, tmp_path))
    assert (summary.ok, summary.failed, summary.skipped) == (len(GOOD), len(BAD), 0)
    invalid = (tmp_path / "invalid.txt").read_text().splitlines()
    assert invalid == [str(videos / rel) for rel in BAD]
    rows = _by_rel(_manifest(tmp_path / "manifest.scan.jsonl"), videos)
    assert set(rows) == set(GOOD) | set(BAD)  # notes.txt is not a video
    for rel in BAD:
        assert rows[rel]["status"] == "failed" and rows[rel]["reason"]
    assert "empty" in rows["bad/zero.mp4"]["reason"]
    for rel, (frames, *_) in GOOD.items():
        assert rows[rel]["status"] == "ok" and rows[rel]["num_frames"] == frames and rows[rel]["reason"] is None


def test_resize_outputs(videos, tmp_path):
    summary = pp.run_shard(_spec("resize", videos, tmp_path, x264_params=""))  # the defaults
    assert (summary.ok, summary.failed, summary.skipped) == (len(GOOD), len(BAD), 0)
    rows = _by_rel(_manifest(tmp_path / "manifest.resize.jsonl"), videos)
    assert {rel for rel, row in rows.items() if row["status"] == "failed"} == set(BAD)
    for rel, (frames, height, width, _, rate, _) in GOOD.items():
        out = tmp_path / (os.path.splitext(rel)[0] + ".mp4")
        assert rows[rel]["output"] == str(out) and rows[rel]["num_frames"] == frames
        with av.open(str(out)) as container:
            stream = container.streams.video[0]
            assert not container.streams.audio and len(container.streams) == 1
            assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
            assert Fraction(stream.average_rate) == Fraction(rate)
            w, h = stream.codec_context.width, stream.codec_context.height
            assert min(w, h) == SHORT_SIDE and w % 2 == 0 and h % 2 == 0
            assert abs(w / h - width / height) < 0.05
            assert sum(1 for _ in container.decode(stream)) == frames
    assert not list(tmp_path.rglob("*.tmp*"))
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").iterdir())


def test_frames_at_source_and_lower_fps(videos, tmp_path):
    for fps in (None, 5.0):
        out = tmp_path / str(fps)
        summary = pp.run_shard(_spec("frames", videos, out, fps=fps))
        assert (summary.ok, summary.failed) == (len(GOOD), len(BAD))
        lines = (out / "frames.txt").read_text().splitlines()
        assert [line.split()[0] for line in lines] == sorted(os.path.splitext(rel)[0] for rel in GOOD)
        for line in lines:
            frame_dir, count, label = line.split()
            rel = next(r for r in GOOD if os.path.splitext(r)[0] == frame_dir)
            frames, height, width, _, rate, _ = GOOD[rel]
            assert int(count) == _expected_frames(rel, fps) and label == "-1"
            if fps is not None:
                assert abs(int(count) - frames / float(rate) * fps) <= 1
            names = sorted(os.listdir(out / frame_dir))
            assert names == [f"img_{i:05d}.jpg" for i in range(1, int(count) + 1)]
            clip = read_frame_folder(out / frame_dir, [0, int(count) - 1])
            assert clip.shape == (2, height, width, 3)


# ------------------------------------------------------------------------------------------ resume, kills


@pytest.mark.parametrize("subcommand", ["resize", "frames"])
def test_rerun_skips_verified_outputs_and_redoes_corrupt_ones(videos, tmp_path, subcommand):
    spec = _spec(subcommand, videos, tmp_path)
    first = pp.run_shard(spec, workers=2)  # the pool and in-process paths give the same files
    before = _tree(tmp_path)
    second = pp.run_shard(spec)
    assert (second.ok, second.failed, second.skipped) == (0, len(BAD), len(GOOD)) and first.ok == len(GOOD)
    assert _tree(tmp_path) == before

    if subcommand == "resize":
        victim = tmp_path / "a/v1.mp4"
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
        corrupt = ["a/v1.mp4"]
    else:
        (tmp_path / "a/v1/img_00003.jpg").unlink()  # a frame lost
        last = tmp_path / "b/portrait/img_00016.jpg"
        last.write_bytes(last.read_bytes()[:100])  # a frame cut short
        corrupt = ["a/v1.mp4", "b/portrait.mp4"]
    third = pp.run_shard(spec)
    rows = _by_rel(_manifest(third.manifest), videos)
    assert sorted(rel for rel, row in rows.items() if row["status"] == "ok") == corrupt
    assert third.skipped == len(GOOD) - len(corrupt)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("subcommand,target", [("frames", "save_jpeg"), ("resize", "check_count")])
def test_killed_job_resumes_to_the_same_result(videos, tmp_path, monkeypatch, subcommand, target):
    reference = tmp_path / "reference"
    pp.run_shard(_spec(subcommand, videos, reference))

    out = tmp_path / "killed"
    spec = _spec(subcommand, videos, out)
    original = getattr(media, target)
    # frames: killed in the middle of the third good video's JPEGs; resize: after the third good video's file
    # is fully written but before its rename. The first two good videos are finished, in the manifest.
    limit = GOOD["a/v0.mp4"][0] + GOOD["a/v1.mp4"][0] + 3 if subcommand == "frames" else 2
    calls = {"n": 0}

    def killer(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > limit:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(media, target, killer)
    with pytest.raises(KeyboardInterrupt):
        pp.run_shard(spec)
    monkeypatch.setattr(media, target, original)

    rows = _manifest(out / f"manifest.{subcommand}.jsonl")
    assert [row["status"] for row in rows] == ["ok", "ok"]  # a/v0, a/v1 (bad/* sort after a/ and b/)
    # the kill left its temporary (named for its attempt, marked ".tmp.": never listed as a video) ...
    half = [p.name for p in (out / "b").iterdir() if p.name.startswith("ntsc.tmp.")]
    assert len(half) == 1 and half[0].endswith("" if subcommand == "frames" else ".mp4"), half
    assert not (out / ("b/ntsc" if subcommand == "frames" else "b/ntsc.mp4")).exists()  # ... never a final name
    assert not (out / "frames.txt").exists()

    resumed = pp.run_shard(spec)
    assert (resumed.ok, resumed.skipped, resumed.failed) == (len(GOOD) - 2, 2, len(BAD))
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert _tree(out) == _tree(reference)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="the patch reaches forked workers")
def test_a_crashing_worker_fails_only_its_video(videos, tmp_path, monkeypatch):
    scan = pp._STEPS["scan"]

    def crash_on_portrait(item, output, spec):
        if item.rel == "b/portrait.mp4":
            os._exit(3)  # a decoder segfault, as far as the pool can tell
        return scan(item, output, spec)

    monkeypatch.setitem(pp._STEPS, "scan", crash_on_portrait)  # workers are forked: they see the patch
    summary = pp.run_shard(_spec("scan", videos, tmp_path), workers=2)
    rows = _by_rel(_manifest(summary.manifest), videos)
    assert set(rows) == set(GOOD) | set(BAD)
    assert "worker process died" in rows["b/portrait.mp4"]["reason"]
    assert {rel for rel, row in rows.items() if row["status"] == "failed"} == set(BAD) | {"b/portrait.mp4"}


def test_stale_temporaries_are_never_outputs_and_go_on_the_next_run(videos, tmp_path):
    from video_st.data.folders import read_video_folder

    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    host = staging.host()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    stale = {
        "v0.tmp.mp4": None,  # the fixed name of earlier versions
        f"v0.tmp.{host}-{dead.pid}-0123abcd.mp4": None,  # its process was killed
        f"v0.tmp.othernode-{os.getppid()}-0123abcd.mp4": None,  # another host's (a requeued shard's) attempt
        f"v0.tmp.{host}-{os.getppid()}-4567abcd.mp4": 0,  # written before its pid's process started: reused pid
        f"v0.tmp.{host}-{os.getpid()}-89abcdef.mp4": None,  # this process's, from an interrupted run
    }
    live = f"v1.tmp.{host}-{os.getppid()}-0123abcd.mp4"  # a running process's attempt: not touched
    for name, mtime in [*stale.items(), (live, None)]:
        (out / "a" / name).write_bytes(b"half an encode")
        if mtime is not None:
            os.utime(out / "a" / name, (mtime, mtime))
    bystanders = ["v0.tmp.notes.mp4", "v00.mp4"]  # not temporaries of a/v0.mp4: never removed
    for name in bystanders:
        (out / "a" / name).write_bytes(b"someone else's")
    assert [r.rel for r in read_video_folder(out)] == ["a/v00.mp4"]  # ".tmp." keeps every temporary out

    name = staging.tmp_name(str(out / "a/v0.mp4"))  # what an attempt writes: the same marker, unique per attempt
    assert ".tmp." in os.path.basename(name) and name.endswith(".mp4") and name != staging.tmp_name(str(out / "a/v0.mp4"))
    assert os.path.dirname(name) == str(out / "a")  # the same folder: the final rename is atomic
    found = {os.path.basename(path): pid for path, _, pid in staging.temporaries(str(out / "a/v0.mp4"))}
    assert set(found) == set(stale) and found["v0.tmp.mp4"] is None

    summary = pp.run_shard(_spec("resize", videos, out))
    assert (summary.ok, summary.failed) == (len(GOOD), len(BAD))
    assert sorted(p.name for p in (out / "a").iterdir()) == sorted(["v0.mp4", "v1.mp4", live, *bystanders])
    assert [r.rel for r in read_video_folder(out)] == sorted(
        os.path.splitext(rel)[0] + ".mp4" for rel in [*GOOD, "a/v00.mp4"])


# video_st.preprocess.pool without the package's __init__ (torch): stub packages whose __path__ is the source
# folder, so a subprocess starts in milliseconds and the pool's own imports (video_st.procs) resolve as installed.
_STANDALONE = """
import importlib, os, sys, types
root = sys.argv[1]
for name, folder in (("video_st", root), ("video_st.preprocess", os.path.join(root, "preprocess"))):
    package = types.ModuleType(name)
    package.__path__ = [folder]
    sys.modules[name] = package
pool = importlib.import_module("video_st.preprocess.pool")
"""

# A process that forks a worker, runs the pool's initialiser in it, reports the worker's pid and exits at once.
_ORPHAN = _STANDALONE + """
import time
if sys.argv[2] == "watcher":
    pool.set_parent_death_signal = lambda sig: False  # as where there is no prctl
    pool._WATCH_INTERVAL_S = 0.05
parent = os.getpid()
read, write = os.pipe()
child = os.fork()
if child == 0:
    pool._die_with_parent(parent)
    os.write(write, b"ready")
    time.sleep(120)  # an encode that would go on for minutes
    os._exit(0)
os.read(read, 5)
print(child, flush=True)
os._exit(0)  # the parent dies, no cleanup
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("mechanism", ["prctl", "watcher"])
def test_a_worker_dies_with_its_parent(mechanism):
    result = subprocess.run([sys.executable, "-c", _ORPHAN, str(ROOT / "video_st"), mechanism],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    orphan = int(result.stdout.split()[0])
    start = _stat(orphan)[2] if _stat(orphan) else None
    try:
        assert _wait_until(lambda: not _alive(orphan, start), timeout=10), f"{mechanism}: worker {orphan} lives on"
    finally:
        _kill(orphan, start)

    # A parent already gone when the initialiser runs: the worker ends at once instead of waiting for a signal.
    gone = subprocess.run([sys.executable, "-c", _STANDALONE + "pool._die_with_parent(1 << 30); print('still running')",
                           str(ROOT / "video_st")], capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1 and gone.stdout == "" and gone.stderr == "", gone.stdout + gone.stderr


# Enough work that the job is still running well after its first output: 40 copies of a 96-frame 320 x 240 video.
KILL_VIDEOS, KILL_FRAMES, KILL_SHORT_SIDE = 40, 96, 120


@pytest.fixture(scope="module")
def many_videos(tmp_path_factory) -> Path:
    import shutil

    root = tmp_path_factory.mktemp("many")
    first = root / "part0/v000.mp4"
    _write_video(first, KILL_FRAMES, 240, 320, "libx264", 24, False)
    for i in range(1, KILL_VIDEOS):
        (root / f"part{i % 4}").mkdir(exist_ok=True)
        shutil.copyfile(first, root / f"part{i % 4}/v{i:03d}.mp4")
    return root


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in clock ticks) of a process, None when there is none."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[1]), int(fields[19])


def _descendants(pid: int) -> dict[int, int]:
    """pid -> start time of every process below ``pid`` (from one pass over /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            parents[int(entry)] = (stat[1], stat[2])
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, start) in parents.items():
            if ppid == parent and child not in found:
                found[child] = start
                frontier.append(child)
    return found


def _alive(pid: int, start: int | None) -> bool:
    """The same process (same start time: a pid can be reused) is still there and not a zombie."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X") and (start is None or stat[2] == start)


def _kill(pid: int, start: int | None) -> None:
    if _alive(pid, start):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def _wait_until(condition, *, timeout: float, interval: float = 0.02) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers in /proc")
def test_cli_killed_with_sigkill_leaves_no_workers_and_a_rerun_finishes(many_videos, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "tools/preprocess.py", "resize", "--input", str(many_videos), "--output", str(out),
               "--short-side", str(KILL_SHORT_SIDE), "--workers", "2"]
    outputs = [out / os.path.relpath(p, many_videos) for p in sorted(many_videos.rglob("*.mp4"))]
    assert len(outputs) == KILL_VIDEOS

    def finished() -> list[Path]:  # final names only: an output once there stays (temporaries come and go)
        return [p for p in outputs if p.exists()]

    workers: dict[int, int] = {}
    with open(tmp_path / "killed.log", "w") as log:
        job = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert _wait_until(lambda: finished() or job.poll() is not None, timeout=120), "no output after 120 s"
        workers = _descendants(job.pid)  # the pool is up: it wrote an output
        assert job.poll() is None, "the job finished before the kill: give it more work"
        done_before = len(finished())
        assert len(workers) >= 2 and done_before < KILL_VIDEOS
        os.kill(job.pid, 9)
        assert job.wait(timeout=30) == -9
        left = lambda: [pid for pid, start in workers.items() if _alive(pid, start)]  # noqa: E731
        assert _wait_until(lambda: not left(), timeout=10), f"workers {left()} outlived their parent"
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
        for pid, start in workers.items():
            _kill(pid, start)

    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "failed 0" in rerun.stdout, rerun.stdout
    rows = _manifest(out / "manifest.resize.jsonl")
    assert sorted(row["output"] for row in rows) == sorted(map(str, outputs))
    assert {row["status"] for row in rows} <= {"ok", "skipped"}  # skipped: found and verified
    assert sum(row["status"] == "skipped" for row in rows) >= done_before
    assert all(row["num_frames"] == KILL_FRAMES for row in rows)
    size = media.target_size(320, 240, short_side=KILL_SHORT_SIDE)
    for path in outputs:
        assert media.verify_resized(str(path), expected_frames=KILL_FRAMES, size=size) == KILL_FRAMES
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # the killed attempts' temporaries are gone


# ---------------------------------------------------------------------------------------------- sharding


def test_shards_cover_every_video_once_and_merge_in_input_order(videos, tmp_path):
    whole = pp.run_shard(_spec("frames", videos, tmp_path / "whole"))
    spec = _spec("frames", videos, tmp_path / "sharded")
    summaries = [pp.run_shard(spec, shard=i, num_shards=3) for i in (2, 0, 1)]
    inputs = [row["input"] for i in range(3)
              for row in _manifest(tmp_path / f"sharded/manifest.frames.shard{i}of3.jsonl")]
    assert sorted(inputs) == sorted(str(videos / rel) for rel in [*GOOD, *BAD])
    assert sum(s.total for s in summaries) == len(inputs) == len(set(inputs))
    merged = (tmp_path / "sharded/frames.txt").read_text()  # written by the last shard to finish
    assert summaries[-1].video_list == str(tmp_path / "sharded/frames.txt")
    assert merged == Path(whole.video_list).read_text()
    assert pp.merge(spec, num_shards=3) == str(tmp_path / "sharded/frames.txt")
    assert (tmp_path / "sharded/frames.txt").read_text() == merged

    (tmp_path / "sharded/frames.shard1of3.txt").unlink()
    with pytest.raises(pp.MergeError, match=r"\[1\]"):
        pp.merge(spec, num_shards=3)


# -------------------------------------------------------------------------------------------- annotations


def test_k400_csv_layouts_labels_and_missing(videos, tmp_path):
    root = tmp_path / "k400"
    layout = {  # the three layouts the resolver tries
        "train/abseiling/aaa_000000_000010.mp4": "a/v0.mp4",
        "train/bbb_000005_000015.mp4": "a/v1.mp4",
        "ccc_000001_000011.mp4": "c/vp9.webm",
    }
    for rel, source in layout.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((videos / source).read_bytes())
    csv = tmp_path / "train.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split,is_cc\n"
                   "abseiling,aaa,0,10,train,0\n"
                   '"air drumming",bbb,5,15,train,0\n'
                   "zumba,ccc,1,11,train,0\n"
                   "abseiling,gone,3,13,train,0\n")
    items = jobs.read_inputs(csv, root=root)
    assert [item.rel for item in items] == [*layout, "gone_000003_000013.mp4"]
    assert [item.label for item in items] == [0, 1, 2, 0]  # sorted class names

    spec = jobs.JobSpec(subcommand="frames", input=str(csv), root=str(root), output=str(tmp_path / "out"))
    summary = pp.run_shard(spec)
    rows = _manifest(summary.manifest)
    assert [row["status"] for row in rows] == ["ok", "ok", "ok", "failed"]
    assert rows[-1]["reason"] == "missing" and rows[-1]["input"] == str(root / "gone_000003_000013.mp4")
    assert Path(summary.video_list).read_text().splitlines() == [
        "train/abseiling/aaa_000000_000010 12 0", "train/bbb_000005_000015 20 1", "ccc_000001_000011 14 2"]


def test_path_label_list(videos, tmp_path):
    root = tmp_path / "root"
    for rel, source in [("a/v0.mp4", "a/v0.mp4"), ("c/vp9.webm", "c/vp9.webm"), ("with space/v 0.mp4", "a/v0.mp4")]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((videos / source).read_bytes())
    listing = tmp_path / "train.txt"
    listing.write_text("a/v0.mp4 3\n\nc/vp9.webm 7\nmissing/x.mp4 1\nwith space/v 0.mp4 2\n")
    summary = pp.run_shard(jobs.JobSpec(subcommand="frames", input=str(listing), root=str(root),
                                      output=str(tmp_path / "out"), fps=5))
    assert (summary.ok, summary.failed) == (3, 1)
    # a path may hold spaces (as datasets.read_path_label_list reads it); read_frame_list splits from the right
    assert Path(summary.video_list).read_text().splitlines() == ["a/v0 6 3", "c/vp9 7 7", "with space/v 0 6 2"]
    assert _manifest(summary.manifest)[2]["reason"] == "missing"


def test_k400_class_list_file(videos, tmp_path):
    root = tmp_path / "k400"
    root.mkdir()
    (root / "aaa_000000_000010.mp4").write_bytes((videos / "a/v0.mp4").read_bytes())
    csv = tmp_path / "val.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\nabseiling,aaa,0,10,val\nzumba,bbb,1,11,val\n")
    order = ["zumba", "air drumming", "abseiling"]  # the training set's class list, not this file's sorted names
    (tmp_path / "classes.txt").write_text("\n".join(order) + "\n")
    (tmp_path / "classes.json").write_text(json.dumps(order))
    for classes in ("classes.txt", "classes.json"):
        items = jobs.read_inputs(csv, root=root, classes=tmp_path / classes)
        assert [(item.rel, item.label) for item in items] == [("aaa_000000_000010.mp4", 2), ("bbb_000001_000011.mp4", 0)]
    (tmp_path / "short.txt").write_text("abseiling\n")
    with pytest.raises(AnnotationError, match=r"val\.csv:3: .*zumba"):
        jobs.read_inputs(csv, root=root, classes=tmp_path / "short.txt")


def test_ssv2_split_json_through_the_cli(videos, tmp_path, capsys):
    root = tmp_path / "ssv2"
    root.mkdir()
    for video_id in ("11", "12"):
        (root / f"{video_id}.webm").write_bytes((videos / "c/vp9.webm").read_bytes())
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"Holding something": "0", "Pushing something from left to right": "1"}))
    split = tmp_path / "train.json"
    split.write_text(json.dumps([
        {"id": "12", "label": "pushing a pen from left to right", "template": "Pushing [something] from left to right"},
        {"id": "11", "label": "holding a pen", "template": "Holding [something]"},
        {"id": "13", "label": "holding a cup", "template": "Holding [something]"},  # no such file
    ]))
    out = tmp_path / "out"
    assert _main(["frames", "--input", split, "--ssv2-labels", labels, "--root", root, "--output", out]) == 0
    assert "ok 2 / failed 1 / skipped 0" in capsys.readouterr().out
    assert (out / "frames.txt").read_text().splitlines() == ["12 14 1", "11 14 0"]  # file order, labels by template
    assert _manifest(out / "manifest.frames.jsonl")[2] == {**_manifest(out / "manifest.frames.jsonl")[2],
                                                           "input": str(root / "13.webm"), "reason": "missing"}

    # A converted copy (.mp4): the extension comes from the files; the test split has no templates (label -1).
    converted = tmp_path / "ssv2_mp4"
    converted.mkdir()
    (converted / "21.mp4").write_bytes((videos / "a/v0.mp4").read_bytes())
    test_split = tmp_path / "test.json"
    test_split.write_text(json.dumps([{"id": "21"}]))
    items = jobs.read_inputs(test_split, root=converted, ssv2_labels=labels)
    assert [(item.source, item.rel, item.label) for item in items] == [(str(converted / "21.mp4"), "21.mp4", -1)]

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "1", "template": "Dropping [something]"}]))
    with pytest.raises(AnnotationError, match=r"bad\.json:entry 0 .*Dropping something"):
        jobs.read_inputs(bad, root=root, ssv2_labels=labels)
    with pytest.raises(ConfigError, match="--ssv2-labels"):
        jobs.read_inputs(split, root=root)


@pytest.mark.parametrize("name,text,line,words", [
    ("k.csv", "label,youtube_id,time_start,time_end,split\nabseiling,aaa,0,10,train\nabseiling,bbb,zero,10,train\n",
     3, "time_start"),
    ("k.csv", "label,youtube_id,time_start,time_end,split\nabseiling,aaa,0,10\n", 2, "fields"),
    ("k.csv", "youtube_id,label\naaa,abseiling\n", 1, "header"),
    ("l.txt", "a/v0.mp4 1\na/v1.mp4 one\n", 2, "label"),
    ("l.txt", "a/v0.mp4 1\n\nonly_a_path.mp4\n", 3, "path label"),
    ("l.txt", "../escape.mp4 1\n", 1, "outside"),
])
def test_malformed_annotation_lines_name_file_and_line(tmp_path, name, text, line, words):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(AnnotationError, match=rf"{name}:{line}: .*{words}") as info:
        jobs.read_inputs(path, root=tmp_path)
    assert info.value.line == line and info.value.path == str(path)
    assert AnnotationError is AnnotationError  # one annotation error type, whichever module a caller uses


def test_bad_configs_are_refused(videos, tmp_path):
    with pytest.raises(ConfigError, match="crf"):
        jobs.JobSpec(subcommand="resize", input="x", output="y", crf=99)
    with pytest.raises(ConfigError, match="inside the input"):
        pp.run_shard(_spec("resize", videos, videos / "out"))
    with pytest.raises(ConfigError, match="shard 3"):
        pp.run_shard(_spec("scan", videos, tmp_path), shard=3, num_shards=3)
    with pytest.raises(ConfigError, match="not found"):
        jobs.read_inputs(tmp_path / "nope.csv")
    with pytest.raises(ConfigError, match="--classes is for a K400 CSV"):
        jobs.read_inputs(videos, classes=tmp_path / "classes.txt")  # not silently ignored
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end,split\n")
    with pytest.raises(ConfigError, match="class list not found"):
        jobs.read_inputs(tmp_path / "k.csv", classes=tmp_path / "nope.txt")


# ---------------------------------------------------------------------------------------------- the CLI


def _cli(*args, timeout=180):
    return subprocess.run([sys.executable, "tools/preprocess.py", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _main(argv):
    from tools.preprocess import main  # the tool in this process (tools/ is importable from the repository root)

    return main([str(a) for a in argv])


def test_cli_prints_counts_and_exits_0(videos, tmp_path):
    result = _cli("resize", "--input", videos, "--output", tmp_path, "--short-side", SHORT_SIDE, "--workers", 2)
    assert result.returncode == 0, result.stderr
    assert f"ok {len(GOOD)} / failed {len(BAD)} / skipped 0" in result.stdout
    assert len(result.stdout.strip().splitlines()) == 1  # the summary line; logs go to stderr


def test_cli_usage_and_config_errors_exit_2(videos, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("a/v0.mp4 1\na/v1.mp4\n")
    for argv, words in [
        (["frames", "--input", videos, "--output", tmp_path, "--num-shards", 2], "--shard is required"),
        (["frames", "--input", bad, "--output", tmp_path], "bad.txt:2"),
        (["scan", "--input", tmp_path / "nothing", "--output", tmp_path], "input not found"),
        (["merge", "frames", "--input", videos, "--output", tmp_path, "--num-shards", 2], "shard lists missing"),
        (["merge", "scan", "--input", videos, "--output", tmp_path], "give --num-shards N"),
    ]:
        with pytest.raises(SystemExit) as info:
            _main(argv)
        assert info.value.code == 2 and words in capsys.readouterr().err


def test_cli_submitit_local_runs_every_shard(videos, tmp_path):
    result = _cli("frames", "--input", videos, "--output", tmp_path, "--num-shards", 2, "--submitit-local",
                  "--wait-timeout", 150)
    assert result.returncode == 0, result.stderr
    assert f"ok {len(GOOD)} / failed {len(BAD)} / skipped 0 (shards 0, 1)" in result.stdout
    inputs = [row["input"] for i in range(2) for row in _manifest(tmp_path / f"manifest.frames.shard{i}of2.jsonl")]
    assert sorted(inputs) == sorted(str(videos / rel) for rel in [*GOOD, *BAD])
    assert len((tmp_path / "frames.txt").read_text().splitlines()) == len(GOOD)


# --------------------------------------------------------------------------------------------- sbatch


def test_slurm_script(tmp_path):
    script = ROOT / "slurm/preprocess.sh"
    assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0
    text = script.read_text()
    assert "#SBATCH --array=0-15" in text and "%A_%a" in text
    env = {**os.environ, "SUBCOMMAND": "frames", "INPUT": "in dir", "OUTPUT": "/o", "EXTRA": "--fps 5 --workers 3",
           "SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_CPUS_PER_TASK": "8",
           "SLURM_SUBMIT_DIR": str(ROOT), "PYTHON": "echo"}
    result = subprocess.run(["bash", script], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == ("tools/preprocess.py frames --input in dir --output /o --workers 8 "
                                              "--fps 5 --workers 3 --shard 2 --num-shards 4")
    env.update(SUBCOMMAND="resize", SLURM_ARRAY_TASK_ID="5")
    result = subprocess.run(["bash", script], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "NUM_SHARDS" in result.stderr
